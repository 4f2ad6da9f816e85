"""Recipe tasks for Hugging Face models."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from kd_core import lookup
from kd_core.data import read_examples, resolve_path
from kd_core.errors import ConfigError, UntrainedHeadError
from kd_core.features import TEACHER_LOGITS, Adaptor, FeatureNeeds, Features
from kd_core.inference import RunSettings, run_model
from kd_core.labelling import collate_teacher_logits
from kd_core.paths import gguf_location, looks_like_path, resolve_model_path
from kd_core.schema import DataFile, ModelSpec, StudentSpec
from kd_core.tasks import Evaluation, get_metric
from kd_models.adaptors import HFAdaptor, RNNAdaptor
from kd_models.multihead import MultiHeadConfig, MultiHeadForSequenceClassification
from kd_models.rnn import BiRNNPreTrainedModel
from kd_models.students import transformer_student


@lru_cache(maxsize=8)
def load_tokenizer(path: str) -> Any:
    """The tokenizer saved with a model, or held in its GGUF file (cached per path)."""
    folder, gguf_file = gguf_location(path)
    return AutoTokenizer.from_pretrained(folder, **_gguf(gguf_file))


def _gguf(gguf_file: str | None) -> dict[str, Any]:
    """``from_pretrained`` arguments that read a GGUF file (``gguf`` package needed)."""
    if gguf_file is None:
        return {}
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError(f"{gguf_file} is a GGUF file; reading it needs the gguf package: "
                          "pip install 'kd-models[gguf]'") from None
    return {"gguf_file": gguf_file}


class TokenizedDataset(torch.utils.data.Dataset):
    """Tokenized examples: a list of dicts of token ids and a label."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


class PadCollator:
    """Pads a list of tokenized examples to the longest one and stacks their labels (per-token
    labels padded with -100) and stored teacher logits (when the examples have them)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        extra = ("labels", TEACHER_LOGITS)
        batch = dict(self.tokenizer.pad([{k: v for k, v in e.items() if k not in extra} for e in examples],
                                        return_tensors="pt"))
        if "labels" in examples[0]:
            labels = [e["labels"] for e in examples]
            if isinstance(labels[0], list):
                width = batch["input_ids"].shape[1]
                left = self.tokenizer.padding_side == "left"
                labels = [[-100] * (width - len(row)) + row if left else row + [-100] * (width - len(row))
                          for row in labels]
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        if TEACHER_LOGITS in examples[0]:
            batch[TEACHER_LOGITS] = collate_teacher_logits([e[TEACHER_LOGITS] for e in examples],
                                                           batch.get("attention_mask"))
        return batch


def _label_settings(spec: ModelSpec, head: str) -> dict[str, Any]:
    """from_pretrained arguments that give a model the spec's classes.

    A checkpoint already trained with a ``head`` (``ForTokenClassification``, ...) must agree with
    the spec: its number of classes, and their names when the spec names them. A checkpoint
    without one (a bare encoder, or a head for another task) gets a new head of the spec's size.
    """
    if spec.labels is None and spec.num_labels is None:
        return {}
    settings: dict[str, Any] = {"num_labels": spec.num_labels or len(spec.labels)}
    if spec.labels is not None:
        settings.update(id2label=dict(enumerate(spec.labels)), label2id={n: i for i, n in enumerate(spec.labels)})
    config = load_config(spec.model, "teacher.model")
    if not any(a.endswith(head) for a in config.architectures or []):
        return {**settings, "ignore_mismatched_sizes": True}
    saved = [config.id2label[i] for i in sorted(config.id2label)]
    if config.num_labels != settings["num_labels"] or (spec.labels is not None and saved != list(spec.labels)):
        raise ConfigError(f"teacher {spec.model!r} was trained with the classes {saved}; the recipe asks for "
                          f"{spec.labels or settings['num_labels']}. Drop teacher.num_labels/labels to use its own")
    return settings


def from_pretrained(auto_class: Any, name: str, where: str, **settings: Any) -> tuple[nn.Module, list[str]]:
    """``auto_class.from_pretrained`` of the model ``name`` (resolved as
    :func:`~kd_core.paths.resolve_model_path` does), and the names of the weights its checkpoint
    did not have (missing, or of another shape), which start random."""
    path = resolve_model_path(name, where=where)
    folder, gguf_file = gguf_location(path)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # kd reports the new weights itself
    try:
        model, info = auto_class.from_pretrained(folder, output_loading_info=True, **_gguf(gguf_file), **settings)
    except OSError as exc:
        raise _load_error(name, path, where, exc) from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    if gguf_file is not None:
        # transformers dequantizes GGUF weights to floats on load but keeps a record of the GGUF
        # quantizer, which refuses save_pretrained (and students copy the config): the model is a
        # plain float model, so drop it
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    new = sorted({*info.get("missing_keys", ()), *(key for key, *_ in info.get("mismatched_keys", ()))})
    return model, new


def load_config(name: str, where: str) -> Any:
    """The config of the model ``name``, with errors that say where it was looked for."""
    path = resolve_model_path(name, where=where)
    folder, gguf_file = gguf_location(path)
    try:
        return AutoConfig.from_pretrained(folder, **_gguf(gguf_file))
    except OSError as exc:
        raise _load_error(name, path, where, exc) from None


def _load_error(name: str, path: str, where: str, exc: OSError) -> ConfigError:
    if Path(path).exists() or looks_like_path(name):
        return ConfigError(f"{where}: cannot load {name!r}: {exc}")
    return ConfigError(f"{where}: {name!r} is not a local folder, and the Hugging Face hub could not give it "
                       f"({str(exc).splitlines()[0]}); give the path of a model folder or package:MODULE")


class SequenceClassificationTask:
    """``sequence_classification``: one label per text or text pair (SST-2, CoLA, MNLI, ...)."""

    name = "sequence_classification"
    pipeline_tag = "text-classification"
    auto_class: Any = AutoModelForSequenceClassification
    head = "ForSequenceClassification"
    metrics: tuple[str, ...] = ("accuracy",)
    reads: tuple[str, ...] = ("labels",)

    def load_teacher(self, spec: ModelSpec, train_head: bool = False) -> nn.Module:
        """The model ``spec`` names, with a head for its classes. Unless ``train_head`` (``kd train``,
        which trains it), a head that its checkpoint does not hold is refused
        (:class:`~kd_core.errors.UntrainedHeadError`), or only warned about with
        ``spec.allow_untrained_head``."""
        model, new = from_pretrained(self.auto_class, spec.model, "teacher.model", **_label_settings(spec, self.head))
        if new and not train_head:
            error = UntrainedHeadError(spec.model, new)
            if not spec.allow_untrained_head:
                raise error
            warnings.warn(f"teacher.allow_untrained_head: {error.weights} start random; use this teacher to test "
                          "mechanics only, its scores are chance", stacklevel=2)
        return model

    def build_student(self, spec: StudentSpec, teacher: nn.Module) -> nn.Module:
        if spec.model is not None:
            # the teacher's class names too: a student saved without this head (a general student) has none
            config = teacher.config
            return from_pretrained(self.auto_class, spec.model, "student.model", num_labels=config.num_labels,
                                   id2label=config.id2label, label2id=config.label2id)[0]
        overrides = dict(spec.config or {})
        if spec.preset is not None:
            try:
                builder = lookup("students", spec.preset)
            except LookupError as exc:
                raise ConfigError(f"student.preset: {exc}") from None
            return builder(teacher, **overrides)
        return transformer_student(teacher, **overrides)

    def read(self, file: DataFile, model: ModelSpec, max_length: int, base_dir: Path | None,
             where: str) -> TokenizedDataset:
        return self._dataset(file, tokenizer_for(model), max_length, base_dir, where, model)

    def collator(self, model: ModelSpec) -> PadCollator:
        return PadCollator(tokenizer_for(model))

    def evaluate(self, model: nn.Module, adaptor: Adaptor, dataset: Any, collate: Callable[[list[Any]], Any],
                 metrics: Sequence[str], settings: RunSettings) -> Evaluation:
        """Each metric of the predicted classes (the argmax of the logits) against the gold
        labels, and of always predicting the most frequent gold label (the baseline). Label
        metrics read 1-D tensors of class ids; tag metrics (token classification) read tag lists."""
        chosen = {name: get_metric(name, self, self.name) for name in metrics}
        predictions: list[torch.Tensor] = []
        golds: list[torch.Tensor] = []
        clock: list[float] = []
        for _, features in run_model(model, adaptor, dataset, collate, FeatureNeeds({"logits": set()}), settings,
                                     clock=clock):
            predicted, gold = self._labelled(features)
            predictions += predicted
            golds += gold
        counts = Counter(int(x) for g in golds for x in g.reshape(-1))
        majority = counts.most_common(1)[0][0] if counts else 0
        constant = [torch.full_like(g, majority) for g in golds]
        values, baseline = {}, {}
        for name, metric in chosen.items():
            if metric.reads == "tags":
                names = _tag_names(model, name)
                gold_tags = [[names[int(i)] for i in g] for g in golds]
                values[name] = metric([[names[int(i)] for i in p] for p in predictions], gold_tags)
                baseline[name] = metric([[names[int(i)] for i in c] for c in constant], gold_tags)
            else:
                gold = torch.cat(golds)
                values[name] = metric(torch.cat(predictions), gold)
                baseline[name] = metric(torch.cat(constant), gold)
        return Evaluation(values, baseline, clock)

    def _labelled(self, features: Features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The predicted and gold labels of a batch: one tensor of one label per example."""
        logits = features["logits"]
        if logits.dim() != 2:
            raise ConfigError(f"task {self.name} scores one label per example; this model gives logits of shape "
                              f"{tuple(logits.shape)} (use task token_classification for one tag per token)")
        return [logits.argmax(-1).cpu()], [features["labels"].cpu()]

    def _dataset(self, spec: DataFile, tokenizer: Any, max_length: int, base_dir: Path | None,
                 where: str, teacher_spec: ModelSpec) -> TokenizedDataset:
        columns = spec.text_columns
        path, rows = read_rows(spec, base_dir, where)
        texts = [[str(row[c]) for row in rows] for c in columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        classes = _num_classes(teacher_spec) if spec.label is not None else 0
        names = _class_names(teacher_spec) if spec.label is not None else {}
        examples = []
        for i, row in enumerate(rows):
            example = {k: v[i] for k, v in encoded.items()}
            if spec.label is not None:
                example["labels"] = _class_id(row[spec.label], classes, names,
                                              f"{where}: {path.name} row {spec.skip + i + 1}", f"{where}.label")
            if spec.teacher_logits is not None:
                example[TEACHER_LOGITS] = row[spec.teacher_logits]
            examples.append(example)
        return TokenizedDataset(examples)

    def adaptor(self, model: nn.Module) -> HFAdaptor:
        return RNNAdaptor() if isinstance(model, BiRNNPreTrainedModel) else HFAdaptor()

    def build_multitask_student(self, spec: StudentSpec, teachers: dict[str, nn.Module]) -> nn.Module:
        """A :class:`~kd_models.multihead.MultiHeadForSequenceClassification` whose encoder is the
        first teacher's encoder config with ``spec.config`` overrides, and a head per task sized to
        that task's teacher. ``spec.model`` loads a saved multi-head student instead."""
        if spec.model is not None:
            return from_pretrained(AutoModelForSequenceClassification, spec.model, "student.model")[0]
        if spec.preset is not None:
            raise ConfigError("student.preset: multi-task students are built from student.config (overrides of the "
                              "first teacher's encoder config), not from a preset")
        first = next(iter(teachers.values()))
        encoder = transformer_student(first, **dict(spec.config or {})).config.to_dict()
        return MultiHeadForSequenceClassification(MultiHeadConfig(
            encoder=encoder, tasks={name: t.config.num_labels for name, t in teachers.items()}))

    def head_adaptor(self, model: nn.Module, head: str) -> HFAdaptor:
        return HFAdaptor(model_kwargs={"task": head})

    def save_model(self, model: nn.Module, directory: Path, teacher_spec: ModelSpec) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer_for(teacher_spec).save_pretrained(directory)


class TokenClassificationTask(SequenceClassificationTask):
    """``token_classification``: one tag per word (named entities: WNUT-16, CoNLL-2003 style files).

    ``data.text`` names a column of words (a list, or a string split on whitespace) and
    ``data.label`` a column of their tags, as a CoNLL file (``format: conll``) or JSON lines give
    them. Tags become ids through the teacher's ``teacher.labels`` or, for a fine-tuned teacher,
    its config's ``label2id``. A word's first piece carries its tag; the other pieces and the
    special tokens carry -100, so the hard-label loss and the metrics read one tag per word, while
    logit distillation reads every token.
    """

    name = "token_classification"
    pipeline_tag = "token-classification"
    auto_class = AutoModelForTokenClassification
    head = "ForTokenClassification"
    metrics = ("entity_f1",)
    reads = ("labels", "tags")

    def _dataset(self, spec: DataFile, tokenizer: Any, max_length: int, base_dir: Path | None,
                 where: str, teacher_spec: ModelSpec) -> TokenizedDataset:
        columns = spec.text_columns
        if len(columns) != 1:
            raise ConfigError(f"{where}.text: a token task reads one column of words, got {columns}")
        path, rows = read_rows(spec, base_dir, where)
        words = [row[columns[0]] if isinstance(row[columns[0]], list) else str(row[columns[0]]).split()
                 for row in rows]
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        label2id = _class_names(teacher_spec)
        examples, cut = [], 0
        for i, row in enumerate(rows):
            example = {k: v[i] for k, v in encoded.items()}
            word_ids = encoded.word_ids(i)
            cut += len(words[i]) - (max((w for w in word_ids if w is not None), default=-1) + 1)
            if spec.label is not None:
                example["labels"] = _token_labels(row[spec.label], word_ids, words[i], label2id,
                                                  f"{where}: {path.name} row {i + 1}")
            if spec.teacher_logits is not None:
                example[TEACHER_LOGITS] = row[spec.teacher_logits]
            examples.append(example)
        if cut:
            warnings.warn(f"{where}: data.max_length {max_length} cuts off {cut} words of {sum(map(len, words))}; "
                          "their tags are neither learned nor scored (raise max_length to keep them)", stacklevel=2)
        return TokenizedDataset(examples)

    def _labelled(self, features: Features) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One sequence per example, at the labelled tokens (a word's first piece)."""
        predicted, labels = features["logits"].argmax(-1).cpu(), features["labels"].cpu()
        keep = labels != -100
        mask = features.get("logits_mask")
        if mask is not None:
            keep &= mask.cpu().bool()
        return ([p[k] for p, k in zip(predicted, keep, strict=True)],
                [g[k] for g, k in zip(labels, keep, strict=True)])

    def build_multitask_student(self, spec: StudentSpec, teachers: dict[str, nn.Module]) -> nn.Module:
        """Refused: multi-head students have sequence-classification heads only."""
        raise ConfigError("task: multi-task recipes take sequence_classification tasks only")


def tokenizer_for(spec: ModelSpec) -> Any:
    """The tokenizer of the model ``spec`` names (the teacher's, which its students share)."""
    return load_tokenizer(resolve_model_path(spec.model, where="teacher.model"))


def _tag_names(model: nn.Module, metric: str) -> dict[int, str]:
    """The model's tag of each class id, from its config's ``id2label``: BIO tags, as entity
    metrics read them."""
    names = {int(i): name for i, name in (getattr(getattr(model, "config", None), "id2label", None) or {}).items()}
    wrong = [name for name in names.values() if name != "O" and not name.startswith(("B-", "I-"))]
    if not names or wrong:
        raise ConfigError(f"eval.metric {metric} reads BIO tags (O, B-type, I-type) from the model's config.id2label, "
                          f"which has {list(names.values())[:5]}...; give the teacher its tags (teacher.labels)")
    return names


def _num_classes(spec: ModelSpec) -> int:
    """How many classes the teacher ``spec`` names: its ``labels``, ``num_labels``, or its config's."""
    if spec.labels is not None:
        return len(spec.labels)
    if spec.num_labels is not None:
        return spec.num_labels
    return load_config(spec.model, "teacher.model").num_labels


def _class_names(spec: ModelSpec) -> dict[str, int]:
    """The class id of each of the teacher ``spec``'s class names (tags, for token tasks): its
    ``labels``, else its config's ``label2id`` (a fine-tuned teacher keeps its names there)."""
    if spec.labels is not None:
        return {name: i for i, name in enumerate(spec.labels)}
    return {str(name): int(i) for name, i in load_config(spec.model, "teacher.model").label2id.items()}


def _class_id(value: Any, classes: int, names: dict[str, int], where: str, field: str) -> int:
    """``value`` as a class id in ``0..classes-1``: a class name of ``names`` or an integer id;
    anything else fails naming the row and the fix."""
    if isinstance(value, str) and value in names:
        return names[value]
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} has label {value!r}; labels must be integer class ids 0..{classes - 1} or the "
                          f"class names of teacher.labels (check that {field} names the label column)") from None
    if not 0 <= label < classes:
        raise ConfigError(f"{where} has label {label}, but the teacher has {classes} classes, so labels must be "
                          f"0..{classes - 1}. Renumber the labels from 0 (1/2 become 0/1), or give the teacher as many "
                          f"classes as the data has (teacher.num_labels: {label + 1} for a teacher yet to be "
                          "fine-tuned)")
    return label


def one_file(spec: DataFile, where: str) -> None:
    """Refuse what only unlabelled corpora take (task ``general``): several ``sources``, ``select``."""
    for field in ("sources", "select"):
        if getattr(spec, field) is not None:
            raise ConfigError(f"{where}.{field}: this task reads one file as it is; {field} is for the unlabelled "
                              "text of task general")


def read_rows(spec: DataFile, base_dir: Path | None, where: str) -> tuple[Path, list[dict[str, Any]]]:
    """The data file's path and its rows: the text column(s), the label and the stored logits."""
    one_file(spec, where)
    path = resolve_path(spec.path, base_dir, f"{where}.path")
    carried = [c for c in (spec.label, spec.teacher_logits) if c is not None]
    return path, read_examples(path, [*spec.text_columns, *carried], spec.limit, spec.format, where, spec.columns,
                               spec.skip)


def _token_labels(tags: Any, word_ids: list[int | None], words: list[str], label2id: dict[str, int],
                  where: str) -> list[int]:
    """One label per token: the word's tag id at its first piece, -100 elsewhere."""
    tags = tags if isinstance(tags, list) else str(tags).split()
    if len(tags) != len(words):
        raise ConfigError(f"{where} has {len(words)} words but {len(tags)} tags")
    unknown = sorted({t for t in tags if t not in label2id})
    if unknown:
        raise ConfigError(f"{where} has tags {unknown} that are not among the teacher's labels "
                          f"{list(label2id)}; list every tag in teacher.labels")
    labels, previous = [], None
    for word in word_ids:
        labels.append(-100 if word is None or word == previous else label2id[tags[word]])
        previous = word
    return labels
