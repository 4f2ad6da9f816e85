"""Mistakes and confidence of a teacher and its students on one labelled set.

For every model: its metric, mean confidence on right and wrong predictions, ECE and a
reliability table. For every student against the reference (the first model, usually the
teacher): how often they agree, a 2 x 2 table of who is right (both wrong split into the same
and different wrong answers), the confusion of the two models' predictions, and the most
confident examples of each cell. Every model's prediction of every example goes to
predictions.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kd_analysis.calibration import bins_as_dicts, expected_calibration_error, reliability_bins
from kd_analysis.plots import confidence_histograms, learning_curves, reliability_diagrams
from kd_analysis.predictions import Predictions
from kd_core.checkpoint import write_text_atomic
from kd_core.tasks import get_metric

ANALYSIS_FILE = "analysis.json"
PREDICTIONS_FILE = "predictions.jsonl"


def analyze(models: list[Predictions], texts: list[str], output_dir: Path, metric: str = "accuracy",
            bins: int = 10, examples: int = 5,
            curves: dict[str, dict[str, list[tuple[int, float]]]] | None = None) -> dict[str, Any]:
    """Write predictions.jsonl, analysis.json, reliability.png and confidence.png to
    ``output_dir`` and return the analysis. ``curves`` (model name -> loss term -> smoothed
    (step, value) pairs, from :func:`~kd_analysis.curves.read_curves`) adds learning_curves.png
    and each run's steps and final smoothed terms under ``training``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"examples": len(texts), "metric": metric, "bins": bins, "models": {},
                              "reference": models[0].name, "comparisons": {}}
    for model in models:
        correct, confidence = model.correct, model.confidence
        report["models"][model.name] = {
            "value": get_metric(metric)(model.predicted, model.golds),
            "accuracy": float(correct.float().mean()),
            "mean_confidence_right": _mean(confidence[correct]),
            "mean_confidence_wrong": _mean(confidence[~correct]),
            "ece": expected_calibration_error(confidence, correct, bins),
            "reliability": bins_as_dicts(reliability_bins(confidence, correct, bins)),
        }
    reference = models[0]
    for model in models[1:]:
        report["comparisons"][model.name] = compare(reference, model, texts, examples)
    report["agreement"] = {a.name: {b.name: float((a.predicted == b.predicted).float().mean()) for b in models}
                           for a in models}
    _write_predictions(models, texts, output_dir / PREDICTIONS_FILE)
    reliability_diagrams(report, output_dir / "reliability.png")
    confidence_histograms(models, bins, output_dir / "confidence.png")
    if curves:
        report["training"] = {name: {"steps": max(p[0] for p in terms["loss"]) if "loss" in terms else None,
                                     "final": {term: round(points[-1][1], 5) for term, points in terms.items()}}
                              for name, terms in curves.items()}
        learning_curves(curves, output_dir / "learning_curves.png")
    write_text_atomic(output_dir / ANALYSIS_FILE, json.dumps(report, indent=2) + "\n")
    return report


def compare(reference: Predictions, model: Predictions, texts: list[str], examples: int) -> dict[str, Any]:
    """Agreement of ``model`` with ``reference``, who is right how often, and for each cell the
    ``examples`` cases in which the model (or, where only the model is right, the reference) was
    most confident."""
    right_r, right_m = reference.correct, model.correct
    same = reference.predicted == model.predicted
    cells = {"both_right": right_r & right_m, "only_reference_right": right_r & ~right_m,
             "only_model_right": ~right_r & right_m, "both_wrong_same": ~right_r & ~right_m & same,
             "both_wrong_different": ~right_r & ~right_m & ~same}
    classes = reference.probabilities.shape[1]
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((reference.predicted, model.predicted), torch.ones_like(model.predicted), accumulate=True)
    table: dict[str, Any] = {"agreement": float(same.float().mean()),
                             "counts": {cell: int(members.sum()) for cell, members in cells.items()},
                             "confusion": {"rows": f"{reference.name} predicted", "columns": f"{model.name} predicted",
                                           "counts": confusion.tolist()},
                             "examples": {}}
    for cell, members in cells.items():
        ranking = reference.confidence if cell == "only_model_right" else model.confidence
        chosen = sorted(members.nonzero().squeeze(-1).tolist(), key=lambda i: (-float(ranking[i]), i))[:examples]
        table["examples"][cell] = [{"index": i, "text": texts[i], "gold": int(reference.golds[i]),
                                    "models": {reference.name: _guess(reference, i), model.name: _guess(model, i)}}
                                   for i in chosen]
    return table


def _guess(model: Predictions, index: int) -> dict[str, Any]:
    return {"predicted": int(model.predicted[index]), "confidence": round(float(model.confidence[index]), 4)}


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if len(values) else None


def _write_predictions(models: list[Predictions], texts: list[str], path: Path) -> None:
    lines = []
    for i, text in enumerate(texts):
        row = {"index": i, "text": text, "gold": int(models[0].golds[i]), "models": {}}
        for model in models:
            row["models"][model.name] = {**_guess(model, i), "probabilities": [round(p, 6) for p in
                                                                               model.probabilities[i].tolist()]}
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")
