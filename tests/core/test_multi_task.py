"""MultiTaskDistiller: tasks sampled in proportion to their size, each task's teacher and head,
per-task loss terms, and exact resume through the multi-task loader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_core import ConfigError, DistillationConfig, MultiTaskDistiller, TrainingConfig, lookup
from kd_core.distillers import MultiTaskLoader
from tests.core.models import TinyEncoder, TokenDataset


class TwoHeadStudent(nn.Module):
    """A shared TinyEncoder body with one classifier per task; returns every head's logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyEncoder(width=8, layers=1, classes=8)
        self.heads = nn.ModuleDict({"three": nn.Linear(8, 3), "five": nn.Linear(8, 5)})

    def forward(self, input_ids, attention_mask, labels):
        features = self.body(input_ids, attention_mask, labels)
        hidden = features["hidden"][-1]
        weights = attention_mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return {name: head(pooled) for name, head in self.heads.items()} | {"hidden": features["hidden"]}


def _head(task: str):
    def adaptor(batch, outputs):
        return {"logits": outputs[task], "labels": batch["labels"], "hidden": outputs["hidden"],
                "inputs_mask": batch["attention_mask"]}
    return adaptor


def _setup(tmp_path: Path, **train) -> tuple[MultiTaskDistiller, dict[str, DataLoader]]:
    torch.manual_seed(0)
    teachers = {"three": TinyEncoder(width=16, layers=2, classes=3), "five": TinyEncoder(width=16, layers=2, classes=5)}
    student = TwoHeadStudent()
    features = lookup("adaptors", "features")()
    distiller = MultiTaskDistiller(
        TrainingConfig(output_dir=str(tmp_path), progress=False, seed=0, **train),
        DistillationConfig(temperature=2, kd_loss_type="kl", hard_label_weight=0.5),
        teachers, student, {"three": features, "five": features}, {"three": _head("three"), "five": _head("five")})
    loaders = {"three": DataLoader(TokenDataset(size=48, classes=3, seed=1), batch_size=8, shuffle=True),
               "five": DataLoader(TokenDataset(size=16, classes=5, seed=2), batch_size=8, shuffle=True)}
    return distiller, loaders


def test_tasks_are_sampled_by_size_and_every_task_uses_its_own_teacher_and_head(tmp_path: Path) -> None:
    distiller, loaders = _setup(tmp_path / "run")
    distiller.train(torch.optim.AdamW(distiller.model_S.parameters(), lr=1e-2), loaders, num_steps=24)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tasks = Counter(next(k.split(".")[0] for k in line if k.endswith(".kd")) for line in lines)
    assert set(tasks) == {"three", "five"} and tasks["three"] > tasks["five"]
    assert all({f"{t}.kd", f"{t}.hard_label"} <= set(line) for line in lines
               for t in ("three", "five") if f"{t}.kd" in line)
    assert distiller.teacher_forwards == 24

    torch.manual_seed(3)
    counts = Counter(task for task, _ in MultiTaskLoader(loaders, tau=1.0) for _ in range(1))
    assert sum(counts.values()) == len(MultiTaskLoader(loaders)) == 8
    flat = Counter(task for _ in range(200) for task, _ in MultiTaskLoader(loaders, tau=0.0))
    assert abs(flat["three"] / sum(flat.values()) - 0.5) < 0.05, "tau=0 samples tasks uniformly"
    sized = Counter(task for _ in range(200) for task, _ in MultiTaskLoader(loaders, tau=1.0))
    assert abs(sized["three"] / sum(sized.values()) - 0.75) < 0.05, "tau=1 samples by number of batches"


def test_the_kd_term_of_a_task_is_its_teachers_kl(tmp_path: Path) -> None:
    distiller, loaders = _setup(tmp_path)
    distiller.prepare()
    batch = next(iter(loaders["five"]))
    terms = distiller.compute_losses(("five", batch), 0.0)
    with torch.no_grad():
        teacher = distiller.models_T["five"](**batch)["logits"]
        student = distiller.model_S(**batch)["five"]
        expected = 4 * torch.nn.functional.kl_div(torch.log_softmax(student / 2, -1), torch.softmax(teacher / 2, -1),
                                                  reduction="batchmean")
    torch.testing.assert_close(terms["five.kd"].detach(), expected, rtol=1e-5, atol=1e-6)
    assert set(terms) == {"five.kd", "five.hard_label"}


def test_multi_task_run_resumes_exactly(tmp_path: Path) -> None:
    straight, loaders = _setup(tmp_path / "straight")
    straight.train(torch.optim.AdamW(straight.model_S.parameters(), lr=1e-2), loaders, num_steps=12)
    first, loaders = _setup(tmp_path / "resumed", ckpt_steps=5)
    first.train(torch.optim.AdamW(first.model_S.parameters(), lr=1e-2), loaders, num_steps=12)
    for step in (10, 12):  # drop the newest checkpoints: resume from step 5 as if killed there
        path = tmp_path / "resumed" / "checkpoints" / f"step-{step:08d}"
        if path.exists():
            import shutil

            shutil.rmtree(path)
    again, loaders = _setup(tmp_path / "resumed", ckpt_steps=5)
    again.train(torch.optim.AdamW(again.model_S.parameters(), lr=1e-2), loaders, num_steps=12, resume=True)
    for key, value in straight.model_S.state_dict().items():
        assert torch.equal(again.model_S.state_dict()[key], value), key


def test_adaptors_must_cover_every_task(tmp_path: Path) -> None:
    features = lookup("adaptors", "features")()
    with pytest.raises(ConfigError, match=r"adaptor_S must be a dict with one adaptor per task \(a, b\)"):
        MultiTaskDistiller(TrainingConfig(output_dir=str(tmp_path)), DistillationConfig(),
                           {"a": TinyEncoder(), "b": TinyEncoder()}, TinyEncoder(), {"a": features, "b": features},
                           {"a": features})
