"""The analysis's figures: reliability diagrams, confidence histograms and learning curves (one
panel per model), and probing accuracy per layer (one panel per task)."""

from __future__ import annotations

import textwrap
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


def learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """Per model: each loss term of its training run against the optimizer step (``curves`` maps a
    model to its terms, each a list of (step, smoothed value))."""
    figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), squeeze=False)
    for axis, (name, terms) in zip(axes[0], curves.items(), strict=True):
        for term, points in terms.items():
            axis.plot([p[0] for p in points], [p[1] for p in points], label=term, linewidth=1.2)
        axis.set(title=name, xlabel="step", ylabel="loss (moving average)")
        axis.set_yscale("log")
        axis.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def probing_figure(report: dict[str, Any], path: Path) -> None:
    """Per task: each model's probing accuracy from its embeddings (0) to its last layer (1), the
    task's chance level dashed; a task that could not be built says why."""
    tasks = report["tasks"]
    columns = min(5, len(tasks))
    rows = -(-len(tasks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False)
    for axis, (name, task) in zip(axes.flat, tasks.items(), strict=False):
        axis.set_title(name, fontsize=10)
        if not task["built"]:
            axis.text(0.5, 0.5, "not built:\n" + textwrap.fill(task["reason"], 34), ha="center", va="center",
                      fontsize=7, transform=axis.transAxes)
            axis.set_axis_off()
            continue
        for model, result in report["models"].items():
            scores = result["tasks"][name]
            depth = [i / max(1, len(scores) - 1) for i in range(len(scores))]
            axis.plot(depth, scores, marker="o", markersize=3, label=model)
        axis.axhline(task["chance"], linestyle="--", color="grey", label="chance")
        axis.set(xlabel="relative depth", ylabel="accuracy", ylim=(0, 1))
    for axis in list(axes.flat)[len(tasks):]:
        axis.set_axis_off()
    drawn = [a for a in axes.flat if a.get_legend_handles_labels()[0]]
    if drawn:
        handles, labels = drawn[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=len(labels))
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)
