"""``kd demo --quick``: the embedded default runs, writes its report and plots, and reuses its teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kd_core.cli import build_cli

pytestmark = [pytest.mark.slow, pytest.mark.real_teacher]


def test_kd_demo_quick_prints_the_table_and_writes_report_and_plots(tmp_path: Path, minilm_path: Path) -> None:
    results = tmp_path / "results" / "demo.json"
    result = CliRunner().invoke(build_cli(), ["demo", "--quick", "-o", str(tmp_path), "--results", str(results)])
    assert result.exit_code == 0, result.output
    assert "MiniLM-L6 teacher" in result.output and "bert-3x144 (BERT 3x144, ETD)" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["quick"] is True and report["metric"] == "accuracy"
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    teacher = report["teacher"]
    assert set(teacher) >= {"value", "params", "latency_ms", "disk_mib"} and teacher["value"] > 0.7
    student = report["students"]["bert-3x144"]
    assert student["retention"] == pytest.approx(student["value"] / teacher["value"], abs=1e-4)
    assert student["params_ratio"] == pytest.approx(teacher["params"] / student["params"], abs=0.01)
    assert student["params"] < teacher["params"] / 4
    weights = tmp_path / "bert-3x144" / "student" / "model.safetensors"
    assert student["disk_mib"] == pytest.approx(weights.stat().st_size / 2**20, abs=0.01)
    config = json.loads((tmp_path / "bert-3x144" / "student" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (3, 144, 12)
    terms = set(json.loads((tmp_path / "bert-3x144" / "metrics.jsonl").read_text().splitlines()[-1]))
    assert {"kd", "match0.attention_kl", "match1.value_relation_kl"} <= terms
    for figure in report["plots"]:
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG", figure
    assert set(report["plots"]) >= {"learning_curves.png", "confidence.png"}
    analysis = json.loads((tmp_path / "analysis.json").read_text())
    assert analysis["models"]["bert-3x144"]["value"] == pytest.approx(student["value"], abs=1e-6)
    assert report["analysis"]["agreement_with_teacher"]["bert-3x144"] == pytest.approx(
        analysis["comparisons"]["bert-3x144"]["agreement"], abs=1e-4)
    assert json.loads(results.read_text()) == report, "--results holds the report the README table is made from"

    again = CliRunner().invoke(build_cli(), ["demo", "--quick", "-o", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "teacher: reusing the fine-tuned MiniLM" in again.output
