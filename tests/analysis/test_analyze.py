"""``kd analyze`` on two tiny models: every prediction is what the model gives the text on its own,
the tables add up, and the figures are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kd_core.cli import build_cli
from tests.conftest import save_tiny_bert


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-student"), minilm_path, seed=5)


def test_analyze_writes_predictions_tables_and_figures(tmp_path: Path, tiny_teacher_dir: Path, student_dir: Path,
                                                       sst2_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "analysis"
    result = CliRunner().invoke(build_cli(), [
        "analyze", "--models", str(tiny_teacher_dir), str(student_dir), "--names", "teacher,student",
        "--data", str(sst2_dir / "dev.tsv"), "--limit", "40", "-o", str(out), "--examples", "3", "-q"])
    assert result.exit_code == 0, result.output
    assert "student vs teacher: agree" in result.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    report = json.loads((out / "analysis.json").read_text())
    assert len(rows) == report["examples"] == 40
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    for row in rows[:5]:
        with torch.no_grad():
            alone = torch.softmax(model(**tokenizer(row["text"], return_tensors="pt")).logits[0], -1)
        torch.testing.assert_close(torch.tensor(row["models"]["student"]["probabilities"]), alone, atol=1e-5, rtol=1e-4)
        assert row["models"]["student"]["predicted"] == int(alone.argmax())
    table = report["comparisons"]["student"]
    assert sum(table["counts"].values()) == 40
    right = {name: sum(r["models"][name]["predicted"] == r["gold"] for r in rows) for name in ("teacher", "student")}
    assert table["counts"]["both_right"] + table["counts"]["only_reference_right"] == right["teacher"]
    assert report["models"]["student"]["accuracy"] == pytest.approx(right["student"] / 40)
    agree = sum(r["models"]["teacher"]["predicted"] == r["models"]["student"]["predicted"] for r in rows) / 40
    confusion = table["confusion"]["counts"]
    assert sum(map(sum, confusion)) == 40 and sum(confusion[i][i] for i in range(2)) == round(agree * 40)
    assert table["agreement"] == pytest.approx(agree) == report["agreement"]["teacher"]["student"]
    for cell, shown in table["examples"].items():
        assert len(shown) == min(3, table["counts"][cell])
    wrong = table["examples"]["only_reference_right"]
    shown = [e["models"]["student"]["confidence"] for e in wrong]
    assert shown == sorted(shown, reverse=True)
    for figure in ("reliability.png", "confidence.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"


def test_models_can_be_given_one_option_each(tmp_path: Path, tiny_teacher_dir: Path, student_dir: Path,
                                            sst2_dir: Path) -> None:
    result = CliRunner().invoke(build_cli(), [
        "analyze", "--models", str(tiny_teacher_dir), "--models", str(student_dir), "--data",
        str(sst2_dir / "dev.tsv"), "--limit", "8", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "analysis.json").read_text())["models"]) == {"teacher", "student-1"}


def test_bad_requests_fail_with_a_message(tmp_path: Path, tiny_teacher_dir: Path, sst2_dir: Path) -> None:
    result = CliRunner().invoke(build_cli(), ["analyze", "--models", str(tiny_teacher_dir), str(tiny_teacher_dir),
                                              "--names", "a", "--data", str(sst2_dir / "dev.tsv"), "-o",
                                              str(tmp_path)])
    assert result.exit_code != 0 and "give 2 distinct names" in result.output


def test_runs_add_learning_curves_smoothed_over_20_steps(tmp_path: Path, tiny_teacher_dir: Path, student_dir: Path,
                                                         sst2_dir: Path) -> None:
    runs = []
    for name, scale in (("teacher-run", 1.0), ("student-run", 2.0)):
        run = tmp_path / name
        run.mkdir()
        records = [{"step": s, "epoch": s / 30, "kd": scale * s, "loss": scale * s + 1, "lr": 1e-4, "elapsed_s": s,
                    "examples_per_s": 32.0, **({"validation_accuracy": 0.5} if s % 10 == 0 else {})}
                   for s in range(1, 31)]  # the last record is scored, as a run with validation ends
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        runs.append(str(run))
    out = tmp_path / "analysis"
    result = CliRunner().invoke(build_cli(), [
        "analyze", "--models", str(tiny_teacher_dir), str(student_dir), "--data", str(sst2_dir / "dev.tsv"),
        "--limit", "8", "-o", str(out), "-q", "--runs", *runs])
    assert result.exit_code == 0, result.output
    training = json.loads((out / "analysis.json").read_text())["training"]
    mean_of_last_20 = sum(range(11, 31)) / 20  # steps 11..30
    assert training["teacher"] == {"steps": 30, "final": {"kd": mean_of_last_20, "loss": mean_of_last_20 + 1}}
    assert training["student-1"]["final"]["kd"] == pytest.approx(2 * mean_of_last_20)
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"

    missing = CliRunner().invoke(build_cli(), [
        "analyze", "--models", str(tiny_teacher_dir), "--data", str(sst2_dir / "dev.tsv"), "--limit", "8",
        "-o", str(out), "-q", "--runs", str(tmp_path)])
    assert missing.exit_code != 0 and "has no metrics.jsonl" in missing.output


def test_question_answering_models_are_compared_answer_by_answer(tmp_path: Path, tiny_qa_teacher: Path) -> None:
    from kd_core import get_task
    from kd_core.inference import RunSettings
    from kd_core.schema import DataFile, ModelSpec

    squad = Path(__file__).resolve().parents[2] / "examples" / "data" / "squad11" / "part-b.json"
    result = CliRunner().invoke(build_cli(), [
        "analyze", "--task", "question_answering", "--models", str(tiny_qa_teacher), str(tiny_qa_teacher),
        "--names", "teacher,same", "--data", str(squad), "-c", "question", "-c", "context", "-l", "answers",
        "--limit", "12", "--max-length", "128", "--output", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "analysis.json").read_text())
    task = get_task("question_answering")
    spec = ModelSpec(model=str(tiny_qa_teacher))
    data = DataFile(path=str(squad), text=["question", "context"], label="answers", limit=12)
    model = task.load_teacher(spec)
    evaluation = task.evaluate(model, task.adaptor(model), task.read(data, spec, 128, None, "--data"),
                               task.collator(spec), task.metrics, RunSettings(64))
    assert report["models"]["teacher"]["f1"] == pytest.approx(evaluation.values["f1"])
    same = report["comparisons"]["same"]
    assert same["agreement"] == 1.0 == same["f1_with_reference"], "a model agrees with itself on every answer"
    assert same["counts"]["only_model_right"] == same["counts"]["only_reference_right"] == 0
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[0]["answers"]["teacher"] == evaluation.predictions[0]
    assert rows[0]["question"] and rows[0]["references"] == evaluation.references[0]
