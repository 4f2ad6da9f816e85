"""``question_answering``: extractive question answering (SQuAD v1.1 and v2.0) for Hugging Face
encoders with a span head (``AutoModelForQuestionAnswering``).

Reading: each question and its context are tokenized as a pair; a context longer than
``data.max_length`` is split into overlapping windows (``doc_stride`` context tokens shared by
neighbours, the task's option) with their offset mappings. A window's labels are the answer's
first and last token, or the [CLS] position when the answer is not wholly inside it (and for an
unanswerable question).

Features: ``logits`` [B, 2, L] holds the start and end logits, with every position outside the
context (question, separators, padding; [CLS] stays, it is the null answer) set to
:data:`~kd_core.features.MASKED_LOGIT`, so a softmax over the sequence, and so ``ce``/``kl`` at
temperature T, reads only the context: the two distributions are two rows, which the logit
losses average (TextBrewer's MRC recipe); ``labels`` [B, 2] make the hard-label loss the mean of
the start and end cross-entropies. The adaptor's logits run over the tokens
(``logits_over_tokens``), so the teacher cache stores each window's logits at its real tokens.

Stored teacher logits: ``kd augment label --task question_answering`` writes each question once
with the list of its windows' logits; a data file with ``teacher_logits`` gives each window its
own, and refuses a file whose windows differ from the ones read (another ``max_length``).

Evaluation: over all windows of a question, the ``n_best`` start and end positions of each window
give candidate spans (start <= end, at most ``max_answer_length`` tokens, inside the context);
the best by start + end logit is mapped back to the context's characters. With
``version_2_with_negative`` the empty answer wins when the null score (the [CLS] start and end,
lowest over the windows) beats the best span by more than ``null_score_threshold``. The baseline
("chance") answers every question with the first sentence of its context.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForQuestionAnswering

from kd_core.data import resolve_path
from kd_core.errors import ConfigError
from kd_core.features import MASKED_LOGIT, TEACHER_LOGITS, Adaptor, FeatureNeeds, Features
from kd_core.inference import RunSettings, run_model
from kd_core.labelling import collate_teacher_logits
from kd_core.schema import DataFile, ModelSpec, StudentSpec
from kd_core.tasks import Evaluation, get_metric
from kd_models.adaptors import HFAdaptor
from kd_models.squad import Question, read_questions
from kd_models.tasks import SequenceClassificationTask, from_pretrained, one_file, tokenizer_for

SPAN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class QuestionAnsweringAdaptor(HFAdaptor):
    """The ``hf`` adaptor for span heads: ``logits`` [B, 2, L] (start, end), the positions
    outside ``context_mask`` set to :data:`~kd_core.features.MASKED_LOGIT`; ``labels`` [B, 2]
    (first and last token)."""

    logits_over_tokens = True

    def masks(self, batch: Any) -> Features:
        """``inputs_mask``, ``labels`` and ``logits_mask`` None (every start and end row counts)."""
        return {**super().masks(batch), "logits_mask": None}

    def head_logits(self, batch: Any, model_outputs: Any) -> tuple[Any, Any]:
        start, end = getattr(model_outputs, "start_logits", None), getattr(model_outputs, "end_logits", None)
        if start is None or end is None:
            raise ConfigError(f"task question_answering needs a model with a span head (start_logits and end_logits, "
                              f"AutoModelForQuestionAnswering); {type(model_outputs).__name__} has neither")
        logits = torch.stack([start, end], dim=1)
        context = batch.get("context_mask")
        if context is not None:
            logits = logits.masked_fill(~context.bool()[:, None, :], MASKED_LOGIT)
        return logits, None


@dataclass
class Window:
    """One tokenized window of a question's context, and how to read answers back from it."""

    inputs: dict[str, list[int]]
    question: int
    """The index of its question in the dataset's ``questions``."""
    offsets: list[tuple[int, int] | None]
    """Each token's character span in the context; None outside the context."""
    cls_index: int
    start: int
    end: int
    """The answer's first and last token here, or ``cls_index`` twice."""
    teacher_logits: Any = None
    """The stored teacher logits of this window (JSON values), when the file has them."""


class QuestionAnsweringDataset(torch.utils.data.Dataset):
    """The windows of a set of questions, in order (a question's windows are consecutive).

    Its examples are windows and its rows questions (:class:`~kd_core.labelling.RowGroups`), so
    that labelling writes one row per question. ``fields`` are the question, context and answers
    fields the file was read with (answers None: read without them)."""

    def __init__(self, questions: list[Question], windows: list[Window],
                 fields: tuple[str, str, str | None] = ("question", "context", "answers")) -> None:
        self.questions = questions
        self.windows = windows
        self.fields = fields

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def example_rows(self) -> list[int]:
        """The question of each window."""
        return [w.question for w in self.windows]

    def select_rows(self, rows: list[int]) -> QuestionAnsweringDataset:
        """The dataset of the questions ``rows`` (in that order) with their windows: how a
        validation split holds out whole questions."""
        index = {row: new for new, row in enumerate(rows)}
        windows = [replace(w, question=index[w.question]) for w in self.windows if w.question in index]
        windows.sort(key=lambda w: w.question)  # stable: a question's windows stay in order
        return QuestionAnsweringDataset([self.questions[r] for r in rows], windows, self.fields)

    def label_rows(self) -> list[dict[str, Any]]:
        """Each question as a JSON-lines record that :func:`~kd_models.squad.read_questions` reads
        back with the same fields."""
        question, context, answers = self.fields
        rows = []
        for q in self.questions:
            row = {"id": q.id, question: q.question, context: q.context}
            if answers is not None:
                row[answers] = [{"text": a, "answer_start": s} for a, s in zip(q.answers, q.answer_starts,
                                                                               strict=True)]
            rows.append(row)
        return rows

    @property
    def texts(self) -> list[str]:
        """Each question's text, as analyses show it."""
        return [q.question for q in self.questions]

    def __getitem__(self, index: int) -> dict[str, Any]:
        window = self.windows[index]
        context = [int(o is not None) for o in window.offsets]
        context[window.cls_index] = 1
        example = {**window.inputs, "labels": [window.start, window.end], "context_mask": context}
        if window.teacher_logits is not None:
            example[TEACHER_LOGITS] = window.teacher_logits
        return example


class SpanCollator:
    """Pads windows to the longest one; stacks ``labels`` [B, 2] and their HF names
    (``start_positions``, ``end_positions``, for the model's own loss), pads ``context_mask`` and
    stored teacher logits ([B, 2, L], :data:`~kd_core.features.MASKED_LOGIT` at padding)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.tokenizer.pad([{k: e[k] for k in SPAN_INPUTS if k in e} for e in examples],
                                        return_tensors="pt"))
        width = batch["input_ids"].shape[1]
        left = self.tokenizer.padding_side == "left"
        shift = [width - len(e["input_ids"]) if left else 0 for e in examples]
        labels = torch.tensor([[p + s for p in e["labels"]] for e, s in zip(examples, shift, strict=True)])
        batch["labels"] = labels
        batch["start_positions"], batch["end_positions"] = labels[:, 0], labels[:, 1]
        masks = [([0] * (width - len(e["context_mask"])) + e["context_mask"]) if left else
                 (e["context_mask"] + [0] * (width - len(e["context_mask"]))) for e in examples]
        batch["context_mask"] = torch.tensor(masks, dtype=torch.long)
        if TEACHER_LOGITS in examples[0]:
            batch[TEACHER_LOGITS] = collate_teacher_logits([e[TEACHER_LOGITS] for e in examples],
                                                           batch["attention_mask"], over_tokens=True)
        return batch


class QuestionAnsweringTask(SequenceClassificationTask):
    """``question_answering``: answers as spans of a context (SQuAD v1.1, v2.0).

    ``data.text`` names the question and context fields (``[question, context]``) and
    ``data.label`` the answers field (``answers``). Settings (a registered instance of one's own
    changes them): ``doc_stride`` 128 (at most a quarter of ``data.max_length``, so that short
    windows still advance), ``n_best`` 20, ``max_answer_length`` 30, ``version_2_with_negative``
    False, ``null_score_threshold`` 0.
    """

    name = "question_answering"
    pipeline_tag = "question-answering"
    auto_class = AutoModelForQuestionAnswering
    head = "ForQuestionAnswering"
    metrics: tuple[str, ...] = ("f1", "exact_match")
    reads: tuple[str, ...] = ("answers",)

    def __init__(self, doc_stride: int = 128, n_best: int = 20, max_answer_length: int = 30,
                 version_2_with_negative: bool = False, null_score_threshold: float = 0.0) -> None:
        self.doc_stride = doc_stride
        self.n_best = n_best
        self.max_answer_length = max_answer_length
        self.version_2_with_negative = version_2_with_negative
        self.null_score_threshold = null_score_threshold

    def load_teacher(self, spec: ModelSpec, train_head: bool = False) -> nn.Module:
        if spec.labels is not None or spec.num_labels is not None:
            raise ConfigError("teacher.num_labels/labels: a question-answering head predicts spans, not classes; "
                              "leave them out")
        return super().load_teacher(spec, train_head)

    def build_student(self, spec: StudentSpec, teacher: nn.Module) -> nn.Module:
        if spec.preset in ("bilstm", "bigru"):
            raise ConfigError(f"student.preset {spec.preset}: the BiRNN students classify; question answering needs "
                              "a transformer student (a preset such as T4-tiny, a config, or student.model)")
        if spec.model is not None:
            return from_pretrained(self.auto_class, spec.model, "student.model")[0]
        return super().build_student(spec, teacher)

    def read(self, file: DataFile, model: ModelSpec, max_length: int, base_dir: Path | None,
             where: str) -> QuestionAnsweringDataset:
        columns = file.text_columns
        if len(columns) != 2:
            raise ConfigError(f"{where}.text: question answering reads two fields, [QUESTION, CONTEXT]; got {columns}")
        one_file(file, where)
        path = resolve_path(file.path, base_dir, f"{where}.path")
        questions = read_questions(path, columns[0], columns[1], file.label, file.limit, file.skip, where,
                                   file.teacher_logits)
        windows = self.windows(questions, tokenizer_for(model), max_length, where)
        if file.teacher_logits is not None:
            _attach_teacher_logits(questions, windows, max_length, f"{where} ({path.name})")
        return QuestionAnsweringDataset(questions, windows, (columns[0], columns[1], file.label))

    def windows(self, questions: list[Question], tokenizer: Any, max_length: int, where: str = "data") -> list[Window]:
        """Every question's windows (see the module's docstring)."""
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{where}: question answering needs a fast tokenizer (offset mappings); "
                              f"{type(tokenizer).__name__} is not one")
        encoded = tokenizer([q.question.lstrip() for q in questions], [q.context for q in questions],
                            truncation="only_second", max_length=max_length,
                            stride=min(self.doc_stride, max_length // 4), return_overflowing_tokens=True,
                            return_offsets_mapping=True)
        context_id = 1  # the second sequence of each pair
        windows = []
        for i, source in enumerate(encoded["overflow_to_sample_mapping"]):
            sequence = encoded.sequence_ids(i)
            offsets = [tuple(o) if s == context_id else None for o, s in zip(encoded["offset_mapping"][i], sequence,
                                                                             strict=True)]
            ids = encoded["input_ids"][i]
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            inputs = {k: encoded[k][i] for k in SPAN_INPUTS if k in encoded}
            start, end = _answer_tokens(questions[source], offsets, cls_index, self.max_answer_length)
            windows.append(Window(inputs, source, offsets, cls_index, start, end))
        return windows

    def collator(self, model: ModelSpec) -> SpanCollator:
        return SpanCollator(tokenizer_for(model))

    def adaptor(self, model: nn.Module) -> QuestionAnsweringAdaptor:
        return QuestionAnsweringAdaptor()

    def evaluate(self, model: nn.Module, adaptor: Adaptor, dataset: Any, collate: Callable[[list[Any]], Any],
                 metrics: Sequence[str], settings: RunSettings) -> Evaluation:
        """Each metric of the predicted answers (see the module's docstring) and of the
        first-sentence baseline, against every question's reference answers."""
        chosen = {name: get_metric(name, self, self.name) for name in metrics}
        clock: list[float] = []
        answers = self.predict(model, adaptor, dataset, collate, settings, clock)
        golds = [q.answers for q in dataset.questions]
        baseline = [first_sentence(q.context) for q in dataset.questions]
        return Evaluation({name: metric(answers, golds) for name, metric in chosen.items()},
                          {name: metric(baseline, golds) for name, metric in chosen.items()}, clock, answers, golds)

    def predict(self, model: nn.Module, adaptor: Adaptor, dataset: QuestionAnsweringDataset,
                collate: Callable[[list[Any]], Any], settings: RunSettings,
                clock: list[float] | None = None) -> list[str]:
        """The predicted answer of every question of ``dataset``, in order ("" for no answer)."""
        spans: list[tuple[float, int, int, int] | None] = [None] * len(dataset.questions)
        null = [float("inf")] * len(dataset.questions)
        index = 0
        for _, features in run_model(model, adaptor, dataset, collate, FeatureNeeds({"logits": set()}), settings,
                                     clock=clock):
            for logits in features["logits"].float().cpu():
                window = dataset.windows[index]
                q = window.question
                null[q] = min(null[q], float(logits[0, window.cls_index] + logits[1, window.cls_index]))
                best = self.best_span(logits[0], logits[1], window)
                if best is not None and (spans[q] is None or best[0] > spans[q][0]):
                    spans[q] = (best[0], index, best[1], best[2])
                index += 1
        return [self._answer(dataset, q, spans[q], null[q]) for q in range(len(dataset.questions))]

    def best_span(self, start: torch.Tensor, end: torch.Tensor, window: Window) -> tuple[float, int, int] | None:
        """The window's best (score, first token, last token) span inside the context, or None."""
        inside = torch.tensor([o is not None for o in window.offsets])
        length = len(window.offsets)
        start = start[:length].masked_fill(~inside, float("-inf"))
        end = end[:length].masked_fill(~inside, float("-inf"))
        k = min(self.n_best, int(inside.sum()))
        if k == 0:
            return None
        top_start, top_end = start.topk(k).indices, end.topk(k).indices
        scores = start[top_start][:, None] + end[top_end][None, :]
        width = top_end[None, :] - top_start[:, None]
        scores = scores.masked_fill((width < 0) | (width >= self.max_answer_length), float("-inf"))
        best = int(scores.argmax())
        score = float(scores.flatten()[best])
        if score == float("-inf"):
            return None
        return score, int(top_start[best // k]), int(top_end[best % k])

    def _answer(self, dataset: QuestionAnsweringDataset, q: int, span: tuple[float, int, int, int] | None,
                null: float) -> str:
        if span is None or (self.version_2_with_negative and null - span[0] > self.null_score_threshold):
            return ""
        _, w, first, last = span
        offsets = dataset.windows[w].offsets
        return dataset.questions[q].context[offsets[first][0]:offsets[last][1]]

    def build_multitask_student(self, spec: StudentSpec, teachers: dict[str, nn.Module]) -> nn.Module:
        """Refused: multi-head students have sequence-classification heads only."""
        raise ConfigError("task: multi-task recipes take sequence_classification tasks only")


def _answer_tokens(question: Question, offsets: list[tuple[int, int] | None], cls_index: int,
                   max_answer_length: int) -> tuple[int, int]:
    """The answer's first and last token in a window, or the [CLS] position twice when the window
    holds no answer whole (or there is none). Of several reference answers, the first whose ends
    fall on token boundaries and that fits ``max_answer_length`` is learned (SQuAD's annotators
    sometimes cut a word: "h International Criminal Court"); if none does, the first that the
    window holds."""
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not question.answers or not inside:
        return cls_index, cls_index
    held = []
    for answer, first_char in zip(question.answers, question.answer_starts, strict=True):
        last_char = first_char + len(answer)
        if offsets[inside[0]][0] > first_char or offsets[inside[-1]][1] < last_char:
            continue
        start = next(i for i in inside if offsets[i][1] > first_char)
        end = next(i for i in reversed(inside) if offsets[i][0] < last_char)
        aligned = offsets[start][0] == first_char and offsets[end][1] == last_char
        if aligned and end - start < max_answer_length:
            return start, end
        held.append((start, end))
    return held[0] if held else (cls_index, cls_index)


def _attach_teacher_logits(questions: list[Question], windows: list[Window], max_length: int, where: str) -> None:
    """Give every window its question's stored logits for it, after checking that the file was
    labelled with the same windows (as many per question, as many real tokens in each)."""
    by_question: dict[int, list[Window]] = {}
    for window in windows:
        by_question.setdefault(window.question, []).append(window)
    for number, question in enumerate(questions):
        own, stored = by_question[number], question.teacher_logits
        lengths = [len(w.inputs["input_ids"]) for w in own]
        if len(stored) != len(own) or [_stored_length(s) for s in stored] != lengths:
            raise ConfigError(f"{where}: question {question.id!r} has stored teacher logits for "
                              f"{[_stored_length(s) for s in stored]} tokens in {len(stored)} window(s), but at "
                              f"max_length {max_length} it reads {len(own)} window(s) of {lengths} tokens; label the "
                              "file with the recipe's data.max_length (kd augment label --max-length)")
        for window, value in zip(own, stored, strict=True):
            window.teacher_logits = value


def _stored_length(value: Any) -> int:
    """The tokens one window's stored logits cover: [2, n] lists, or top-k parts over n positions."""
    if isinstance(value, dict):
        return int(value.get("vocab", -1))
    return len(value[0]) if isinstance(value, list) and value and isinstance(value[0], list) else -1


def first_sentence(context: str) -> str:
    """The context up to its first sentence end (the trivial baseline's answer)."""
    return re.split(r"(?<=[.!?])\s+", context.strip(), maxsplit=1)[0]


