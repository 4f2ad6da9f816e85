"""Evaluation during training from a recipe (``kd train`` and ``kd distill``): the validation set
(a file or a seeded split of the training rows, by question for question answering), the metric
in metrics.jsonl and the report, the best model saved, and the recipe's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kd_core import ConfigError
from kd_core.assembly import task_for
from kd_core.recipe import run_distill, run_train
from kd_core.schema import DEFAULT_EPOCHS, Recipe, default_learning_rate
from kd_core.tasks import hold_out, prepare_data
from kd_core.validation import BEST_DIR

ROOT = Path(__file__).resolve().parents[2]
SQUAD = ROOT / "examples" / "data" / "squad11"


def _data(sst2_dir: Path, **validation) -> dict:
    return {"train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label", "limit": 160},
            "eval": {"path": str(sst2_dir / "dev.tsv"), "text": "sentence", "label": "label", "limit": 64},
            "max_length": 32, **validation}


def _recipe(teacher: Path, data: dict, **training) -> Recipe:
    return Recipe.from_dict({
        "task": "sequence_classification", "data": data, "teacher": {"model": str(teacher), "num_labels": 2},
        "training": {"batch_size": 16, "learning_rate": 3e-3, "seed": 0, "progress": False, **training}})


def _scored(output: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["validation_accuracy"] for r in records if "validation_accuracy" in r}


def test_kd_train_scores_a_held_out_split_and_saves_the_best_model(tmp_path: Path, tiny_teacher_dir: Path,
                                                                     sst2_dir: Path) -> None:
    recipe = _recipe(tiny_teacher_dir, _data(sst2_dir, validation_split=0.25), num_epochs=4, eval_steps=3)
    report = run_train(recipe, tmp_path)
    scored = _scored(tmp_path)
    # 120 rows in batches of 16: 8 steps an epoch, 32 in all; every third step and the last
    assert sorted(scored) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 32]
    validation = report["validation"]
    best = max(scored, key=lambda step: (scored[step], -step))
    assert (validation["best_step"], validation["best_value"]) == (best, scored[best])
    assert validation["evaluations"] == len(scored) and report["steps"] == 32
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    kept = load_file(str(tmp_path / BEST_DIR / f"step-{best:08d}.safetensors"))
    for key, value in saved.items():
        assert torch.equal(value, kept[key]), key


def test_kd_distill_with_a_validation_file_stops_early_and_reports_where(tmp_path: Path, tiny_teacher_dir: Path,
                                                                          sst2_dir: Path) -> None:
    validation = {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label", "skip": 160,
                  "limit": 48}
    recipe = Recipe.from_dict({
        **_recipe(tiny_teacher_dir, _data(sst2_dir, validation=validation), num_epochs=30, eval_steps=2, patience=2,
                  min_delta=0.5).to_dict(),
        "student": {"config": {"num_hidden_layers": 1}},
        "distillation": {"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0.5}})
    with pytest.warns(UserWarning, match="chance"):  # a random teacher: the mechanics, not the quality
        report = run_distill(recipe, tmp_path)
    # an accuracy never gains 0.5 after the first score: stopped at the third evaluation
    assert report["validation"]["stopped_early"] and report["validation"]["best_step"] == 2
    assert report["steps"] == 6 and sorted(_scored(tmp_path)) == [2, 4, 6]
    assert "student" in report and report["student"]["params"] > 0


def test_a_validation_split_is_seeded_disjoint_and_leaves_training_the_rest(tiny_teacher_dir: Path,
                                                                            sst2_dir: Path) -> None:
    recipe = _recipe(tiny_teacher_dir, _data(sst2_dir, validation_split=0.1))
    task = task_for(recipe)
    first = prepare_data(task, recipe.data, recipe.teacher, None)
    again = prepare_data(task, recipe.data, recipe.teacher, None)
    assert (len(first.train), len(first.validation)) == (144, 16)
    assert first.validation.indices == again.validation.indices
    assert not set(first.validation.indices) & set(first.train.indices)
    assert sorted(first.validation.indices + first.train.indices) == list(range(160))


def test_question_answering_holds_out_whole_questions(tiny_qa_teacher: Path) -> None:
    recipe = Recipe.from_dict({
        "task": "question_answering",
        "data": {"train": {"path": str(SQUAD / "part-a.json"), "text": ["question", "context"], "label": "answers",
                           "limit": 60}, "max_length": 64, "validation_split": 0.2},
        "teacher": {"model": str(tiny_qa_teacher)}, "training": {"num_steps": 1}})
    task = task_for(recipe)
    whole = task.read(recipe.data.train, recipe.teacher, 64, None, "data.train")
    assert len(whole) > len(whole.questions), "contexts must need several windows for this to test"
    data = prepare_data(task, recipe.data, recipe.teacher, None)
    assert (len(data.train.questions), len(data.validation.questions)) == (48, 12)
    train, validation = hold_out(whole, 0.2)
    assert [q.id for q in validation.questions] == [q.id for q in data.validation.questions]
    assert {q.id for q in train.questions}.isdisjoint(q.id for q in validation.questions)
    assert len(train) + len(validation) == len(whole), "every window on the side of its question"
    for part in (train, validation):
        for window in part.windows:
            original = next(w for w in whole.windows if w.inputs is window.inputs)
            assert part.questions[window.question] is whole.questions[original.question]


def test_a_split_that_leaves_one_side_empty_is_refused() -> None:
    with pytest.raises(ConfigError, match="no validation rows"):
        hold_out(list(range(5)), 0.05)


@pytest.mark.parametrize(("data", "training", "message"), [
    ({}, {"patience": 2}, "give data.validation"),
    ({}, {"eval_steps": 10}, "give data.validation"),
    ({"validation_split": 0.1, "validation": {"path": "x.tsv"}}, {}, "not both"),
    ({"validation_split": 0.1, "augment": {"augmenter": "eda"}}, {}, "leak"),
    ({}, {"num_epochs": 2, "num_steps": 10}, "not both"),
])
def test_recipes_that_ask_for_validation_without_a_set_are_refused(sst2_dir: Path, data: dict, training: dict,
                                                                    message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _recipe(Path("teacher"), _data(sst2_dir, **data), **training)


def test_multi_task_recipes_refuse_validation_for_now(sst2_dir: Path) -> None:
    task = {"data": _data(sst2_dir, validation_split=0.1), "teacher": {"model": "t", "num_labels": 2}}
    with pytest.raises(ConfigError, match="multi-task"):
        Recipe.from_dict({"task": "sequence_classification", "tasks": {"a": task}, "training": {}})


def test_the_budget_defaults_to_epochs_and_the_learning_rate_to_the_models_size(sst2_dir: Path) -> None:
    training = _recipe(Path("teacher"), _data(sst2_dir)).training
    assert (training.num_epochs, training.num_steps) == (DEFAULT_EPOCHS, None)
    assert default_learning_rate(5_242_754) == 3e-4  # the 3 x 144 students
    assert default_learning_rate(22_713_986) == 1e-4  # all-MiniLM-L6-v2
    assert default_learning_rate(109_000_000) == 3e-5  # BERT-base
