"""``training.report_to`` from a recipe: ``kd train`` writes TensorBoard logs beside metrics.jsonl
under OUTPUT/logs, and ``kd distill --check`` refuses a tracker nobody registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kd_core import UnknownNameError
from kd_core.loggers import LOG_DIR
from kd_core.preflight import check_recipe
from kd_core.recipe import run_train
from kd_core.schema import Recipe

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _recipe(teacher: Path, sst2_dir: Path, report_to: list[str]) -> Recipe:
    return Recipe.from_dict({
        "task": "sequence_classification",
        "data": {"train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label", "limit": 64},
                 "validation_split": 0.25, "max_length": 32},
        "teacher": {"model": str(teacher), "num_labels": 2},
        "training": {"batch_size": 16, "num_epochs": 2, "learning_rate": 3e-3, "seed": 0, "progress": False,
                     "report_to": report_to}})


def test_kd_train_logs_every_record_to_tensorboard(tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    run_train(_recipe(tiny_teacher_dir, sst2_dir, ["tensorboard"]), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    reader = event_accumulator.EventAccumulator(str(tmp_path / LOG_DIR), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    assert set(reader.Tags()["scalars"]) == set().union(*records) - {"step"}
    scored = [(r["step"], r["validation_accuracy"]) for r in records if "validation_accuracy" in r]
    events = reader.Scalars("validation_accuracy")
    assert [e.step for e in events] == [step for step, _ in scored]
    assert [e.value for e in events] == pytest.approx([value for _, value in scored])


def test_the_check_refuses_an_unknown_tracker(tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    with pytest.raises(UnknownNameError, match="Registered loggers: tensorboard"):
        check_recipe(_recipe(tiny_teacher_dir, sst2_dir, ["wandb"]))
