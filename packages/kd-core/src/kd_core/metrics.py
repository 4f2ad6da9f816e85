"""Evaluation metrics, and :class:`Metric`, the form in which they are registered.

A metric is registered through ``kd_register_metrics`` as a :class:`Metric`: the function, what it
reads and whether higher is better. A task's ``evaluate`` gives each metric the predictions and
references of the kind it reads (see :data:`READS`) and refuses a metric of a kind it does not
produce; so a third party adds a metric to an existing task, or a task with its own kind of
predictions, without touching kd-core. kd-core ships the label and tag metrics below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kd_core.errors import ConfigError


def accuracy(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Fraction of predictions equal to the gold label."""
    return float((pred == gold).float().mean())


def matthews_corrcoef(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004; CoLA's metric). 0 if undefined."""
    classes = int(max(pred.max(), gold.max())) + 1
    confusion = torch.zeros(classes, classes, dtype=torch.float64)
    confusion.index_put_((gold.long(), pred.long()), torch.ones(len(gold), dtype=torch.float64), accumulate=True)
    t = confusion.sum(1)
    p = confusion.sum(0)
    c = confusion.trace()
    s = confusion.sum()
    denominator = math.sqrt(float((s * s - (p * p).sum()) * (s * s - (t * t).sum())))
    return 0.0 if denominator == 0 else float((c * s - (t * p).sum()) / denominator)


def macro_f1(pred: torch.Tensor, gold: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions."""
    scores = []
    for label in torch.unique(torch.cat([pred, gold])):
        tp = float(((pred == label) & (gold == label)).sum())
        fp = float(((pred == label) & (gold != label)).sum())
        fn = float(((pred != label) & (gold == label)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """The entities of a BIO (IOB2) tag sequence as (type, first, last) token spans, read as
    conlleval does: an entity starts at ``B-X``, or at ``I-X`` that does not continue an ``X``."""
    spans: set[tuple[str, int, int]] = set()
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if kind is not None and not continues:
            spans.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = label, i
    return spans


def entity_f1(pred: list[list[str]], gold: list[list[str]]) -> float:
    """Micro-averaged entity-level F1 over sentences of BIO tags (an entity counts when its type
    and both ends match): WNUT and CoNLL's metric."""
    found = correct = expected = 0
    for p, g in zip(pred, gold, strict=True):
        p_spans, g_spans = entity_spans(p), entity_spans(g)
        found += len(p_spans)
        expected += len(g_spans)
        correct += len(p_spans & g_spans)
    return 0.0 if correct == 0 else 2 * correct / (found + expected)


READS = {
    "labels": "1-D integer tensors of predicted and gold class ids (one per example, or one per labelled token)",
    "tags": "lists of predicted and gold tag strings, one list per sequence",
    "answers": "predicted answer strings and, per question, the list of reference answer strings",
}
"""The kinds of predictions kd's tasks give metrics. A plugin's task may give a kind of its own."""


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``compute(predictions, references) -> float`` over the predictions of
    the kind ``reads`` names (:data:`READS`), and whether a higher value is better."""

    compute: Callable[[Any, Any], float]
    reads: str = "labels"
    greater_is_better: bool = True

    def __call__(self, predictions: Any, references: Any) -> float:
        return float(self.compute(predictions, references))


BUILTIN_METRICS = {
    "accuracy": Metric(accuracy),
    "matthews": Metric(matthews_corrcoef),
    "macro_f1": Metric(macro_f1),
    "entity_f1": Metric(entity_f1, reads="tags"),
}
"""The metrics kd-core registers (through its own ``kd_register_metrics``)."""


def check_reads(name: str, metric: Metric, given: tuple[str, ...], task: str) -> None:
    """Refuse ``metric`` when it reads predictions of a kind the task ``task`` does not give."""
    if metric.reads not in given:
        raise ConfigError(f"eval.metric {name!r} reads {metric.reads}, but task {task} gives metrics "
                          f"{' or '.join(given)}; choose a metric for this task (kd plugins lists them)")
