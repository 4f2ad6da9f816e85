"""``general``: task-agnostic distillation of a pre-trained encoder on unlabelled text (TinyBERT's
name for it), the setting of MiniLM, MiniLMv2, TinyBERT's general distillation, DistilBERT and
Extract-Then-Distill. The student is then fine-tuned on any task, as one would the teacher.

- Data: a corpus (:mod:`kd_models.corpus`): text files, JSON lines, CSV/TSV columns and SQuAD
  contexts, several mixed by weight (``data.train.sources``), packed into sequences of
  ``data.max_length`` tokens with the teacher's tokenizer and kept memory-mapped.
- Teacher: any encoder the ``hf`` adaptor knows, as a base model (``AutoModel``), or with its
  masked-LM head (``AutoModelForMaskedLM``) when its checkpoint has one.
- Masking: with ``mlm_probability`` p (the task option; by default 0.15 for a teacher with a
  masked-LM head, else 0) a share p of the real tokens is chosen as BERT does (80% [MASK], 10% a
  random token, 10% kept) and ``labels`` hold their ids: ``logits`` are then the masked-LM logits
  [B, L, V] with ``logits_mask`` on the chosen tokens only, so ``kl`` at temperature T is
  DistilBERT's soft-target loss and the hard-label loss is the masked-LM loss. With p = 0 the
  text is read as it is (MiniLM's and TinyBERT's objectives, which read attention, Q/K/V and
  hidden states).
- Students: configs, presets, ``layer_copy``, ``etd_rand`` and ``etd_impt`` (importance from the
  corpus: the masked-LM loss when the batches are masked, else the contrastive proxy of
  :func:`kd_models.extraction.taylor_importance`), of the teacher's class; saved with the
  teacher's tokenizer as a base encoder (or with its masked-LM head) that ``from_pretrained``
  loads under any task head, so ``kd train`` and a recipe's ``student: {model: ...}`` take it.
- No evaluation: a general student is scored by fine-tuning it on tasks (``kd suite``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForMaskedLM, DataCollatorForLanguageModeling

from kd_core.errors import ConfigError
from kd_core.features import Adaptor, Features
from kd_core.inference import RunSettings
from kd_core.schema import DataFile, ModelSpec, StudentSpec
from kd_core.tasks import Evaluation
from kd_models.adaptors import HFAdaptor
from kd_models.corpus import CorpusDataset, read_corpus
from kd_models.tasks import SequenceClassificationTask, from_pretrained, load_config, tokenizer_for

MLM_HEADS = ("ForMaskedLM", "ForPreTraining")
"""Architectures whose checkpoints hold a masked-LM head."""
DEFAULT_MLM_PROBABILITY = 0.15
"""BERT's share of masked tokens, the default for a teacher with a masked-LM head."""


def has_mlm_head(model: str) -> bool:
    """Whether the checkpoint ``model`` (a path or ``package:MODULE``) holds a masked-LM head."""
    architectures = load_config(model, "teacher.model").architectures or []
    return any(name.endswith(MLM_HEADS) for name in architectures)


class GeneralAdaptor(HFAdaptor):
    """The ``hf`` adaptor for base encoders and masked LMs: ``logits`` are the masked-LM logits
    [B, L, V] with ``logits_mask`` on the masked tokens (the positions whose ``labels`` are not
    -100), or None for a base model, which has none."""

    def masks(self, batch: Any) -> Features:
        """``inputs_mask``, ``labels`` and ``logits_mask``: the masked tokens (labels not -100), or
        every real token without labels."""
        labels = batch.get("labels")
        return {**super().masks(batch),
                "logits_mask": (labels != -100).long() if labels is not None else batch.get("attention_mask")}

    def head_logits(self, batch: Any, model_outputs: Any) -> tuple[Any, Any]:
        logits = getattr(model_outputs, "logits", None)
        return (None, None) if logits is None else (logits, self.masks(batch)["logits_mask"])


class CorpusCollator:
    """Pads packed sequences and, with ``mlm_probability`` > 0, masks them as BERT does (with the
    global torch RNG, which the engine seeds and restores on resume, so a resumed run masks the
    same tokens)."""

    def __init__(self, tokenizer: Any, mlm_probability: float) -> None:
        self.tokenizer = tokenizer
        self.masking = (DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability,
                                                        return_tensors="pt") if mlm_probability > 0 else None)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.masking is not None:
            return dict(self.masking(examples))
        return dict(self.tokenizer.pad(examples, return_tensors="pt"))


class GeneralTask(SequenceClassificationTask):
    """``general``: see the module's docstring. ``mlm_probability`` is the share of tokens masked
    (None: 0.15 for a teacher with a masked-LM head, else 0)."""

    name = "general"
    pipeline_tag = "feature-extraction"
    metrics: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()

    def __init__(self, mlm_probability: float | None = None) -> None:
        if mlm_probability is not None and not 0 <= mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in [0, 1), got {mlm_probability}")
        self.mlm_probability = mlm_probability

    def masking(self, model: ModelSpec) -> float:
        """The share of tokens masked when the teacher is ``model``."""
        if self.mlm_probability is not None:
            return self.mlm_probability
        return DEFAULT_MLM_PROBABILITY if has_mlm_head(model.model) else 0.0

    def load_teacher(self, spec: ModelSpec, train_head: bool = False) -> nn.Module:
        """The encoder ``spec`` names, with its masked-LM head when its checkpoint has one."""
        if spec.labels is not None or spec.num_labels is not None:
            raise ConfigError("teacher.num_labels/labels: task general distils an encoder on unlabelled text, "
                              "without classes; leave them out")
        masked_lm = has_mlm_head(spec.model)
        if self.mlm_probability and not masked_lm:
            raise ConfigError(f"task_options.mlm_probability {self.mlm_probability}: teacher {spec.model!r} has no "
                              "masked-LM head to predict the masked tokens; set it to 0 (or leave it out)")
        return from_pretrained(AutoModelForMaskedLM if masked_lm else AutoModel, spec.model, "teacher.model")[0]

    def build_student(self, spec: StudentSpec, teacher: nn.Module) -> nn.Module:
        if spec.preset in ("bilstm", "bigru"):
            raise ConfigError(f"student.preset {spec.preset}: a general student is a transformer encoder (a preset "
                              "such as T4-tiny, a config, or student.model)")
        if spec.model is not None:
            masked_lm = type(teacher).__name__.endswith(MLM_HEADS)
            return from_pretrained(AutoModelForMaskedLM if masked_lm else AutoModel, spec.model, "student.model")[0]
        return super().build_student(spec, teacher)

    def read(self, file: DataFile, model: ModelSpec, max_length: int, base_dir: Path | None,
             where: str) -> CorpusDataset:
        if not where.startswith("data.train") and where != "label input":
            raise ConfigError(f"{where}: task general has no evaluation set; a general student is scored by "
                              "fine-tuning it on tasks (kd suite, or kd train with student.model)")
        if file.label is not None or file.teacher_logits is not None:
            raise ConfigError(f"{where}: task general reads unlabelled text; leave out label and teacher_logits")
        return read_corpus(file, tokenizer_for(model), max_length, base_dir, where)

    def collator(self, model: ModelSpec) -> CorpusCollator:
        return CorpusCollator(tokenizer_for(model), self.masking(model))

    def adaptor(self, model: nn.Module) -> GeneralAdaptor:
        return GeneralAdaptor()

    def evaluate(self, model: nn.Module, adaptor: Adaptor, dataset: Any, collate: Callable[[list[Any]], Any],
                 metrics: Sequence[str], settings: RunSettings) -> Evaluation:
        """Refused: a general student is scored by fine-tuning it on tasks."""
        raise ConfigError("task general has no evaluation; fine-tune the student on tasks (kd suite)")

    def build_multitask_student(self, spec: StudentSpec, teachers: dict[str, nn.Module]) -> nn.Module:
        """Refused: multi-task recipes take sequence_classification tasks only."""
        raise ConfigError("task: multi-task recipes take sequence_classification tasks only")
