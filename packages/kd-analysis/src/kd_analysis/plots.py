"""The analysis's figures: reliability diagrams and confidence histograms, one panel per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from kd_analysis.predictions import Predictions


def reliability_diagrams(report: dict[str, Any], path: Path) -> None:
    """Per model: accuracy per confidence bin against the diagonal of perfect calibration."""
    models = report["models"]
    figure, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4), squeeze=False)
    for axis, (name, result) in zip(axes[0], models.items(), strict=True):
        filled = [b for b in result["reliability"] if b["count"]]
        axis.bar([(b["low"] + b["high"]) / 2 for b in filled], [b["accuracy"] for b in filled],
                 width=[b["high"] - b["low"] for b in filled], edgecolor="black", alpha=0.7, label="accuracy")
        axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        axis.set(title=f"{name} (ECE {result['ece']:.3f})", xlabel="confidence", ylabel="accuracy", xlim=(0, 1),
                 ylim=(0, 1))
        axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def confidence_histograms(models: list[Predictions], bins: int, path: Path) -> None:
    """Per model: how confident its right and its wrong predictions are."""
    figure, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.5), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        confidence, correct = model.confidence.numpy(), model.correct.numpy()
        axis.hist([confidence[correct], confidence[~correct]], bins=bins, range=(0, 1), stacked=True,
                  label=["right", "wrong"], color=["tab:green", "tab:red"])
        axis.set(title=model.name, xlabel="confidence", ylabel="examples")
        axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
