"""Training really learns: on a real SST-2 slice, the teacher's loss falls and its dev accuracy
rises well above chance; a student distilled from it beats its own starting point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kd_core.assembly import task_for
from kd_core.measure import measure
from kd_core.recipe import run_distill, run_train
from kd_core.schema import Recipe
from kd_core.tasks import prepare_data

pytestmark = [pytest.mark.slow, pytest.mark.real_teacher]


def _data(sst2: Path, train: int) -> dict:
    return {"train": {"path": str(sst2 / "train.tsv"), "text": "sentence", "label": "label", "limit": train},
            "eval": {"path": str(sst2 / "dev.tsv"), "text": "sentence", "label": "label", "limit": 300},
            "max_length": 48}


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fine_tuning_then_distilling_on_sst2_improves_loss_and_dev_accuracy(
        tmp_path: Path, minilm_path: Path, sst2_dir: Path) -> None:
    teacher_recipe = Recipe.from_dict({
        "task": "sequence_classification", "data": _data(sst2_dir, 1200),
        "teacher": {"model": str(minilm_path), "num_labels": 2},
        "training": {"batch_size": 32, "num_epochs": 1, "learning_rate": 1e-4, "seed": 0, "progress": False},
    })
    task = task_for(teacher_recipe)
    data = prepare_data(task, teacher_recipe.data, teacher_recipe.teacher, None)
    untrained = task.load_teacher(teacher_recipe.teacher, train_head=True)
    before = measure(task, untrained, task.adaptor(untrained), data, teacher_recipe)["value"]

    report = run_train(teacher_recipe, tmp_path / "teacher")
    losses = _losses(tmp_path / "teacher")
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert report["model"]["value"] >= 0.75 > before + 0.1

    student_recipe = Recipe.from_dict({
        "task": "sequence_classification", "data": _data(sst2_dir, 1200),
        "teacher": {"model": str(tmp_path / "teacher" / "model")},
        "student": {"config": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2,
                               "intermediate_size": 512}},
        "training": {"batch_size": 32, "num_steps": 120, "learning_rate": 1e-3, "seed": 0, "progress": False},
        "distillation": {"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5},
    })
    student_task = task_for(student_recipe)
    teacher = student_task.load_teacher(student_recipe.teacher)
    fresh = student_task.build_student(student_recipe.student, teacher)
    student_before = measure(student_task, fresh, student_task.adaptor(fresh), data, student_recipe)["value"]
    distilled = run_distill(student_recipe, tmp_path / "student")
    losses = _losses(tmp_path / "student")
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert distilled["teacher"]["value"] == pytest.approx(report["model"]["value"])
    assert distilled["student"]["value"] > max(student_before, 0.55)
