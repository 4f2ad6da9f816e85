"""Every model's predictions on one labelled file, each model reading it with its own tokenizer:
class probabilities, or a task's own evaluation with per-example predictions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kd_core.errors import ConfigError
from kd_core.features import FeatureNeeds, Features
from kd_core.inference import RunSettings, run_model
from kd_core.schema import DataFile, ModelSpec
from kd_core.tasks import Evaluation, Task


@dataclass
class Predictions:
    """One model's probabilities [N, C] over N examples, and the gold labels [N]."""

    name: str
    probabilities: torch.Tensor
    golds: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        """The most probable class of each example."""
        return self.probabilities.argmax(-1)

    @property
    def confidence(self) -> torch.Tensor:
        """The probability of the predicted class."""
        return self.probabilities.max(-1).values

    @property
    def correct(self) -> torch.Tensor:
        """Whether each prediction equals the gold label."""
        return self.predicted == self.golds


@torch.no_grad()
def predict(task: Task, name: str, model: str, data: DataFile, max_length: int = 128, batch_size: int = 64,
            device: str = "cpu", progress: bool = True) -> Predictions:
    """``model``'s softmax probabilities on ``data`` (which needs its label column)."""
    if data.label is None:
        raise ConfigError("kd analyze compares predictions with gold labels; give the label column")
    spec = ModelSpec(model=model)
    network = task.load_teacher(spec)
    probabilities, golds = [], []
    for batch, features in run_over(task, network, spec, data, FeatureNeeds({"logits": set()}), max_length,
                                    batch_size, device, f"predict {name}" if progress else None):
        logits = features["logits"]
        if logits.dim() != 2:
            raise ConfigError(f"{name}: kd analyze reads one prediction per example; this model gives "
                              f"per-token logits of shape {tuple(logits.shape)}")
        probabilities.append(torch.softmax(logits.float(), -1).cpu())
        golds.append(batch["labels"].cpu())
    return Predictions(name, torch.cat(probabilities), torch.cat(golds))


def run_over(task: Task, model: nn.Module, spec: ModelSpec, data: DataFile, needs: FeatureNeeds, max_length: int,
             batch_size: int, device: str, progress: str | None = None) -> Iterator[tuple[Any, Features]]:
    """Each batch of ``data`` as ``spec``'s tokenizer reads it (on ``device``), with the features
    ``model`` gives for ``needs``; ``progress`` names a progress bar."""
    dataset = task.read(data, spec, max_length, None, "--data")
    yield from run_model(model, task.adaptor(model), dataset, task.collator(spec), needs,
                         RunSettings(batch_size, device, progress))


def texts_of(rows: list[dict[str, Any]], data: DataFile) -> list[str]:
    """Each example's text as shown in the tables (a pair joined with ' ||| ')."""
    return [" ||| ".join(str(row[c]) for c in data.text_columns) for row in rows]


def evaluate_models(task: Task, models: dict[str, str], data: DataFile, max_length: int, settings: RunSettings,
                       progress: bool) -> tuple[dict[str, Evaluation], list[str]]:
    """Each model's evaluation on ``data`` (every metric the task reports, with its per-example
    predictions), each reading the data with its own tokenizer; and each example's text as the
    task's dataset shows it (empty strings when it shows none). For tasks whose predictions are
    not one class per example: answers, next tokens."""
    evaluations, texts = {}, []
    for name, path in models.items():
        spec = ModelSpec(model=path)
        network = task.load_teacher(spec)
        dataset = task.read(data, spec, max_length, None, "--data")
        run = RunSettings(settings.batch_size, settings.device, f"predict {name}" if progress else None)
        evaluation = task.evaluate(network, task.adaptor(network), dataset, task.collator(spec), task.metrics, run)
        if evaluation.predictions is None:
            raise ConfigError(f"{name}: the task gives no per-example predictions to analyse")
        evaluations[name] = evaluation
        texts = list(getattr(dataset, "texts", None) or [""] * len(evaluation.predictions))
    return evaluations, texts
