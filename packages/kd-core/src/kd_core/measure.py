"""Measuring a model as a run's report does: its eval metric, the metric of chance, its size and
its latency per batch on the device it ran on (synchronised, so GPU times are real)."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_core.errors import ConfigError
from kd_core.features import Adaptor, FeatureNeeds, to_device
from kd_core.metrics import compute_metric, entity_f1
from kd_core.schema import Recipe
from kd_core.tasks import PreparedData

AT_CHANCE_MARGIN = 0.05
"""A teacher whose metric is within this of chance's is reported as being at chance level."""


def measure(model: nn.Module, adaptor: Adaptor, data: PreparedData, recipe: Recipe) -> dict[str, Any]:
    """Eval metric, the metric of chance (always the eval set's most frequent label), parameter
    count and latency (median milliseconds per eval batch) on ``recipe.training.device``; with
    ``data.extra_eval``, also ``eval_sets``: each extra set's ``{"value": metric}``."""
    if data.eval is None:
        raise ConfigError("data.eval is needed to measure a model")
    value, chance, times = _score(model, adaptor, data.eval, data.collate, recipe)
    device = torch.device(recipe.training.device)
    result: dict[str, Any] = {
        "value": value,
        "chance": chance,
        "params": sum(p.numel() for p in model.parameters()),
        # the first batch pays one-off costs (allocations, kernel selection)
        "latency_ms": round(statistics.median(times[1:] or times), 3),
        "latency_device": device_name(device),
    }
    if data.extra_eval:
        result["eval_sets"] = {}
        for name, dataset in data.extra_eval.items():
            extra_value, extra_chance, _ = _score(model, adaptor, dataset, data.collate, recipe)
            result["eval_sets"][name] = {"value": extra_value, "chance": extra_chance}
    return result


def measure_against(model: nn.Module, adaptor: Adaptor, data: PreparedData, recipe: Recipe,
                    teacher_result: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure`, plus the retention against the teacher's result."""
    result = measure(model, adaptor, data, recipe)
    result["retention"] = retention(result["value"], teacher_result["value"])
    teacher_sets = teacher_result.get("eval_sets", {})
    for name, entry in result.get("eval_sets", {}).items():
        if name in teacher_sets:
            entry["retention"] = retention(entry["value"], teacher_sets[name]["value"])
    return result


def retention(student: float, teacher: float) -> float | None:
    """The student's metric as a fraction of the teacher's (None when the teacher's is 0)."""
    return None if teacher == 0 else round(student / teacher, 4)


TEACHER_AT_CHANCE = ("A student's retention against it means nothing. Was its task head trained (kd train, or "
                     "teacher.finetune)?")


def at_chance_warning(result: dict[str, Any], metric: str, who: str = "teacher",
                      hint: str = TEACHER_AT_CHANCE) -> str | None:
    """A sentence saying that ``result`` (a :func:`measure`) is at chance level, or None."""
    if result["value"] > result["chance"] + AT_CHANCE_MARGIN:
        return None
    return (f"the {who} scores {result['value']:.4f} {metric} on data.eval, within {AT_CHANCE_MARGIN} of chance "
            f"({result['chance']:.4f}: always predicting the most frequent label). {hint}")


def device_name(device: torch.device) -> str:
    """The device a latency was measured on, in words: ``cpu (N threads)`` or the GPU's name."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def _score(model: nn.Module, adaptor: Adaptor, dataset: Any, collate: Any,
           recipe: Recipe) -> tuple[float, float, list[float]]:
    """The recipe's metric of ``model`` on ``dataset``, the metric of always predicting the most
    frequent gold label, and the milliseconds each batch took."""
    device = torch.device(recipe.training.device)
    was_training = model.training
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=recipe.eval.batch_size, shuffle=False, collate_fn=collate)
    needs = FeatureNeeds({"logits": set()})
    predictions, golds, times = [], [], []
    token_level = None
    for batch in loader:
        batch = to_device(batch, device)
        _synchronize(device)
        start = time.perf_counter()
        features = adaptor.run(model, batch, needs)
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
        predicted, labels = features["logits"].argmax(-1).cpu(), features["labels"].cpu()
        token_level = predicted.dim() == 2
        if not token_level:
            predictions.append(predicted)
            golds.append(labels)
            continue
        # token level: one sequence per example, at the labelled tokens (a word's first piece)
        keep = labels != -100
        mask = features.get("logits_mask")
        if mask is not None:
            keep &= mask.cpu().bool()
        predictions.extend(p[k] for p, k in zip(predicted, keep, strict=True))
        golds.extend(g[k] for g, k in zip(labels, keep, strict=True))
    model.train(was_training)
    counts = Counter(int(x) for g in golds for x in g.reshape(-1))
    majority = counts.most_common(1)[0][0] if counts else 0
    constant = [torch.full_like(g, majority) for g in golds]
    if recipe.eval.metric == "entity_f1":
        if token_level is False:
            raise ConfigError("eval.metric entity_f1 scores tag sequences; this model gives one label per example "
                              "(use it with task token_classification)")
        names = _label_names(model)
        gold_tags = [[names[int(i)] for i in g] for g in golds]
        value = entity_f1([[names[int(i)] for i in p] for p in predictions], gold_tags)
        chance = entity_f1([[names[int(i)] for i in c] for c in constant], gold_tags)
    else:
        gold = torch.cat(golds)
        value = compute_metric(recipe.eval.metric, torch.cat(predictions), gold)
        chance = compute_metric(recipe.eval.metric, torch.cat(constant), gold)
    return value, round(chance, 4), times


def _label_names(model: nn.Module) -> dict[int, str]:
    names = {int(i): name for i, name in (getattr(getattr(model, "config", None), "id2label", None) or {}).items()}
    wrong = [name for name in names.values() if name != "O" and not name.startswith(("B-", "I-"))]
    if not names or wrong:
        raise ConfigError(f"eval.metric entity_f1 reads BIO tags (O, B-type, I-type) from the model's config.id2label, "
                          f"which has {list(names.values())[:5]}...; give the teacher its tags (teacher.labels)")
    return names
