"""``kd suite``: every model fine-tuned on every task with the suite's settings, a table in
MiniLM's form, finished runs read back and changed models run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kd_core import ConfigError
from kd_core.cli import build_cli
from kd_core.suite import SuiteSpec, load_suite

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "examples" / "suites" / "downstream.yaml"


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> dict[str, Path]:
    """Two tiny base encoders of different widths (general students, as kd distill saves them)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folders = {}
    for name, width in (("wide", 32), ("narrow", 16)):
        torch.manual_seed(width)
        folder = tmp_path_factory.mktemp(name)
        BertModel(BertConfig(vocab_size=30522, hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=2 * width, max_position_embeddings=256)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
        folders[name] = folder
    return folders


def _small_suite(tmp_path: Path) -> Path:
    """The shipped suite at a tiny scale: a few rows and steps per task."""
    suite = yaml.safe_load(SUITE.read_text())
    for spec in suite["tasks"].values():
        spec["data"]["train"]["limit"] = 24
        spec["data"]["eval"]["limit"] = 16
        spec["training"] = {"batch_size": 8, "num_steps": 2, "learning_rate": 1.0e-4}
        for file in (spec["data"]["train"], spec["data"]["eval"]):
            file["path"] = str((SUITE.parent / file["path"]).resolve())
    suite["tasks"]["squad"]["data"]["max_length"] = 96
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_every_model_on_every_task_in_one_table(encoders: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    suite = _small_suite(tmp_path)
    models = ["--models", *(f"{name}={path}" for name, path in encoders.items())]
    output = tmp_path / "out"
    result = CliRunner().invoke(build_cli(), ["suite", str(suite), *models, "-o", str(output)])
    assert result.exit_code == 0, result.output
    table = json.loads((output / "suite.json").read_text())
    assert table["tasks"] == ["sst2", "cola", "wnut16", "squad"] and table["reference"] == "wide"
    for name in encoders:
        row = table["models"][name]
        assert set(row["tasks"]) == set(table["tasks"])
        assert set(row["tasks"]["squad"]["metrics"]) == {"f1", "exact_match"}
        values = [t["value"] for t in row["tasks"].values()]
        assert all(-1 <= v <= 1 for v in values) and row["average"] == pytest.approx(sum(values) / 4)
        report = json.loads((output / name / "cola" / "report.json").read_text())
        assert report["metric"] == "matthews" and row["tasks"]["cola"]["value"] == report["model"]["value"]
    assert table["models"]["wide"]["speedup"] == 1.0
    assert table["models"]["narrow"]["params"] < table["models"]["wide"]["params"]
    markdown = (output / "suite.md").read_text()
    assert "| narrow |" in markdown and "squad (f1/exact_match)" in markdown
    assert (output / "suite.png").stat().st_size > 0

    import kd_core.suite

    ran = []
    original = kd_core.suite.run_train
    monkeypatch.setattr(kd_core.suite, "run_train", lambda *a, **k: ran.append(a[1]) or original(*a, **k))
    again = CliRunner().invoke(build_cli(), ["suite", str(suite), *models, "-o", str(output)])
    assert again.exit_code == 0, again.output
    assert ran == [] and json.loads((output / "suite.json").read_text()) == table, "finished runs are read back"
    (encoders["narrow"] / "config.json").write_text((encoders["narrow"] / "config.json").read_text() + "\n")
    changed = CliRunner().invoke(build_cli(), ["suite", str(suite), *models, "-o", str(output), "--tasks", "sst2"])
    assert changed.exit_code == 0, changed.output
    assert ran == [output / "narrow" / "sst2"], "only the changed model runs again"


def test_a_suite_names_what_is_wrong(tmp_path: Path, encoders: dict[str, Path]) -> None:
    suite, _ = load_suite(_small_suite(tmp_path))
    with pytest.raises(ConfigError, match="suite: no task 'mnli'; its tasks are sst2, cola, wnut16, squad"):
        suite.recipe("mnli", str(encoders["wide"]))
    bad = SuiteSpec(tasks={"sst2": {**suite.tasks["sst2"], "teacher": {"model": "x", "num_labels": 2}}})
    with pytest.raises(ConfigError, match=r"teacher\.model: the suite's models come from --models"):
        bad.recipe("sst2", str(encoders["wide"]))
    result = CliRunner().invoke(build_cli(), ["suite", str(_small_suite(tmp_path)), "-m", "nameonly"])
    assert result.exit_code != 0 and "write it as NAME=PATH" in result.output
