"""``kd demo --quick``: the embedded default runs and writes its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kd_core.cli import build_cli

pytestmark = [pytest.mark.slow, pytest.mark.real_teacher]


def test_kd_demo_quick_prints_the_table_and_writes_report_json(tmp_path: Path, minilm_path: Path) -> None:
    result = CliRunner().invoke(build_cli(), ["demo", "--quick", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "teacher MiniLM-L6" in result.output and "student bert-2x128" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["quick"] is True and report["metric"] == "accuracy"
    teacher = report["teacher"]
    assert set(teacher) >= {"value", "params", "latency_ms"} and teacher["value"] > 0.7
    student = report["students"]["bert-2x128"]
    assert student["retention"] == pytest.approx(student["value"] / teacher["value"], abs=1e-4)
    assert student["params"] < teacher["params"] / 4
    assert (tmp_path / "bert-2x128" / "student" / "model.safetensors").is_file()

    again = CliRunner().invoke(build_cli(), ["demo", "--quick", "-o", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "teacher: reusing the fine-tuned MiniLM" in again.output
