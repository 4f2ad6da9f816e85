"""Probing: what each layer of a teacher and its students encodes (Conneau et al. 2018's method).

For every probing task (:mod:`kd_analysis.probing_tasks`) and every model, each layer's sentence
representation (the mean of its hidden states over the real tokens; the embeddings count as
layer 0) is frozen, and a logistic-regression classifier is trained on 80% of the task's
sentences and scored on the other 20%. Each task's chance level is the accuracy of always
answering the most frequent class of the training split, measured on the test split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kd_analysis.plots import probing_figure
from kd_analysis.predictions import run_over
from kd_analysis.probing_tasks import ProbingTask
from kd_core.checkpoint import write_text_atomic
from kd_core.features import FeatureNeeds
from kd_core.schema import DataFile, ModelSpec
from kd_core.tasks import Task

PROBING_FILE = "probing.json"
TEST_FRACTION = 0.2


def split(task: ProbingTask, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train and test indices of a task's sentences."""
    order = torch.randperm(len(task.texts), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(len(order) * (1 - TEST_FRACTION))
    return order[:cut], order[cut:]


def chance(labels: torch.Tensor, train: list[int], test: list[int]) -> float:
    """Test accuracy of always answering the training split's most frequent class."""
    majority = int(torch.bincount(labels[train]).argmax())
    return float((labels[test] == majority).float().mean())


def write_task_file(task: ProbingTask, directory: Path) -> Path:
    """The task's sentences and labels as JSON lines (what every model reads, kept for inspection)."""
    path = directory / f"{task.name}.jsonl"
    lines = [json.dumps({"text": t, "label": label, "class": task.classes[label]}, ensure_ascii=False)
             for t, label in zip(task.texts, task.labels, strict=True)]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


@torch.no_grad()
def layer_representations(task: Task, model: Any, spec: ModelSpec, path: Path, max_length: int = 128,
                          batch_size: int = 64, device: str = "cpu") -> list[torch.Tensor]:
    """Per layer, the [N, D] mean of ``model``'s hidden states over each sentence's real tokens."""
    needs = FeatureNeeds({"hidden": {0}})  # adaptors return every layer's hidden states
    layers: list[list[torch.Tensor]] = []
    data = DataFile(path=str(path), text="text")  # the probe reads the labels itself: the model needs none
    for _, features in run_over(task, model, spec, data, needs, max_length, batch_size, device):
        mask = features["inputs_mask"].unsqueeze(-1).float()
        pooled = [(h.float() * mask).sum(1) / mask.sum(1).clamp(min=1) for h in features["hidden"]]
        if not layers:
            layers = [[] for _ in pooled]
        for store, value in zip(layers, pooled, strict=True):
            store.append(value.cpu())
    return [torch.cat(store) for store in layers]


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, train: list[int], test: list[int],
                   weight_decay: float = 1e-3, steps: int = 100) -> float:
    """Test accuracy of a logistic regression trained (L-BFGS, L2) on standardised features."""
    x_train, x_test = features[train], features[test]
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classes = int(labels.max()) + 1
    linear = torch.nn.Linear(features.shape[1], classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x_train), labels[train])
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float((linear(x_test).argmax(-1) == labels[test]).float().mean())


def probe(task: Task, models: dict[str, str], tasks: list[ProbingTask], output: Path, seed: int = 0,
          max_length: int = 128, batch_size: int = 64, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Probe every layer of every model on every built task; write probing.json, the task files
    and probing.png to ``output`` and return the report."""
    output.mkdir(parents=True, exist_ok=True)
    built = [t for t in tasks if t.unbuilt is None]
    report: dict[str, Any] = {"seed": seed, "test_fraction": TEST_FRACTION, "tasks": {}, "models": {}}
    splits, paths = {}, {}
    for t in tasks:
        entry = {"category": t.category, "description": t.description}
        if t.unbuilt is not None:
            report["tasks"][t.name] = {**entry, "built": False, "reason": t.unbuilt}
            continue
        splits[t.name] = split(t, seed)
        paths[t.name] = write_task_file(t, output / "tasks")
        labels = torch.tensor(t.labels)
        report["tasks"][t.name] = {**entry, "built": True, "classes": t.classes, "sentences": len(t.texts),
                                   "train": len(splits[t.name][0]), "test": len(splits[t.name][1]),
                                   "chance": chance(labels, *splits[t.name]), "dropped_classes": t.dropped}
    bar = tqdm(total=len(models) * len(built), desc="probe", unit="task", disable=not progress)
    for name, path in models.items():
        spec = ModelSpec(model=path)
        model = task.load_teacher(spec, train_head=True).to(device).eval()  # probes read layers, not the head
        results: dict[str, list[float]] = {}
        for t in built:
            layers = layer_representations(task, model, spec, paths[t.name], max_length, batch_size, device)
            labels = torch.tensor(t.labels)
            results[t.name] = [round(probe_accuracy(x, labels, *splits[t.name]), 4) for x in layers]
            bar.update()
        report["models"][name] = {"path": path, "layers": len(next(iter(results.values()), [])), "tasks": results}
    bar.close()
    write_text_atomic(output / PROBING_FILE, json.dumps(report, indent=2) + "\n")
    probing_figure(report, output / "probing.png")
    return report
