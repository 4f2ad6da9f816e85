"""Tasks: what kd needs to know about one kind of problem, and how kd-core uses them.

A task owns reading, batching, evaluating and saving the models of its kind of problem; kd-core
stays free of model libraries. A plugin (kd-models for Hugging Face models) registers tasks such
as ``sequence_classification`` through ``kd_register_tasks``; a new task lives in its plugin and
changes no kd-core module. :func:`get_task` and :func:`get_metric` are how kd finds them by name;
:func:`prepare_data` turns a recipe's ``data`` section into datasets with the task's reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from kd_core.errors import ConfigError
from kd_core.features import Adaptor
from kd_core.inference import RunSettings
from kd_core.metrics import Metric, check_reads
from kd_core.plugins import lookup

if TYPE_CHECKING:
    from kd_core.schema import DataFile, DataSpec, ModelSpec, StudentSpec


@dataclass
class PreparedData:
    """Datasets ready for a DataLoader, and the collate function that batches them."""

    train: Dataset
    eval: Dataset | None
    collate: Any
    extra_eval: dict[str, Dataset] = field(default_factory=dict)
    """More evaluation sets by name (``data.extra_eval``: CoLA's out-of-domain dev, MNLI's
    mismatched), scored beside ``eval``."""
    validation: Dataset | None = None
    """The set scored during training (``data.validation``, or held out of the training rows)."""


@dataclass
class Evaluation:
    """What :meth:`Task.evaluate` found: each metric's value, the value of the task's trivial
    prediction for each (the most frequent label, the context's first sentence, ...: what
    "chance" means for this task), the synchronised milliseconds of every forward batch and, when
    the task gives them, the per-example predictions and references its metrics read (in dataset
    order: ``kd analyze`` compares models with them)."""

    values: dict[str, float]
    baseline: dict[str, float]
    batch_ms: list[float] = field(default_factory=list)
    predictions: list[Any] | None = None
    references: list[Any] | None = None


class Task(Protocol):
    """How to read, batch, build, evaluate and save the models of one kind of problem. A task may
    also name Hugging Face's ``pipeline_tag`` for it (``text-classification``), which the model
    cards of the models it saves carry."""

    metrics: tuple[str, ...]
    """The metrics the task reports by default; the first is a recipe's ``eval.metric`` when it
    names none."""

    reads: tuple[str, ...]
    """The kinds of predictions ``evaluate`` gives metrics (:data:`kd_core.metrics.READS`)."""

    def load_teacher(self, spec: ModelSpec, train_head: bool = False) -> nn.Module:
        """Load the model named by ``spec`` (a recipe's ``teacher`` section). A task head its
        checkpoint lacks must raise :class:`~kd_core.errors.UntrainedHeadError` unless
        ``train_head`` (the head is about to be trained, as by ``kd train``) or
        ``spec.allow_untrained_head`` (then with a warning)."""

    def build_student(self, spec: StudentSpec, teacher: nn.Module) -> nn.Module:
        """Build the student from the recipe's ``student`` section (usually from the teacher's
        config, so the vocabulary and tokenizer stay the same)."""

    def read(self, file: DataFile, model: ModelSpec, max_length: int, base_dir: Path | None,
             where: str) -> Dataset:
        """Read and tokenize one data file (``where`` names it in errors: ``data.train``) as the
        model ``spec`` names reads it (its tokenizer, its classes)."""

    def collator(self, model: ModelSpec) -> Callable[[list[Any]], Any]:
        """The function that batches the examples :meth:`read` gives for ``model``."""

    def evaluate(self, model: nn.Module, adaptor: Adaptor, dataset: Dataset, collate: Callable[[list[Any]], Any],
                 metrics: Sequence[str], settings: RunSettings) -> Evaluation:
        """Run ``model`` (through ``adaptor``) over ``dataset`` and compute each metric named in
        ``metrics`` (registered names, as :func:`get_metric` finds them) with its baseline."""

    def adaptor(self, model: nn.Module) -> Adaptor:
        """The adaptor that extracts features from ``model``."""

    def save_model(self, model: nn.Module, directory: Path, teacher_spec: ModelSpec) -> None:
        """Save ``model`` (and what it needs to be used, such as its tokenizer) to ``directory``."""

    def build_multitask_student(self, spec: StudentSpec, teachers: dict[str, nn.Module]) -> nn.Module:
        """A student with one head per task (``teachers`` maps each task to its teacher)."""

    def head_adaptor(self, model: nn.Module, head: str) -> Adaptor:
        """The adaptor that reads the multi-task student's head for task ``head``."""


def batch_postprocessor(task: Task, student: nn.Module, model: ModelSpec) -> Callable[[Any], Any] | None:
    """The function a task applies to every training batch before the teacher and the student
    see it, or None. A task gives one through an optional method of the same name,
    ``batch_postprocessor(student, model)`` (``model``: the teacher's spec, whose tokenizer the
    data uses): on-policy distillation replaces completions with the student's samples there."""
    method = getattr(task, "batch_postprocessor", None)
    return None if method is None else method(student, model)


def task_samples(task: Task, model: nn.Module, dataset: Dataset, collate: Callable[[list[Any]], Any],
                 settings: RunSettings) -> dict[str, Any]:
    """What a report shows of ``model`` beside its metrics, or nothing. A task gives it through an
    optional method ``samples(model, dataset, collate, settings) -> dict`` (a causal LM's
    continuations of fixed prompts, under ``generations``)."""
    method = getattr(task, "samples", None)
    return {} if method is None else method(model, dataset, collate, settings)


def get_task(name: str) -> Task:
    """The registered task called ``name``; a ConfigError lists the registered ones."""
    try:
        return lookup("tasks", name)
    except LookupError as exc:
        raise ConfigError(f"task: {exc}") from None


def get_metric(name: str, task: Task | None = None, task_name: str = "") -> Metric:
    """The registered metric ``name``; with ``task``, refused unless that task gives predictions
    of the kind it reads."""
    try:
        metric = lookup("metrics", name)
    except LookupError as exc:
        raise ConfigError(f"eval.metric: {exc}") from None
    if task is not None:
        check_reads(name, metric, task.reads, task_name or type(task).__name__)
    return metric


def eval_metrics(task: Task, metric: str | None) -> list[str]:
    """The metrics a report gives: ``metric`` (a recipe's ``eval.metric``; the task's first by
    default) first, then the task's others; none for a task without metrics (``general``, whose
    students are scored by fine-tuning them)."""
    if metric is None and not task.metrics:
        return []
    head = metric or task.metrics[0]
    return [head, *(m for m in task.metrics if m != head)]


VALIDATION_SEED = 0
"""The seed of ``data.validation_split``: the same rows are held out for every training seed, so
runs of several seeds are chosen on the same validation set."""


def hold_out(dataset: Dataset, share: float, seed: int = VALIDATION_SEED,
             where: str = "data.validation_split") -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into (training, validation) with a seeded ``share`` of its rows in the
    second. A dataset whose examples group into rows (question answering: a question's windows,
    ``example_rows``) is split by row through its ``select_rows(rows)``, so no row is on both sides;
    any other by example."""
    grouped = hasattr(dataset, "example_rows") and hasattr(dataset, "select_rows")
    rows = sorted(set(dataset.example_rows)) if grouped else list(range(len(dataset)))
    count = len(rows)
    held = round(share * count)
    if held < 1 or held >= count:
        raise ConfigError(f"{where}: {share} of {count} training rows leaves "
                          f"{'no validation rows' if held < 1 else 'no training rows'}; give a share that leaves "
                          "some of each, or a validation file in data.validation")
    order = [rows[i] for i in torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()]
    validation, train = sorted(order[:held]), sorted(order[held:])
    if grouped:
        return dataset.select_rows(train), dataset.select_rows(validation)
    return Subset(dataset, train), Subset(dataset, validation)


def prepare_data(task: Task, spec: DataSpec, model: ModelSpec, base_dir: Path | None) -> PreparedData:
    """A recipe's ``data`` section (train, validation or validation_split, eval, extra_eval) read
    by ``task`` for ``model``."""
    def read(file: DataFile, where: str) -> Dataset:
        return task.read(file, model, spec.max_length, base_dir, where)

    train = read(spec.train, "data.train")
    validation = read(spec.validation, "data.validation") if spec.validation is not None else None
    if spec.validation_split is not None:
        train, validation = hold_out(train, spec.validation_split)
    return PreparedData(train, read(spec.eval, "data.eval") if spec.eval is not None else None,
                        task.collator(model),
                        {name: read(file, f"data.extra_eval.{name}") for name, file in spec.extra_eval.items()},
                        validation)
