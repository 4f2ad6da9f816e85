"""Whole distillation steps, shared by the step benchmark suite and the step profile: the models,
the batches, the recipes, and one function per framework that trains a student for a number of
steps (kd's GeneralDistiller, and the ``textbrewer`` package's GeneralDistiller as the peer).

Both frameworks get the same teacher (the packaged MiniLM, 6 x 384, 12 heads), the same student
weights, the same batches (SST-2 sentences padded to 64 tokens, 32 a batch), the same losses and
the same optimizer (fused AdamW). What differs is the framework: TextBrewer needs the models'
attention maps, so both models run eager attention with ``output_attentions``; kd runs SDPA and
captures queries and keys with hooks on the layers its losses read.
"""

from __future__ import annotations

import copy
import importlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data import DataLoader

from kd_core import DistillationConfig, GeneralDistiller, TrainingConfig, lookup
from kd_core.schema import DataFile, ModelSpec, StudentSpec

BATCH_SIZE = 32
LENGTH = 64
STUDENT_3x192 = {"num_hidden_layers": 3, "hidden_size": 192, "num_attention_heads": 12, "intermediate_size": 768,
                 "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

TEXTBREWER_RECIPE = {
    # the TextBrewer-style step: ce at T=8, hidden_mse with linear projections at three
    # layer pairs, attention_mse on the last layers' attention probabilities
    "temperature": 8, "kd_loss_type": "ce",
    "intermediate_matches": [
        *({"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
           "proj": ["linear", 192, 384]} for t, s in ((2, 1), (4, 2), (6, 3))),
        {"layer_T": 5, "layer_S": 2, "feature": "attention", "loss": "attention_mse", "weight": 1},
    ],
}
MINILM_RECIPE = {
    # MiniLM: the last layer's attention distributions (from Q and K) and value relations, plus logit KD
    "temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5,
    "intermediate_matches": [
        {"layer_T": -1, "layer_S": -1, "feature": ["q", "k"], "loss": "attention_kl", "weight": 1},
        {"layer_T": -1, "layer_S": -1, "feature": "v", "loss": "value_relation_kl", "weight": 1},
    ],
}
BILSTM_RECIPE = {"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5}
DISTILBERT_LENGTH = 128
"""Tokens per packed sequence of the DistilBERT step (task general's corpus sequences)."""
DISTILBERT_BATCH_SIZE = 8
"""Sequences per DistilBERT batch: 8 x 128 tokens keep a round of its 30,522-word logits (teacher,
student and their gradients) within a minute on 2 cores; the kernel sees the ~150 masked rows."""


@dataclass(frozen=True)
class StepCase:
    """A standard recipe's step: its student and its distillation config."""

    student: dict[str, Any]
    distillation: dict[str, Any]
    init: str | None = None


def _distilbert_recipe() -> dict[str, Any]:
    """examples/recipes/general_distilbert.yaml's distillation section: kl at T=2 over the
    vocabulary at the masked tokens, the masked-LM loss and the cosine of the last hidden states."""
    import yaml

    recipe = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "general_distilbert.yaml"
    return yaml.safe_load(recipe.read_text(encoding="utf-8"))["distillation"]


CASES = {
    "textbrewer_style": StepCase({"config": STUDENT_3x192}, TEXTBREWER_RECIPE),
    "minilm": StepCase({"config": STUDENT_3x192}, MINILM_RECIPE),
    "etd": StepCase({"config": STUDENT_3x192}, MINILM_RECIPE, init="etd_impt"),
    "bilstm": StepCase({"preset": "bilstm", "config": {"hidden_size": 300}}, BILSTM_RECIPE),
    # DistilBERT: every other layer of the masked LM at full width, on masked corpus sequences
    "distilbert": StepCase({"config": {"num_hidden_layers": 3, "hidden_dropout_prob": 0.0,
                                       "attention_probs_dropout_prob": 0.0}}, _distilbert_recipe(),
                           init="layer_copy"),
}


@dataclass
class Setup:
    """The task, the teacher, and the SST-2 examples every case trains on."""

    task: Any
    teacher: nn.Module
    data: list[dict[str, torch.Tensor]]
    batch_size: int = BATCH_SIZE

    def loader(self) -> DataLoader:
        """The batches in a fixed order (no shuffling: both frameworks see the same ones)."""
        return DataLoader(self.data, batch_size=self.batch_size, collate_fn=self._collate)

    @staticmethod
    def _collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def load_setup(minilm_path: Path, sst2_dir: Path, steps: int) -> Setup:
    """The packaged MiniLM (with a new 2-class head) and ``steps`` batches of the first SST-2
    training sentences, padded to 64 tokens."""
    from transformers import AutoTokenizer

    task = lookup("tasks", "sequence_classification")
    teacher = task.load_teacher(ModelSpec(model=str(minilm_path), num_labels=2, allow_untrained_head=True)).eval()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    lines = (sst2_dir / "train.tsv").read_text(encoding="utf-8").splitlines()[1:1 + steps * BATCH_SIZE]
    rows = [line.split("\t") for line in lines]
    encoded = tokenizer([r[0] for r in rows], padding="max_length", truncation=True, max_length=LENGTH,
                        return_tensors="pt")
    labels = torch.tensor([int(r[1]) for r in rows])
    data = [{**{k: v[i] for k, v in encoded.items()}, "labels": labels[i]} for i in range(len(rows))]
    return Setup(task, teacher, data)


def load_masked_lm_setup(minilm_path: Path, steps: int) -> Setup:
    """The DistilBERT step's setup: a masked LM of MiniLM's shape (the packaged encoder under a
    new masked-LM head, its decoder tied to the word embeddings: V = 30,522) as task general loads
    it, and ``steps`` batches of 8 WikiText-2 sequences of 128 tokens, 15% of their
    tokens masked as BERT does (seeded)."""
    import tempfile

    from transformers import AutoTokenizer, BertForMaskedLM

    from kd_models.general import GeneralTask

    root = Path(__file__).resolve().parents[1]
    task = GeneralTask(mlm_probability=0.15)
    with tempfile.TemporaryDirectory() as folder:
        BertForMaskedLM.from_pretrained(minilm_path).save_pretrained(folder)
        AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
        spec = ModelSpec(model=folder)
        teacher = task.load_teacher(spec).eval()
        corpus = task.read(DataFile(path=str(root / "examples" / "data" / "wikitext2" / "valid.txt")), spec,
                           DISTILBERT_LENGTH, None, "data.train")
        collate = task.collator(spec)
        torch.manual_seed(0)
        size = DISTILBERT_BATCH_SIZE
        batches = [collate([corpus[i] for i in range(b * size, (b + 1) * size)]) for b in range(steps)]
    data = [{k: v[i] for k, v in batch.items()} for batch in batches for i in range(size)]
    return Setup(task, teacher, data, batch_size=size)


def build_student(setup: Setup, case: StepCase, seed: int = 0) -> nn.Module:
    """The case's student, the same weights on every call with the same seed."""
    torch.manual_seed(seed)
    student = setup.task.build_student(StudentSpec(**case.student), setup.teacher)
    if case.init is not None:
        options = {"num_batches": 4} if case.init == "etd_impt" else {}
        student = lookup("initializers", case.init)(setup.teacher, student, data=setup.loader(), **options)
    return student


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer both frameworks get (the projections join it during training)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def run_kd(setup: Setup, case: StepCase, steps: int, output_dir: Path, student: nn.Module | None = None,
           compiled: nn.Module | None = None, cache: bool = False, epochs: int | None = None) -> GeneralDistiller:
    """``steps`` steps (or ``epochs`` passes over the batches) of kd's GeneralDistiller; ``compiled``
    (``torch.compile(student)``) trains in the student's place when given."""
    student = student if student is not None else build_student(setup, case)
    config = DistillationConfig.from_dict({**case.distillation, "is_caching_logits": cache})
    distiller = GeneralDistiller(
        TrainingConfig(output_dir=str(output_dir), progress=False, ckpt_steps=10**9), config,
        setup.teacher, compiled if compiled is not None else student, setup.task.adaptor(setup.teacher),
        setup.task.adaptor(student))
    distiller.train(optimizer_for(student), setup.loader(), num_steps=None if epochs else steps, num_epochs=epochs)
    return distiller


def textbrewer() -> Any:
    """The ``textbrewer`` package (PyPI), which imports a SummaryWriter from tensorboardX."""
    try:
        return importlib.import_module("textbrewer")
    except ImportError as exc:
        raise RuntimeError(f"the peer benchmark needs textbrewer and tensorboardX ({exc}); "
                           "make .venv installs them") from exc


def _textbrewer_adaptor(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, Any]:
    return {"logits": outputs.logits, "hidden": outputs.hidden_states, "attention": outputs.attentions,
            "inputs_mask": batch["attention_mask"], "labels": batch["labels"]}


def eager_copy(model: nn.Module) -> nn.Module:
    """The model with eager attention, which ``output_attentions`` needs."""
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    return model


def run_textbrewer(case: StepCase, steps: int, output_dir: Path, loader: DataLoader, teacher: nn.Module,
                   student: nn.Module) -> Any:
    """``steps`` steps of the textbrewer package's GeneralDistiller on the same batches and losses;
    ``teacher`` and ``student`` must run eager attention (:func:`eager_copy`)."""
    tb = textbrewer()
    distiller = tb.GeneralDistiller(
        train_config=tb.TrainingConfig(output_dir=str(output_dir), device="cpu", ckpt_steps=steps, log_dir=None),
        distill_config=tb.DistillationConfig(**case.distillation),
        model_T=teacher, model_S=student, adaptor_T=_textbrewer_adaptor, adaptor_S=_textbrewer_adaptor)
    distiller.train(optimizer_for(student), loader, num_steps=steps, output_hidden_states=True,
                    output_attentions=True)
    return distiller


@dataclass
class Sections:
    """Wall-clock seconds spent in each part of training steps."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("teacher_forward", "student_forward", "backward", "optimizer"), 0.0))
    total: float = 0.0

    def per_step(self, steps: int) -> dict[str, float]:
        """Milliseconds per step of each part; ``losses_and_rest`` is what the parts leave of the
        total (loss terms, projections, adaptors, clipping, logging, checkpoint)."""
        parts = {name: 1000 * value / steps for name, value in self.seconds.items()}
        parts["losses_and_rest"] = 1000 * self.total / steps - sum(parts.values())
        parts["total"] = 1000 * self.total / steps
        return {k: round(v, 2) for k, v in parts.items()}


@contextmanager
def timed_sections(teacher: nn.Module, student: nn.Module) -> Iterator[Sections]:
    """Time the teacher's and the student's forward passes (hooks on the two models), every
    ``Tensor.backward`` and every optimizer step while the block runs; both frameworks go
    through these, so one profiler serves both."""
    sections = Sections()
    clocks: dict[str, float] = {}

    def start(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            clocks[name] = time.perf_counter()
        return hook

    def stop(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            sections.seconds[name] += time.perf_counter() - clocks.pop(name)
        return hook

    handles = [teacher.register_forward_pre_hook(start("teacher_forward")),
               teacher.register_forward_hook(stop("teacher_forward"), always_call=True),
               student.register_forward_pre_hook(start("student_forward")),
               student.register_forward_hook(stop("student_forward"), always_call=True),
               register_optimizer_step_pre_hook(start("optimizer")),
               register_optimizer_step_post_hook(stop("optimizer"))]
    backward = torch.Tensor.backward

    def timed_backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        try:
            backward(self, *args, **kwargs)
        finally:
            sections.seconds["backward"] += time.perf_counter() - began

    torch.Tensor.backward = timed_backward
    began = time.perf_counter()
    try:
        yield sections
    finally:
        sections.total = time.perf_counter() - began
        torch.Tensor.backward = backward
        for handle in handles:
            handle.remove()


@contextmanager
def kernels_backend(choice: str) -> Iterator[None]:
    """Set ``KD_KERNELS`` for the block (``reference`` runs every loss in eager PyTorch)."""
    before = os.environ.get("KD_KERNELS")
    os.environ["KD_KERNELS"] = choice
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("KD_KERNELS", None)
        else:
            os.environ["KD_KERNELS"] = before
