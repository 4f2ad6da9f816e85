"""Measuring a model as a run's report does: its metrics as its task evaluates them, the metric of
chance (the task's trivial prediction), its size and its latency per batch on the device it ran
on (synchronised, so GPU times are real)."""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from kd_core.errors import ConfigError
from kd_core.features import Adaptor
from kd_core.inference import RunSettings
from kd_core.schema import EvalSpec, Recipe
from kd_core.tasks import Evaluation, PreparedData, Task, eval_metrics, get_metric, task_samples

AT_CHANCE_MARGIN = 0.05
"""A teacher whose metric is within this of chance's is reported as being at chance level."""


def measure(task: Task, model: nn.Module, adaptor: Adaptor, data: PreparedData, recipe: Recipe,
            eval_spec: EvalSpec | None = None) -> dict[str, Any]:
    """The model on ``data.eval`` as the task evaluates it.

    ``value`` is the recipe's ``eval.metric`` (or the task's first metric) and ``chance`` the same
    metric of the task's trivial prediction; a task that reports several metrics adds
    ``metrics`` and ``baseline_metrics``. Then the parameter count and the latency (median
    milliseconds per eval batch) on ``recipe.training.device``; with ``data.extra_eval``,
    ``eval_sets``: each extra set's ``{"value", "chance", ...}``; and what the task shows of a
    model beside its metrics (:func:`~kd_core.tasks.task_samples`). ``eval_spec`` replaces the
    recipe's ``eval`` section (a task of a multi-task recipe).
    """
    if data.eval is None:
        raise ConfigError("data.eval is needed to measure a model")
    spec = eval_spec or recipe.eval
    names = eval_metrics(task, spec.metric)
    settings = RunSettings(batch_size=spec.batch_size, device=recipe.training.device)
    evaluation = task.evaluate(model, adaptor, data.eval, data.collate, names, settings)
    times = evaluation.batch_ms
    result: dict[str, Any] = {
        **_summary(evaluation, names),
        "params": sum(p.numel() for p in model.parameters()),
        # the first batch pays one-off costs (allocations, kernel selection)
        "latency_ms": round(statistics.median(times[1:] or times), 3),
        "latency_device": device_name(torch.device(settings.device)),
        **task_samples(task, model, data.eval, data.collate, settings),
    }
    if data.extra_eval:
        result["eval_sets"] = {name: _summary(task.evaluate(model, adaptor, dataset, data.collate, names, settings),
                                              names) for name, dataset in data.extra_eval.items()}
    return result


def _summary(evaluation: Evaluation, names: list[str]) -> dict[str, Any]:
    head = names[0]
    summary: dict[str, Any] = {"value": evaluation.values[head], "chance": round(evaluation.baseline[head], 4)}
    if len(names) > 1:
        summary["metrics"] = {name: evaluation.values[name] for name in names}
        summary["baseline_metrics"] = {name: round(evaluation.baseline[name], 4) for name in names}
    return summary


def measure_against(task: Task, model: nn.Module, adaptor: Adaptor, data: PreparedData, recipe: Recipe,
                    teacher_result: dict[str, Any], eval_spec: EvalSpec | None = None) -> dict[str, Any]:
    """:func:`measure`, plus the retention against the teacher's result."""
    result = measure(task, model, adaptor, data, recipe, eval_spec)
    higher = get_metric(eval_metrics(task, (eval_spec or recipe.eval).metric)[0]).greater_is_better
    result["retention"] = retention(result["value"], teacher_result["value"], higher)
    teacher_sets = teacher_result.get("eval_sets", {})
    for name, entry in result.get("eval_sets", {}).items():
        if name in teacher_sets:
            entry["retention"] = retention(entry["value"], teacher_sets[name]["value"], higher)
    return result


def retention(student: float, teacher: float, greater_is_better: bool = True) -> float | None:
    """The student's metric as a fraction of the teacher's, or for a metric where lower is better
    (perplexity) the teacher's as a fraction of the student's: 1 when they are equal, less when
    the student is worse either way (None when the divisor is 0)."""
    numerator, divisor = (student, teacher) if greater_is_better else (teacher, student)
    return None if divisor == 0 else round(numerator / divisor, 4)


TEACHER_AT_CHANCE = ("A student's retention against it means nothing. Was its task head trained (kd train, or "
                     "teacher.finetune)?")


def at_chance_warning(result: dict[str, Any], metric: str, who: str = "teacher",
                      hint: str = TEACHER_AT_CHANCE) -> str | None:
    """A sentence saying that ``result`` (a :func:`measure`) is at chance level, or None: within
    :data:`AT_CHANCE_MARGIN` of chance's value, or for a metric where lower is better (perplexity)
    not that share below it."""
    if get_metric(metric).greater_is_better:
        if result["value"] > result["chance"] + AT_CHANCE_MARGIN:
            return None
        within = f"within {AT_CHANCE_MARGIN} of chance"
    else:
        if result["value"] < result["chance"] * (1 - AT_CHANCE_MARGIN):
            return None
        within = f"not {AT_CHANCE_MARGIN:.0%} below chance"
    return (f"the {who} scores {result['value']:.4f} {metric} on data.eval, {within} "
            f"({result['chance']:.4f}: the task's trivial prediction, such as always the most frequent label). "
            f"{hint}")


def device_name(device: torch.device) -> str:
    """The device a latency was measured on, in words: ``cpu (N threads)`` or the GPU's name."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
