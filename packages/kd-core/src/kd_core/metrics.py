"""Evaluation metrics over predicted and gold labels (1-D integer tensors), and entity-level F1
over tag sequences."""

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


METRICS = {"accuracy": accuracy, "matthews": matthews_corrcoef, "macro_f1": macro_f1}


def compute_metric(name: str, pred: torch.Tensor, gold: torch.Tensor) -> float:
    """The metric ``name`` (one of :data:`METRICS`)."""
    if name not in METRICS:
        raise ConfigError(f"eval.metric: unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name](pred, gold)
