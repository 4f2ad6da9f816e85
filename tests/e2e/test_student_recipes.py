"""Recipes that build students from the teacher: presets, ETD initializers and teacher-assistant chains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from kd_core.cli import build_cli

MINILM_MATCHES = [  # MiniLM: last-layer attention distributions and value relations
    {"layer_T": -1, "layer_S": -1, "feature": ["q", "k"], "loss": "attention_kl", "weight": 1},
    {"layer_T": -1, "layer_S": -1, "feature": "v", "loss": "value_relation_kl", "weight": 1},
]


def _recipe(tmp_path: Path, teacher: Path, sst2: Path, **sections) -> Path:
    recipe = {
        "task": "sequence_classification",
        "data": {"train": {"path": str(sst2 / "train.tsv"), "text": "sentence", "label": "label", "limit": 96},
                 "eval": {"path": str(sst2 / "dev.tsv"), "text": "sentence", "label": "label", "limit": 32},
                 "max_length": 24},
        "teacher": {"model": str(teacher), "num_labels": 2},
        "training": {"batch_size": 16, "num_steps": 4, "learning_rate": 1e-3, "seed": 0, "progress": False},
        "distillation": {"temperature": 2, "kd_loss_type": "kl", "intermediate_matches": MINILM_MATCHES},
        **sections,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _distill(*args: str) -> dict:
    result = CliRunner().invoke(build_cli(), ["distill", *args])
    assert result.exit_code == 0, result.output
    return result


def test_teacher_assistant_chain_distills_in_order_and_resumes_finished_stages(
        tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    recipe = _recipe(tmp_path, tiny_teacher_dir, sst2_dir,
                     assistants=[{"config": {"hidden_size": 32, "intermediate_size": 64}, "init": "etd_rand"}],
                     student={"config": {"num_hidden_layers": 2},
                              "init": {"name": "layer_copy", "layer_selection": "top"}})
    out = tmp_path / "out"
    _distill(str(recipe), "-o", str(out))
    assistant = json.loads((out / "assistant-1" / "student" / "config.json").read_text())
    student = json.loads((out / "student" / "config.json").read_text())
    assert (assistant["num_hidden_layers"], assistant["hidden_size"]) == (4, 32)  # teacher depth, student width
    assert (student["num_hidden_layers"], student["hidden_size"]) == (2, 32)
    assert len((out / "assistant-1" / "metrics.jsonl").read_text().splitlines()) == 4
    report = json.loads((out / "report.json").read_text())
    assert len(report["assistants"]) == 1
    for result in (*report["assistants"], report["student"]):
        assert result["retention"] == pytest.approx(result["value"] / report["teacher"]["value"], abs=1e-4)

    assistant_weights = load_file(str(out / "assistant-1" / "student" / "model.safetensors"))
    _distill(str(recipe), "-o", str(out), "--resume")
    assert len((out / "assistant-1" / "metrics.jsonl").read_text().splitlines()) == 4, "finished stage retrained"
    again = load_file(str(out / "assistant-1" / "student" / "model.safetensors"))
    assert all(torch.equal(assistant_weights[k], again[k]) for k in assistant_weights)


def test_etd_impt_with_options_and_a_bilstm_preset(tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    recipe = _recipe(tmp_path, tiny_teacher_dir, sst2_dir,
                     student={"config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64},
                              "init": {"name": "etd_impt", "num_batches": 2, "hidden_consistency": True}})
    _distill(str(recipe), "-o", str(tmp_path / "etd"))
    assert json.loads((tmp_path / "etd" / "student" / "config.json").read_text())["hidden_size"] == 32

    _distill(str(recipe), "-o", str(tmp_path / "rnn"), "--set", "student={preset: bilstm, config: {hidden_size: 16}}",
             "--set", "distillation.intermediate_matches=[]")
    config = json.loads((tmp_path / "rnn" / "student" / "config.json").read_text())
    assert (config["model_type"], config["cell"], config["hidden_size"]) == ("kd_birnn", "lstm", 16)
    report = json.loads((tmp_path / "rnn" / "report.json").read_text())
    assert report["student"]["params"] < report["teacher"]["params"]


def test_bad_initializer_options_are_reported(tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    recipe = _recipe(tmp_path, tiny_teacher_dir, sst2_dir,
                     student={"config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64},
                              "init": {"name": "etd_rand", "num_batchez": 2}})
    result = CliRunner().invoke(build_cli(), ["distill", str(recipe), "-o", str(tmp_path / "bad")])
    assert result.exit_code != 0 and "student.init 'etd_rand'" in result.output and "num_batchez" in result.output
