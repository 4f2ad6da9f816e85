"""``kd distill`` end to end: the issue's recipe as written, overrides, errors, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from kd_core.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]
SHARED_SST2 = ROOT.parent / "shared" / "data" / "sst2"

ISSUE_RECIPE = """\
task: sequence_classification
data:
  train: {path: ../shared/data/sst2/train.tsv, text: sentence, label: label, limit: 512}
  eval: {path: ../shared/data/sst2/dev.tsv, text: sentence, label: label, limit: 256}
  max_length: 48
teacher: {model: TEACHER, num_labels: 2}
student: {config: {num_hidden_layers: 2, hidden_size: 128, num_attention_heads: 2, intermediate_size: 512}}
training: {batch_size: 16, num_steps: 40, learning_rate: 1.0e-4, ckpt_steps: 4, seed: 0, device: cpu}
distillation:
  temperature: 4
  kd_loss_type: ce
  hard_label_weight: 0.5
  intermediate_matches:
    - {layer_T: 6, layer_S: 2, feature: hidden, loss: hidden_mse, weight: 1, proj: [linear, 128, 384]}
eval: {metric: accuracy}
"""


def _kd(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from kd_core.cli import main; main()", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KD_STRICT_PLUGINS": "1"})


@pytest.mark.slow
@pytest.mark.real_teacher
def test_the_issue_recipe_runs_as_written(tmp_path: Path, minilm_path: Path) -> None:
    if not SHARED_SST2.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(ISSUE_RECIPE.replace("TEACHER", str(minilm_path)))
    process = _kd("distill", str(recipe), "--output-dir", str(tmp_path / "out"))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sequence_classification" and report["metric"] == "accuracy"
    for side in ("teacher", "student"):
        assert set(report[side]) >= {"value", "params", "latency_ms"}
        assert 0 <= report[side]["value"] <= 1 and report[side]["latency_ms"] > 0
    student, teacher = report["student"], report["teacher"]
    assert student["retention"] == pytest.approx(student["value"] / teacher["value"], abs=1e-4)
    assert report["teacher"]["params"] > 4 * report["student"]["params"]
    assert (out / "student" / "model.safetensors").is_file() and (out / "student" / "config.json").is_file()
    config = json.loads((out / "student" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 128, 30522)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 41))
    assert len(list((out / "checkpoints").iterdir())) == 10  # every 4 of 40 steps


def _tiny_recipe(tmp_path: Path, teacher: Path, sst2: Path, steps: int) -> Path:
    recipe = {
        "task": "sequence_classification",
        "data": {"train": {"path": str(sst2 / "train.tsv"), "text": "sentence", "label": "label", "limit": 256},
                 "eval": {"path": str(sst2 / "dev.tsv"), "text": "sentence", "label": "label", "limit": 64},
                 "max_length": 32},
        "teacher": {"model": str(teacher), "num_labels": 2},
        "student": {"config": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                               "intermediate_size": 64, "hidden_dropout_prob": 0.1}},
        "training": {"batch_size": 16, "num_steps": steps, "ckpt_steps": 5, "learning_rate": 1e-3,
                     "seed": 3, "progress": False},
        "distillation": {"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 0.5,
                         "intermediate_matches": [{"layer_T": 4, "layer_S": 2, "feature": "hidden",
                                                   "loss": "cos", "weight": 1, "proj": ["tanh", 32, 64]}]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_killed_run_resumed_with_resume_ends_bitwise_identical(tmp_path: Path, tiny_teacher_dir: Path,
                                                               sst2_dir: Path) -> None:
    steps = 300
    recipe = _tiny_recipe(tmp_path, tiny_teacher_dir, sst2_dir, steps)
    straight = _kd("distill", str(recipe), "-o", str(tmp_path / "straight"))
    killed_dir = tmp_path / "killed"
    victim = _kd("distill", str(recipe), "-o", str(killed_dir))
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step-00000010").exists():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed_dir / "report.json").exists(), "the run finished before it could be killed"
    last = sorted((killed_dir / "checkpoints").iterdir())[-1].name
    assert int(last.split("-")[1]) < steps
    resumed = _kd("distill", str(recipe), "-o", str(killed_dir), "--resume")
    for process in (straight, resumed):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "student" / "model.safetensors"))
    b = load_file(str(killed_dir / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps_logged = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


def test_overrides_and_errors_through_the_cli(tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    recipe = _tiny_recipe(tmp_path, tiny_teacher_dir, sst2_dir, steps=50)
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["distill", str(recipe), "-o", str(tmp_path / "o"),
                                         "--set", "training.num_steps=3", "--set", "training.ckpt_steps=2"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "o" / "recipe.yaml").read_text())
    assert saved["training"]["num_steps"] == 3
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 3

    result = runner.invoke(build_cli(), ["distill", str(recipe), "--set", "task=sequence_clasification"])
    assert result.exit_code != 0
    assert "unknown task 'sequence_clasification'" in result.output
    assert "Did you mean 'sequence_classification'?" in result.output

    result = runner.invoke(build_cli(), ["distill", str(recipe), "--set", "training.batch_sise=4"])
    assert result.exit_code != 0
    assert "training.batch_sise: unknown field 'batch_sise'; did you mean 'batch_size'?" in result.output

    result = runner.invoke(build_cli(), ["distill", str(recipe), "--set", "data.train.path=nowhere.tsv",
                                         "-o", str(tmp_path / "p")])
    assert result.exit_code != 0
    assert "data.train.path: file 'nowhere.tsv' not found" in result.output
