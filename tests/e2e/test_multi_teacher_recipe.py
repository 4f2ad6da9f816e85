"""A recipe with several teachers: kd distill runs a MultiTeacherDistiller and reports each teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kd_core.cli import build_cli
from tests.conftest import save_tiny_bert


def test_recipe_with_two_named_teachers(tmp_path: Path, tiny_teacher_dir: Path, minilm_path: Path,
                                        sst2_dir: Path) -> None:
    second = save_tiny_bert(tmp_path / "second", minilm_path, seed=2, hidden_size=64, num_hidden_layers=4,
                            num_attention_heads=4, intermediate_size=128)
    recipe = {
        "task": "sequence_classification",
        "data": {"train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label", "limit": 64},
                 "eval": {"path": str(sst2_dir / "dev.tsv"), "text": "sentence", "label": "label", "limit": 32},
                 "max_length": 24},
        "teacher": [{"model": str(tiny_teacher_dir), "name": "first"}, {"model": str(second), "name": "second"}],
        "student": {"config": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
                               "intermediate_size": 64}},
        "training": {"batch_size": 16, "num_steps": 3, "seed": 0, "progress": False},
        "distillation": {"kd_loss_type": "kl", "teacher_ensemble": "probabilities", "teacher_weights": [2, 1],
                         "intermediate_matches": [{"layer_T": -1, "layer_S": -1, "feature": "v",
                                                   "loss": "value_relation_kl", "teacher": "second"}]},
    }
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(build_cli(), ["distill", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["teachers"]) == {"first", "second"}
    assert report["teacher"] == report["teachers"]["first"]
    assert report["teachers"]["second"]["params"] == report["teachers"]["first"]["params"]
    terms = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"kd", "match0.value_relation_kl"} <= set(terms)

    recipe["distillation"]["intermediate_matches"][0]["teacher"] = "third"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(build_cli(), ["distill", str(path), "-o", str(tmp_path / "bad")])
    assert result.exit_code != 0 and "'third' is not one of the teachers (first, second)" in result.output
    result = CliRunner().invoke(build_cli(), ["train", str(path), "-o", str(tmp_path / "train")])
    assert result.exit_code != 0 and "kd train fine-tunes one teacher" in result.output


@pytest.mark.parametrize("names", [["a", "a"]])
def test_teacher_names_must_be_unique(names: list[str]) -> None:
    from kd_core import ConfigError
    from kd_core.schema import Recipe

    with pytest.raises(ConfigError, match="names must be unique"):
        Recipe.from_dict({"task": "t", "data": {"train": {"path": "x", "text": "s", "label": "l"}},
                          "teacher": [{"model": "m", "name": n} for n in names], "training": {"num_steps": 1}})
