"""The example recipes run as written, at small scale (teachers replaced by tiny random ones)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kd_core.cli import build_cli
from tests.conftest import save_tiny_bert

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
SMALL = ["--set", "data.train.limit=48", "--set", "data.eval.limit=16", "--set", "training.num_steps=3",
         "--set", "data.max_length=24"]


def _distill(recipe: str, out: Path, *overrides: str) -> dict:
    result = CliRunner().invoke(build_cli(), ["distill", str(RECIPES / recipe), "-o", str(out), *SMALL, *overrides])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_sst2_example(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    out = tmp_path / "sst2"
    report = _distill("sst2_minilm.yaml", out, "--set", f"teacher.model={tiny_teacher_dir}", "--set",
                      "distillation.intermediate_matches.0.proj=[linear, 128, 64]", "--set",
                      "distillation.intermediate_matches.0.layer_T=4")
    assert report["metric"] == "accuracy" and report["student"]["retention"] is not None
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 3 and {"kd", "hard_label", "match0.hidden_mse"} <= set(steps[-1])


def test_multi_teacher_example(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    report = _distill("sst2_multi_teacher.yaml", tmp_path / "multi", "--set", f"teacher.0.model={tiny_teacher_dir}",
                      "--set", f"teacher.1.model={tiny_teacher_dir}", "--set",
                      "distillation.intermediate_matches.0.proj=[linear, 128, 64]", "--set",
                      "distillation.intermediate_matches.0.layer_T=4")
    assert set(report["teachers"]) == {"a", "b"} and report["student"]["retention"] is not None


def test_assistant_chain_example(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    report = _distill("sst2_assistant_chain.yaml", tmp_path / "chain", "--set", f"teacher.model={tiny_teacher_dir}",
                      "--set", "assistants.0.config={hidden_size: 32, intermediate_size: 64}",
                      "--set", "assistants.0.init.num_batches=2",
                      "--set", "student.config={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64}")
    assistant = json.loads((tmp_path / "chain" / "assistant-1" / "student" / "config.json").read_text())
    assert (assistant["num_hidden_layers"], assistant["hidden_size"]) == (4, 32)
    assert len(report["assistants"]) == 1


def _matthews(predicted: list[int], gold: list[int]) -> float:
    """Binary Matthews correlation from the confusion counts (Matthews 1975)."""
    tp = sum(p == g == 1 for p, g in zip(predicted, gold, strict=True))
    tn = sum(p == g == 0 for p, g in zip(predicted, gold, strict=True))
    fp = sum(p == 1 and g == 0 for p, g in zip(predicted, gold, strict=True))
    fn = sum(p == 0 and g == 1 for p, g in zip(predicted, gold, strict=True))
    denominator = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return 0.0 if denominator == 0 else (tp * tn - fp * fn) / denominator


def test_cola_example_scores_the_in_domain_and_out_of_domain_dev_sets(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "cola"
    report = _distill("cola.yaml", out, "--set", f"teacher.model={tiny_teacher_dir}",
                      "--set", "training.num_epochs=null", "--set", "data.extra_eval.out_of_domain.limit=16",
                      "--set", "student.init.num_batches=2", "--set", "teacher.finetune.num_epochs=1",
                      "--set", "student.config={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64}")
    assert report["metric"] == "matthews"
    cola = RECIPES.parent / "data" / "cola"
    # the recipe fine-tunes its teacher first: the teacher measured is the one in out/teacher
    for side, model_dir in (("teacher", out / "teacher" / "model"), ("student", out / "student")):
        for name, file in (("in_domain", "in_domain_dev.tsv"), ("out_of_domain", "out_of_domain_dev.tsv")):
            rows = [line.split("\t") for line in (cola / file).read_text().splitlines()[:16]]
            model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
            encoded = AutoTokenizer.from_pretrained(model_dir)([r[3] for r in rows], padding=True, truncation=True,
                                                              max_length=24, return_tensors="pt")
            with torch.no_grad():
                predicted = model(**encoded).logits.argmax(-1).tolist()
            expected = _matthews(predicted, [int(r[1]) for r in rows])
            value = report[side]["value"] if name == "in_domain" else report[side]["eval_sets"][name]["value"]
            assert value == pytest.approx(expected, abs=1e-6), (side, name)
    ood = report["student"]["eval_sets"]["out_of_domain"]
    teacher_ood = report["teacher"]["eval_sets"]["out_of_domain"]["value"]
    assert ood["retention"] == (None if teacher_ood == 0 else pytest.approx(ood["value"] / teacher_ood, abs=1e-4))


def test_textbrewer_example_runs_its_published_config_unchanged(tmp_path: Path, minilm_path: Path) -> None:
    from kd_core import DistillationConfig

    # TextBrewer's example distils a 12-layer, 768-wide BERT-base; a random one of that shape stands in
    teacher = save_tiny_bert(tmp_path / "bert-base-shape", minilm_path, seed=2, hidden_size=768,
                             num_hidden_layers=12, num_attention_heads=12, intermediate_size=64)
    out = tmp_path / "t4"
    report = _distill("textbrewer_t4_tiny.yaml", out, "--set", f"teacher.model={teacher}",
                      "--set", "training.num_epochs=null")
    published = DistillationConfig.from_json(RECIPES.parent / "textbrewer" / "t4_tiny_distill_config.json")
    ran = yaml.safe_load((out / "recipe.yaml").read_text())["distillation"]
    assert ran == published.to_dict() and ran["temperature"] == 8
    terms = set(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]))
    assert {f"match{i}.{'hidden_mse' if i < 5 else 'mmd'}" for i in range(10)} <= terms
    student = json.loads((out / "student" / "config.json").read_text())
    assert (student["num_hidden_layers"], student["hidden_size"], student["intermediate_size"]) == (4, 312, 1200)
    assert report["student"]["retention"] is not None


def test_the_trainer_script_distils_and_evaluates(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    script = RECIPES.parent / "scripts" / "trainer_distillation.py"
    done = subprocess.run([sys.executable, str(script), "--teacher", str(tiny_teacher_dir), "--output",
                           str(tmp_path / "run"), "--max-steps", "3", "--limit", "48"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_accuracy" in done.stdout
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    assert saved.config.num_hidden_layers == 2, "every other layer of the 4-layer teacher"
