"""Model cards: ``kd distill`` and ``kd train`` leave a README.md beside the model they save, with
Hugging Face's YAML front matter naming the teacher and the report's metrics, and the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kd_core.model_card import CARD_FILE, read_front_matter
from kd_core.recipe import REPORT_FILE, run_distill, run_train
from kd_core.schema import Recipe


def _recipe(teacher: Path, sst2_dir: Path, **sections) -> Recipe:
    return Recipe.from_dict({
        "task": "sequence_classification",
        "data": {"train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label", "limit": 64},
                 "eval": {"path": str(sst2_dir / "dev.tsv"), "text": "sentence", "label": "label", "limit": 32},
                 "validation_split": 0.25, "max_length": 32},
        "teacher": {"model": str(teacher), "num_labels": 2},
        "training": {"batch_size": 16, "num_epochs": 2, "learning_rate": 3e-3, "seed": 0, "progress": False},
        **sections})


def test_a_distilled_student_has_a_card_naming_its_teacher_and_metrics(tmp_path: Path, tiny_teacher_dir: Path,
                                                                       sst2_dir: Path) -> None:
    recipe = _recipe(tiny_teacher_dir, sst2_dir, student={"config": {"num_hidden_layers": 1}},
                     distillation={"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0.5})
    with pytest.warns(UserWarning, match="chance"):  # a random teacher: the card, not the quality
        run_distill(recipe, tmp_path)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    card = tmp_path / "student" / CARD_FILE
    meta = read_front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "base_model" not in meta  # a local teacher is not a Hub id
    assert meta["kd"]["teacher"] == str(tiny_teacher_dir) and meta["kd"]["role"] == "student"
    assert meta["datasets"] == [str(sst2_dir / "train.tsv"), str(sst2_dir / "dev.tsv")]
    [result] = meta["model-index"][0]["results"]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": report["student"]["value"], "retention": report["student"]["retention"]}
    assert meta["kd"]["model"]["params"] == report["student"]["params"]
    assert meta["kd"]["teacher_measured"]["value"] == report["teacher"]["value"]
    assert meta["kd"]["validation"]["best_step"] == report["validation"]["best_step"]
    text = card.read_text()
    assert f"distilled from `{tiny_teacher_dir}`" in text
    recipe_block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert Recipe.from_dict(yaml.safe_load(recipe_block)) == recipe


def test_a_fine_tuned_model_has_a_card_and_a_hub_teacher_is_its_base_model(tmp_path: Path, tiny_teacher_dir: Path,
                                                                           sst2_dir: Path) -> None:
    from kd_core.model_card import card_metadata

    recipe = _recipe(tiny_teacher_dir, sst2_dir)
    with pytest.warns(UserWarning, match="chance"):
        report = run_train(recipe, tmp_path)
    meta = read_front_matter(tmp_path / "model" / CARD_FILE)
    assert meta["kd"]["role"] == "fine-tuned" and meta["kd"]["model"]["value"] == report["model"]["value"]
    assert meta["kd"]["steps"] == report["steps"]
    hub = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={"model": "org/some-encoder"})})
    assert card_metadata(hub, report, "fine-tuned", "run")["base_model"] == "org/some-encoder"
