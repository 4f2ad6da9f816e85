"""``kd analyze --task causal_lm``: per-token agreement of a student with its teacher, checked
against next-token predictions computed here one sequence at a time, without padding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kd_core import get_task
from kd_core.cli import build_cli
from kd_core.schema import DataFile, ModelSpec
from tests.models.tiny import WIKITEXT, tiny_gpt2, tiny_llama, wikitext_tokenizer


@pytest.fixture(autouse=True)
def _corpus_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "kd-cache"))


def _saved(model: torch.nn.Module, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _next_tokens(directory: Path, lines: int) -> list[torch.Tensor]:
    """Each packed sequence's most likely next tokens at its targets, one sequence at a time."""
    task, spec = get_task("causal_lm"), ModelSpec(model=str(directory))
    model = task.load_teacher(spec)
    data = task.read(DataFile(path=str(WIKITEXT), limit=lines), spec, 32, None, "--data")
    with torch.no_grad():
        return [model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].argmax(-1) for row in data]


def test_agreement_is_the_share_of_target_tokens_where_the_top_tokens_match(tmp_path: Path) -> None:
    tokenizer = wikitext_tokenizer()
    teacher = _saved(tiny_llama(len(tokenizer), seed=0), tokenizer, tmp_path / "teacher")
    student = _saved(tiny_llama(len(tokenizer), layers=2, seed=1), tokenizer, tmp_path / "student")
    result = CliRunner().invoke(build_cli(), ["analyze", "--task", "causal_lm", "-m", str(teacher), str(student),
                                              "-d", str(WIKITEXT), "--limit", "12", "--max-length", "32", "-o",
                                              str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "analysis.json").read_text())
    ours, theirs = _next_tokens(teacher, 12), _next_tokens(student, 12)
    same = torch.cat([a == b for a, b in zip(ours, theirs, strict=True)])
    assert report["tokens"] == len(same) and report["sequences"] == len(ours)
    table = report["comparisons"]["student-1"]
    assert table["agreement"] == pytest.approx(float(same.float().mean()))
    assert sum(table["counts"].values()) == len(same)
    assert set(report["models"]["teacher"]) >= {"perplexity", "accuracy", "baseline"}
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(ours) and json.loads(lines[0])["agreement"]["teacher"] == 1.0


def test_models_with_another_tokenizer_are_refused(tmp_path: Path) -> None:
    small, large = wikitext_tokenizer(300), wikitext_tokenizer(400)
    teacher = _saved(tiny_llama(len(small)), small, tmp_path / "teacher")
    other = _saved(tiny_gpt2(len(large)), large, tmp_path / "other")
    result = CliRunner().invoke(build_cli(), ["analyze", "--task", "causal_lm", "-m", str(teacher), str(other),
                                              "-d", str(WIKITEXT), "--limit", "6", "--max-length", "32", "-o",
                                              str(tmp_path / "out"), "-q"])
    assert result.exit_code == 1 and "share a tokenizer" in result.output, result.output
