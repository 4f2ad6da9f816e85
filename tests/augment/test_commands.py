"""``kd augment``: each subcommand writes its file, reports its count, resumes (a rerun with the
same arguments changes nothing) and refuses other settings; the labelled file feeds a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kd_core.cli import build_cli
from kd_core.features import TEACHER_LOGITS


def _kd(*args: str) -> str:
    result = CliRunner().invoke(build_cli(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def train_tsv(sst2_dir: Path) -> Path:
    return sst2_dir / "train.tsv"


def test_rules_then_label(train_tsv: Path, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    grown = tmp_path / "grown.jsonl"
    out = _kd("augment", "rules", train_tsv, "-c", "sentence", "-o", grown, "--limit", "30", "-a", "masking",
              "-O", "p=0.3", "--n", "4", "-q")
    rows = _rows(grown)
    assert f"{grown}: {len(rows)} rows, {len(rows) - 30} of them new, from 30 input rows" in out
    assert 30 < len(rows) <= 150 and sum(not r["augmented"] for r in rows) == 30
    assert _kd("augment", "rules", train_tsv, "-c", "sentence", "-o", grown, "--limit", "30", "-a", "masking",
               "-O", "p=0.3", "--n", "4", "-q") == out, "a finished file is left as it is"
    result = CliRunner().invoke(build_cli(), ["augment", "rules", str(train_tsv), "-c", "sentence", "-o", str(grown),
                                              "--limit", "30", "-a", "masking", "--n", "4", "-q"])
    assert result.exit_code != 0 and "written with other settings" in result.output
    labelled = tmp_path / "labelled.jsonl"
    out = _kd("augment", "label", grown, "-c", "sentence", "-o", labelled, "--teacher", tiny_teacher_dir, "-q")
    assert f"{len(rows)} rows labelled" in out
    assert all(len(r[TEACHER_LOGITS]) == 2 for r in _rows(labelled))


def test_a_plain_text_corpus_needs_no_column(train_tsv: Path, tiny_teacher_dir: Path, tmp_path: Path) -> None:
    sentences = [line.split("\t")[0] for line in train_tsv.read_text().splitlines()[1:13]]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    grown = tmp_path / "grown.jsonl"
    _kd("augment", "rules", corpus, "-o", grown, "-a", "masking", "--n", "2", "-q")
    rows = _rows(grown)
    assert [r["text"] for r in rows if not r["augmented"]] == sentences
    labelled = tmp_path / "labelled.jsonl"
    _kd("augment", "label", corpus, "-o", labelled, "--teacher", tiny_teacher_dir, "-q")
    assert [r["text"] for r in _rows(labelled)] == sentences


def test_mlm_and_generate(train_tsv: Path, mlm_dir: Path, tiny_gpt2: Path, tmp_path: Path) -> None:
    out = _kd("augment", "mlm", train_tsv, "-c", "sentence", "-o", tmp_path / "mlm.jsonl", "--limit", "5",
              "--model", mlm_dir, "--n", "3", "--drop-original", "-q")
    assert "from 5 input rows" in out and all(r["augmented"] for r in _rows(tmp_path / "mlm.jsonl"))
    out = _kd("augment", "generate", train_tsv, "-c", "sentence", "-o", tmp_path / "gen.jsonl", "--limit", "40",
              "--model", tiny_gpt2, "--n", "12", "--batch-size", "6", "-O", "max_new_tokens=12", "-q")
    assert "12 of them new" in out


def test_bad_input_fails_with_a_message(train_tsv: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["augment", "rules", str(train_tsv), "-c", "text", "-o",
                                         str(tmp_path / "x.jsonl"), "--limit", "3"])
    assert result.exit_code != 0 and "has no column(s) text" in result.output
    result = runner.invoke(build_cli(), ["augment", "rules", str(train_tsv), "-c", "sentence", "-o",
                                         str(tmp_path / "x.jsonl"), "-a", "no_such"])
    assert result.exit_code != 0 and "unknown augmenter 'no_such'" in result.output
    result = runner.invoke(build_cli(), ["augment", "rules", str(train_tsv), "-c", "sentence", "-o",
                                         str(tmp_path / "x.jsonl"), "-O", "oops"])
    assert result.exit_code != 0 and "KEY=VALUE" in result.output
