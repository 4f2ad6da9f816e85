"""SQuAD: reading its files into questions, and its metrics.

Files: SQuAD v1.1 / v2.0 JSON (``data -> paragraphs -> context, qas -> id, question, answers``,
v2.0's ``is_impossible``), or JSON lines with a question, a context and the answers (a list of
``{text, answer_start}``, or Hugging Face datasets' ``{"text": [...], "answer_start": [...]}``).

Metrics (registered as ``exact_match``, ``f1``, ``has_answer_f1`` and ``no_answer_f1``) follow
the official evaluation scripts: answers normalised (lower case, punctuation and the articles
a/an/the removed, whitespace collapsed), the maximum over a question's reference answers, the
mean over questions. An unanswerable question's only reference is the empty answer. Values are
fractions in [0, 1] (SQuAD's tables print them times 100).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_core.data import read_records
from kd_core.errors import ConfigError
from kd_core.metrics import Metric


@dataclass
class Question:
    """One question about one context, with its reference answers (none: unanswerable)."""

    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)
    """The character offset of each answer in ``context``."""
    teacher_logits: list[Any] | None = None
    """Stored teacher logits of each of the question's windows (a file labelled by ``kd augment
    label``), as JSON values."""


def read_questions(path: Path, question: str = "question", context: str = "context", answers: str | None = "answers",
                   limit: int | None = None, skip: int = 0, where: str = "data",
                   teacher_logits: str | None = None) -> list[Question]:
    """The questions of a SQuAD JSON file (v1.1 or v2.0) or a JSON-lines file, in file order,
    ``skip`` passed over and at most ``limit`` kept. ``answers`` names the answers field (None:
    the questions are read without answers); ``teacher_logits`` the field of stored teacher
    logits (a list per question, one entry per window)."""
    records = _squad_records(path, where)
    if records is None:
        records = read_records(path, None if limit is None else skip + limit, "jsonl", where)
    records = records[skip:][:limit] if limit is not None else records[skip:]
    questions = []
    for number, record in enumerate(records, start=skip + 1):
        row = f"{where}: {path.name} question {number}"
        missing = [name for name in (question, context) if name not in record]
        if missing:
            raise ConfigError(f"{row} has no field {missing[0]!r} (it has {sorted(record)}); name the question and "
                              f"context fields in data.text: [QUESTION, CONTEXT]")
        stored = None
        if teacher_logits is not None:
            stored = record.get(teacher_logits)
            if not isinstance(stored, list) or not stored:
                raise ConfigError(f"{row} has no list of per-window teacher logits in field {teacher_logits!r}; "
                                  "label the file with kd augment label --task question_answering")
        texts, starts = _answers(record.get(answers) if answers is not None else None, row)
        text = str(record[context])
        for answer, start in zip(texts, starts, strict=True):
            if text[start:start + len(answer)] != answer:
                raise ConfigError(f"{row}: answer {answer!r} is not at character {start} of its context "
                                  f"(found {text[start:start + len(answer)]!r})")
        questions.append(Question(str(record.get("id", number)), str(record[question]), text, texts, starts, stored))
    return questions


def read_contexts(path: Path, where: str = "data") -> list[str] | None:
    """The context paragraphs of an official SQuAD JSON file, each once and in file order, or
    None for another file (unlabelled text for task-agnostic distillation)."""
    document = _squad_document(path)
    if document is None:
        return None
    contexts = list(dict.fromkeys(paragraph["context"] for article in document["data"]
                                  for paragraph in article.get("paragraphs", [])))
    if not contexts:
        raise ConfigError(f"{where}: {path.name} is a SQuAD file without paragraphs")
    return contexts


def _squad_document(path: Path) -> dict[str, Any] | None:
    """An official SQuAD JSON file's document (``{"data": [...]}``), or None for another file."""
    if path.suffix != ".json":
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # JSON lines under a .json name
    return document if isinstance(document, dict) and "data" in document else None


def _squad_records(path: Path, where: str) -> list[dict[str, Any]] | None:
    """The questions of an official SQuAD JSON file as flat records, or None for another file."""
    document = _squad_document(path)
    if document is None:
        return None
    records = []
    for article in document["data"]:
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                impossible = qa.get("is_impossible", False)
                records.append({"id": qa.get("id"), "title": article.get("title"), "question": qa["question"],
                                "context": paragraph["context"], "answers": [] if impossible else qa["answers"]})
    if not records:
        raise ConfigError(f"{where}: {path.name} is a SQuAD file without questions")
    return records


def _answers(value: Any, where: str) -> tuple[list[str], list[int]]:
    if value is None:
        return [], []
    if isinstance(value, dict):  # Hugging Face datasets: {"text": [...], "answer_start": [...]}
        return [str(t) for t in value.get("text", [])], [int(s) for s in value.get("answer_start", [])]
    if isinstance(value, list) and all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in value):
        return [str(a["text"]) for a in value], [int(a["answer_start"]) for a in value]
    raise ConfigError(f"{where}: answers must be a list of {{text, answer_start}} or {{text: [...], "
                      f"answer_start: [...]}}, got {str(value)[:80]}")


PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def references(answers: list[str]) -> list[str]:
    """The answers a prediction is scored against: the normalised-non-empty ones, or the empty
    answer alone for an unanswerable question (as SQuAD v2.0's script does)."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def exact_score(prediction: str, reference: str) -> float:
    """1 when the normalised answers are equal."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction: str, reference: str) -> float:
    """Token-overlap F1 of the normalised answers (1 when both are empty, 0 when one is)."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _mean_best(score: Callable[[str, str], float], keep: Callable[[list[str]], bool] = lambda refs: True):
    def metric(predictions: list[str], answers: list[list[str]]) -> float:
        scores = [max(score(p, r) for r in references(a))
                  for p, a in zip(predictions, answers, strict=True) if keep(references(a))]
        return sum(scores) / len(scores) if scores else 0.0
    return metric


def _answerable(refs: list[str]) -> bool:
    return refs != [""]


exact_match = _mean_best(exact_score)
exact_match.__doc__ = "Mean over questions of the best exact match against a reference answer."
f1 = _mean_best(f1_score)
f1.__doc__ = "Mean over questions of the best token F1 against a reference answer."
has_answer_f1 = _mean_best(f1_score, _answerable)
has_answer_f1.__doc__ = "F1 over the answerable questions only (SQuAD v2.0's HasAns)."
no_answer_f1 = _mean_best(f1_score, lambda refs: not _answerable(refs))
no_answer_f1.__doc__ = "F1 over the unanswerable questions only (SQuAD v2.0's NoAns: 1 for an empty prediction)."

METRICS = {
    "exact_match": Metric(exact_match, reads="answers"),
    "f1": Metric(f1, reads="answers"),
    "has_answer_f1": Metric(has_answer_f1, reads="answers"),
    "no_answer_f1": Metric(no_answer_f1, reads="answers"),
}
"""The metrics kd-models registers for question answering."""
