"""Recipe tasks for Hugging Face models."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kd_core.data import read_examples, resolve_path
from kd_core.errors import ConfigError
from kd_core.features import TEACHER_LOGITS
from kd_core.labelling import collate_teacher_logits
from kd_core.paths import resolve_model_path
from kd_core.plugins import lookup
from kd_core.recipe import DataFile, DataSpec, ModelSpec, StudentSpec
from kd_core.tasks import PreparedData
from kd_models.adaptors import HFAdaptor, RNNAdaptor
from kd_models.multihead import MultiHeadConfig, MultiHeadForSequenceClassification
from kd_models.rnn import BiRNNPreTrainedModel
from kd_models.students import transformer_student


@lru_cache(maxsize=8)
def load_tokenizer(path: str) -> Any:
    """The tokenizer saved with a model (cached per path)."""
    return AutoTokenizer.from_pretrained(path)


class TokenizedDataset(torch.utils.data.Dataset):
    """Tokenized examples: a list of dicts of token ids and a label."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


class PadCollator:
    """Pads a list of tokenized examples to the longest one and stacks their labels and stored
    teacher logits (when the examples have them)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        extra = ("labels", TEACHER_LOGITS)
        batch = dict(self.tokenizer.pad([{k: v for k, v in e.items() if k not in extra} for e in examples],
                                        return_tensors="pt"))
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        if TEACHER_LOGITS in examples[0]:
            batch[TEACHER_LOGITS] = collate_teacher_logits([e[TEACHER_LOGITS] for e in examples],
                                                           batch.get("attention_mask"))
        return batch


class SequenceClassificationTask:
    """``sequence_classification``: one label per text or text pair (SST-2, CoLA, MNLI, ...)."""

    def load_teacher(self, spec: ModelSpec) -> nn.Module:
        path = resolve_model_path(spec.model)
        kwargs = {"num_labels": spec.num_labels} if spec.num_labels else {}
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)

    def build_student(self, spec: StudentSpec, teacher: nn.Module) -> nn.Module:
        if spec.model is not None:
            return AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(spec.model), num_labels=teacher.config.num_labels)
        overrides = dict(spec.config or {})
        if spec.preset is not None:
            try:
                builder = lookup("students", spec.preset)
            except LookupError as exc:
                raise ConfigError(f"student.preset: {exc}") from None
            return builder(teacher, **overrides)
        return transformer_student(teacher, **overrides)

    def prepare_data(self, spec: DataSpec, teacher_spec: ModelSpec, base_dir: Path | None) -> PreparedData:
        tokenizer = load_tokenizer(resolve_model_path(teacher_spec.model))
        train = self._dataset(spec.train, tokenizer, spec.max_length, base_dir, "data.train")
        evaluation = (self._dataset(spec.eval, tokenizer, spec.max_length, base_dir, "data.eval")
                      if spec.eval is not None else None)
        return PreparedData(train, evaluation, PadCollator(tokenizer))

    def _dataset(self, spec: DataFile, tokenizer: Any, max_length: int, base_dir: Path | None,
                 where: str) -> TokenizedDataset:
        path = resolve_path(spec.path, base_dir, f"{where}.path")
        columns = spec.text_columns
        carried = [c for c in (spec.label, spec.teacher_logits) if c is not None]
        rows = read_examples(path, [*columns, *carried], spec.limit, spec.format, where, spec.columns)
        texts = [[str(row[c]) for row in rows] for c in columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        examples = []
        for i, row in enumerate(rows):
            example = {k: v[i] for k, v in encoded.items()}
            if spec.label is not None:
                try:
                    example["labels"] = int(row[spec.label])
                except (TypeError, ValueError):
                    raise ConfigError(f"{where}: {path.name} row {i + 1} has label {row[spec.label]!r}; "
                                      "labels must be integer class ids") from None
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
            return AutoModelForSequenceClassification.from_pretrained(resolve_model_path(spec.model))
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
        load_tokenizer(resolve_model_path(teacher_spec.model)).save_pretrained(directory)
