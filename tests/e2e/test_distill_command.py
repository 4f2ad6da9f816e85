"""``kd distill`` end to end: the README recipe in one command, overrides, errors, kill and resume."""

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
README_RECIPE = ROOT / "examples" / "recipes" / "sst2_minilm.yaml"
SMALL = ["--set", "data.train.limit=600", "--set", "data.eval.limit=300", "--set", "training.num_steps=60",
         "--set", "training.ckpt_steps=20"]


def _kd(*args: str, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from kd_core.cli import main; main()", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KD_STRICT_PLUGINS": "1"})


@pytest.mark.slow
@pytest.mark.real_teacher
def test_the_readme_recipe_fine_tunes_its_teacher_then_distills_in_one_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = _kd("distill", str(README_RECIPE), "--output-dir", str(out), *SMALL)
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert "check passed" in stderr and "fine-tuned first" in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sequence_classification" and report["metric"] == "accuracy"
    teacher, student = report["teacher"], report["student"]
    # the teacher's head was trained: far above the majority class, and nothing says otherwise
    assert teacher["value"] > teacher["chance"] + 0.15 and "warnings" not in report
    trained = json.loads((out / "teacher" / "report.json").read_text())["model"]
    assert teacher["value"] == pytest.approx(trained["value"])
    assert student["retention"] == pytest.approx(student["value"] / teacher["value"], abs=1e-4)
    assert 0.5 < student["retention"] < 1.05
    assert teacher["params"] > 4 * student["params"]
    assert (out / "teacher" / "model" / "model.safetensors").is_file()
    assert not (out / "teacher" / "checkpoints").exists(), "a finished teacher stage keeps no checkpoints"
    config = json.loads((out / "student" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 128, 30522)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == \
        list(range(1, 61))
    # a rerun reuses the fine-tuned teacher instead of training it again
    before = (out / "teacher" / "model" / "model.safetensors").stat().st_mtime_ns
    rerun = _kd("distill", str(README_RECIPE), "--output-dir", str(out), *SMALL, "--set", "training.num_steps=2")
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-3000:]
    assert (out / "teacher" / "model" / "model.safetensors").stat().st_mtime_ns == before


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


@pytest.mark.slow
def test_a_teacher_fine_tuning_stage_killed_and_resumed_ends_bitwise_identical(
        tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    recipe = _tiny_recipe(tmp_path, tiny_teacher_dir, sst2_dir, steps=2)
    settings = yaml.safe_load(recipe.read_text())
    settings["teacher"]["finetune"] = {"num_epochs": 30, "learning_rate": 1e-3}
    recipe.write_text(yaml.safe_dump(settings))
    straight = _kd("distill", str(recipe), "-o", str(tmp_path / "straight"))
    killed_dir = tmp_path / "killed"
    victim = _kd("distill", str(recipe), "-o", str(killed_dir))
    deadline = time.monotonic() + 300
    while not any((killed_dir / "teacher" / "checkpoints").glob("step-*")):
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed_dir / "teacher" / "STAGE_COMPLETE").exists(), "the teacher finished before it could be killed"
    resumed = _kd("distill", str(recipe), "-o", str(killed_dir), "--resume")
    for process in (straight, resumed):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "teacher" / "model" / "model.safetensors"))
    b = load_file(str(killed_dir / "teacher" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (killed_dir / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 30 * 16 + 1)), "the teacher stage continued where it stopped"


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
