"""A recipe's ``data.augment``: kd distill grows the training data, labels it with the teacher,
trains on the stored logits, reuses finished transfer files on a rerun, reads a prepared file, and
refuses what it cannot do (gold-label terms, several teachers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kd_core.cli import build_cli
from kd_core.features import TEACHER_LOGITS


def _recipe(tmp_path: Path, teacher_dir: Path, sst2: Path, augment: dict, **sections) -> Path:
    recipe = {
        "task": "sequence_classification",
        "data": {"train": {"path": str(sst2 / "train.tsv"), "text": "sentence", "label": "label", "limit": 24},
                 "eval": {"path": str(sst2 / "dev.tsv"), "text": "sentence", "label": "label", "limit": 16},
                 "max_length": 24, "augment": augment},
        "teacher": {"model": str(teacher_dir), "num_labels": 2},
        "student": {"preset": "bilstm", "config": {"hidden_size": 16}},
        "training": {"batch_size": 16, "num_steps": 3, "learning_rate": 1e-3, "seed": 0, "progress": False},
        "distillation": {"temperature": 4, "kd_loss_type": "mse", "hard_label_weight": 0},
        **sections,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(*args: str):
    return CliRunner().invoke(build_cli(), ["distill", *map(str, args)])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_distill_grows_labels_and_trains_on_the_transfer_set(tmp_path: Path, tiny_teacher_dir: Path,
                                                             sst2_dir: Path) -> None:
    recipe = _recipe(tmp_path, tiny_teacher_dir, sst2_dir, {"augmenter": {"name": "masking", "p": 0.3}, "n": 3})
    out = tmp_path / "out"
    result = _run(recipe, "-o", out)
    assert result.exit_code == 0, result.output
    grown, labelled = _rows(out / "transfer" / "augmented.jsonl"), _rows(out / "transfer" / "labelled.jsonl")
    assert 24 < len(grown) <= 24 * 4 and len(labelled) == len(grown)
    assert [r["sentence"] for r in labelled] == [r["sentence"] for r in grown]
    assert all(len(r[TEACHER_LOGITS]) == 2 for r in labelled)
    assert json.loads((out / "report.json").read_text())["student"]["value"] >= 0
    before = {p.name: p.read_bytes() for p in (out / "transfer").iterdir()}
    assert _run(recipe, "-o", out).exit_code == 0
    assert {p.name: p.read_bytes() for p in (out / "transfer").iterdir()} == before, "finished files are reused"

    prepared = _recipe(tmp_path, tiny_teacher_dir, sst2_dir, {"path": str(out / "transfer" / "labelled.jsonl")})
    second = tmp_path / "second"
    assert _run(prepared, "-o", second).exit_code == 0
    assert not (second / "transfer").exists(), "a labelled file is used as it is"


def test_what_a_transfer_set_cannot_do_is_refused(tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    augment = {"augmenter": "deleting", "n": 2}
    hard = _recipe(tmp_path, tiny_teacher_dir, sst2_dir, augment,
                   distillation={"temperature": 4, "kd_loss_type": "mse", "hard_label_weight": 1})
    result = _run(hard, "-o", tmp_path / "a")
    assert result.exit_code != 0 and "set distillation.hard_label_weight: 0" in result.output
    several = _recipe(tmp_path, tiny_teacher_dir, sst2_dir, augment,
                      teacher=[{"model": str(tiny_teacher_dir), "num_labels": 2, "name": "a"},
                               {"model": str(tiny_teacher_dir), "num_labels": 2, "name": "b"}])
    result = _run(several, "-o", tmp_path / "b")
    assert result.exit_code != 0 and "labelled by one teacher" in result.output
    both = _recipe(tmp_path, tiny_teacher_dir, sst2_dir, {"augmenter": "deleting", "path": "x.jsonl"})
    result = _run(both, "-o", tmp_path / "c")
    assert result.exit_code != 0 and "not both" in result.output


def test_the_example_recipe_runs_at_small_scale(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    pytest.importorskip("spacy", reason="the example's tang rules tag words with spaCy (kd-augment[pos])")
    recipe = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "sst2_augmented.yaml"
    out = tmp_path / "example"
    result = _run(recipe, "-o", out, "--set", f"teacher.model={tiny_teacher_dir}", "--set", "data.train.limit=12",
                  "--set", "data.eval.limit=16", "--set", "data.augment.n=2", "--set", "training.num_epochs=1",
                  "--set", "student.config.hidden_size=16")
    assert result.exit_code == 0, result.output
    labelled = _rows(out / "transfer" / "labelled.jsonl")
    assert sum(not r["augmented"] for r in labelled) == 12, "every original row is kept"
    assert 12 < len(labelled) <= 36
    assert json.loads((out / "report.json").read_text())["student"]["retention"] is not None


def test_an_unlabelled_transfer_set_is_labelled_while_training(tmp_path: Path, tiny_teacher_dir: Path,
                                                               sst2_dir: Path) -> None:
    # ETD's Taylor importance needs gold labels, so it reads data.train, not the grown rows
    recipe = _recipe(tmp_path, tiny_teacher_dir, sst2_dir,
                     {"augmenter": {"name": "masking", "p": 0.3}, "n": 3, "label": False},
                     student={"config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64},
                              "init": {"name": "etd_impt", "num_batches": 2}},
                     training={"batch_size": 16, "num_epochs": 1, "learning_rate": 1e-3, "seed": 0,
                               "progress": False})
    out = tmp_path / "out"
    result = _run(recipe, "-o", out)
    assert result.exit_code == 0, result.output
    assert not (out / "transfer" / "labelled.jsonl").exists()
    grown = _rows(out / "transfer" / "augmented.jsonl")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(grown) > 24 and steps == list(range(1, -(-len(grown) // 16) + 1)), "one epoch of the grown rows"
