"""Evaluation metrics over predicted and gold labels (1-D integer tensors)."""

from __future__ import annotations

import math

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


METRICS = {"accuracy": accuracy, "matthews": matthews_corrcoef, "macro_f1": macro_f1}


def compute_metric(name: str, pred: torch.Tensor, gold: torch.Tensor) -> float:
    """The metric ``name`` (one of :data:`METRICS`)."""
    if name not in METRICS:
        raise ConfigError(f"eval.metric: unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name](pred, gold)
