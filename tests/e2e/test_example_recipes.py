"""The example recipes run as written, at small scale (teachers replaced by tiny random ones)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from kd_core.cli import build_cli

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
SMALL = ["--set", "data.train.limit=48", "--set", "data.eval.limit=16", "--set", "training.num_steps=3",
         "--set", "data.max_length=24"]


def _distill(recipe: str, out: Path, *overrides: str) -> dict:
    result = CliRunner().invoke(build_cli(), ["distill", str(RECIPES / recipe), "-o", str(out), *SMALL, *overrides])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_multi_teacher_example(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    report = _distill("sst2_multi_teacher.yaml", tmp_path / "multi", "--set", f"teacher.0.model={tiny_teacher_dir}",
                      "--set", f"teacher.1.model={tiny_teacher_dir}", "--set",
                      "distillation.intermediate_matches.0.proj=[linear, 128, 64]", "--set",
                      "distillation.intermediate_matches.0.layer_T=4")
    assert set(report["teachers"]) == {"a", "b"} and report["student"]["retention"] is not None


def test_assistant_chain_example(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    report = _distill("sst2_assistant_chain.yaml", tmp_path / "chain", "--set", f"teacher.model={tiny_teacher_dir}",
                      "--set", "assistants.0.config={hidden_size: 32, intermediate_size: 64}",
                      "--set", "student.config={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64}")
    assistant = json.loads((tmp_path / "chain" / "assistant-1" / "student" / "config.json").read_text())
    assert (assistant["num_hidden_layers"], assistant["hidden_size"]) == (4, 32)
    assert len(report["assistants"]) == 1
