"""A multi-task recipe: one student with a head per task, distilled from each task's teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kd_core.cli import build_cli
from kd_core.model_card import read_front_matter
from tests.conftest import save_tiny_bert


def test_two_tasks_one_student(tmp_path: Path, tiny_teacher_dir: Path, minilm_path: Path, sst2_dir: Path) -> None:
    # A second task from the same sentences: three length classes
    rows = [line.split("\t") for line in (sst2_dir / "train.tsv").read_text().splitlines()[1:97]]
    lengths = "sentence\tlabel\n" + "".join(f"{s}\t{min(len(s.split()) // 8, 2)}\n" for s, _ in rows)
    (tmp_path / "lengths.tsv").write_text(lengths)
    three = save_tiny_bert(tmp_path / "three", minilm_path, seed=3, num_labels=3, hidden_size=64,
                           num_attention_heads=4, num_hidden_layers=4, intermediate_size=128)
    recipe = {
        "task": "sequence_classification",
        "tasks": {
            "sentiment": {"teacher": {"model": str(tiny_teacher_dir)},
                          "data": {"train": {"path": str(sst2_dir / "train.tsv"), "text": "sentence", "label": "label",
                                             "limit": 64},
                                   "eval": {"path": str(sst2_dir / "dev.tsv"), "text": "sentence", "label": "label",
                                            "limit": 32}, "max_length": 24}},
            "length": {"teacher": {"model": str(three)}, "eval": {"metric": "macro_f1"},
                       "data": {"train": {"path": str(tmp_path / "lengths.tsv"), "text": "sentence", "label": "label"},
                                "eval": {"path": str(tmp_path / "lengths.tsv"), "text": "sentence", "label": "label",
                                         "limit": 32}, "max_length": 24}},
        },
        "student": {"config": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
                               "intermediate_size": 64}},
        "training": {"batch_size": 16, "num_steps": 6, "seed": 0, "progress": False},
        "distillation": {"kd_loss_type": "kl", "hard_label_weight": 0.5, "intermediate_matches": [
            {"layer_T": -1, "layer_S": -1, "feature": ["q", "k"], "loss": "attention_kl"}]},
    }
    path = tmp_path / "multi-task.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(build_cli(), ["distill", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["tasks"]) == {"sentiment", "length"}
    assert report["tasks"]["length"]["metric"] == "macro_f1"
    for entry in report["tasks"].values():
        assert entry["student"]["retention"] == round(entry["student"]["value"] / entry["teacher"]["value"], 4)
    terms = set().union(*(json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()))
    assert {"sentiment.kd", "length.kd", "sentiment.match0.attention_kl", "length.hard_label"} <= terms

    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "student").eval()
    batch = {"input_ids": torch.tensor([[101, 2023, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    assert student(**batch, task="length").logits.shape == (1, 3)
    assert student(**batch, task="sentiment").logits.shape == (1, 2)

    card = read_front_matter(tmp_path / "out" / "student" / "README.md")
    results = {r["task"]["name"]: r for r in card["model-index"][0]["results"]}
    assert set(results) == {"sentiment", "length"}
    value = report["tasks"]["length"]["student"]["value"]
    assert results["length"]["metrics"][0] == {"type": "macro_f1", "value": value,
                                               "name": f"length macro_f1 ({tmp_path / 'lengths.tsv'})"}
    assert card["kd"]["teacher"] == {"sentiment": str(tiny_teacher_dir), "length": str(three)}
    assert "| length | macro_f1 |" in (tmp_path / "out" / "student" / "README.md").read_text()


def test_a_recipe_gives_one_task_or_several_not_both() -> None:
    from kd_core import ConfigError
    from kd_core.schema import Recipe

    task = {"data": {"train": {"path": "x", "text": "s", "label": "l"}}, "teacher": {"model": "m"}}
    base = {"task": "sequence_classification", "training": {"num_steps": 1}}
    with pytest.raises(ConfigError, match="gives data and teacher inside each of its tasks"):
        Recipe.from_dict(base | task | {"tasks": {"a": task}})
    with pytest.raises(ConfigError, match=r"give data and teacher .* or tasks"):
        Recipe.from_dict(base | {"data": task["data"]})
    with pytest.raises(ConfigError, match="teacher-assistant chains take one task"):
        Recipe.from_dict(base | {"tasks": {"a": task}, "assistants": [{"config": {}}]})
