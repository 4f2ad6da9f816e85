"""Recipes: one YAML/JSON file that names every part of a run, and the runs it drives.

A recipe has the sections ``task``, ``data``, ``teacher``, ``student``, ``training``,
``distillation`` (a :class:`~kd_core.config.DistillationConfig`) and ``eval``. ``kd distill``
runs :func:`run_distill`; ``kd train`` runs :func:`run_train` (fine-tunes the teacher).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import ConfigDict, Field, model_validator
from torch import nn
from torch.utils.data import DataLoader

from kd_core.augmentation import augment_file
from kd_core.checkpoint import write_text_atomic
from kd_core.config import ConfigModel, DistillationConfig, TrainingConfig
from kd_core.data import read_records, resolve_path
from kd_core.distillers import BasicTrainer, GeneralDistiller, MultiTaskDistiller, MultiTeacherDistiller
from kd_core.distributed import is_main_process, launched_world_size
from kd_core.engine import seed_everything
from kd_core.errors import ConfigError
from kd_core.features import TEACHER_LOGITS, Adaptor, FeatureNeeds, to_device
from kd_core.labelling import label_file
from kd_core.metrics import compute_metric, entity_f1
from kd_core.plugins import lookup
from kd_core.sampling import LengthGroupedBatchSampler, example_length
from kd_core.tasks import PreparedData, Task

REPORT_FILE = "report.json"


class DataFile(ConfigModel):
    """One file: TSV, CSV or JSONL with a text column (or a pair), a label column and, for a
    transfer set labelled by ``kd augment label``, a column of stored teacher logits."""

    path: str
    text: str | list[str]
    label: str | None = None
    """The gold label column; without it the examples have no labels (a teacher-labelled transfer
    set, distilled with ``hard_label_weight: 0``)."""
    teacher_logits: str | None = None
    """The column of stored teacher logits (``teacher_logits`` as ``kd augment label`` writes it);
    distillers then use them instead of running the teacher for its logits."""
    limit: int | None = Field(None, ge=1)
    skip: int = Field(0, ge=0)
    """Rows passed over before reading (``limit`` counts after them): a held-out part of a file."""
    format: Literal["auto", "tsv", "csv", "jsonl", "conll"] = "auto"
    columns: list[str] | None = None
    """The column names, in order, of a TSV/CSV without a header row (CoLA's files), or the names
    of a CoNLL file's two columns (default ``tokens`` and ``tags``)."""

    @property
    def text_columns(self) -> list[str]:
        """The text column, or the two columns of a sentence pair."""
        columns = [self.text] if isinstance(self.text, str) else list(self.text)
        if not 1 <= len(columns) <= 2:
            raise ConfigError(f"data text must name one column or a pair, got {self.text}")
        return columns


class NamedSpec(ConfigModel):
    """A registered part by name with its options: ``{name: etd_impt, num_batches: 8}``."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str

    @property
    def options(self) -> dict[str, Any]:
        """Everything but the name, passed to the part as keyword arguments."""
        return dict(self.model_extra or {})


class InitSpec(NamedSpec):
    """A registered initializer and its options, e.g. ``{name: etd_impt, num_batches: 8}``."""


class AugmenterSpec(NamedSpec):
    """A registered augmenter and its options, e.g. ``{name: tang, p_mask: 0.1}``."""


class AugmentSpec(ConfigModel):
    """Grow ``data.train`` into a teacher-labelled transfer set before distilling.

    Either run a registered ``augmenter`` (a name or ``{name, options...}``; ``n`` new rows per
    example, or in all for a generator) or read a prepared file (``path``, e.g. from
    ``kd augment``). Every row is then labelled with the teacher's logits unless the file already
    has them. The files go to ``<output_dir>/transfer/`` and a rerun reuses (or resumes) them.
    """

    augmenter: str | AugmenterSpec | None = None
    path: str | None = None
    n: int = Field(20, ge=1)
    seed: int = 0
    keep_original: bool = True
    label: bool = True
    """Label the grown set with the teacher's logits before training (``labelled.jsonl``). With
    ``false`` the teacher labels each batch as it trains instead: one teacher pass instead of two
    when the loss plan reads other teacher features anyway (hidden states, Q/K/V), and with
    ``is_caching_logits`` every row is labelled once."""
    top_k: int | None = Field(None, ge=1)
    """Store only each row's top k teacher logits (see the teacher cache)."""
    batch_size: int = Field(64, ge=1)
    """Rows per teacher batch when labelling, and texts per batch when generating."""

    @model_validator(mode="after")
    def _one_source(self) -> AugmentSpec:
        if (self.augmenter is None) == (self.path is None):
            raise ValueError("give an augmenter to run, or the path of a prepared transfer set, not both")
        return self

    @property
    def spec(self) -> AugmenterSpec:
        """``augmenter`` as an AugmenterSpec (a bare name has no options)."""
        return AugmenterSpec(name=self.augmenter) if isinstance(self.augmenter, str) else self.augmenter


class DataSpec(ConfigModel):
    """Training and evaluation data, the tokenizer's maximum length, and optional augmentation."""

    train: DataFile
    eval: DataFile | None = None
    extra_eval: dict[str, DataFile] = Field(default_factory=dict)
    """More labelled sets by name, each scored beside ``eval`` (which stays the one the report's
    ``value`` and ``retention`` read): CoLA's ``out_of_domain`` dev, MNLI's mismatched."""
    max_length: int = Field(128, ge=2)
    augment: AugmentSpec | None = None

    @model_validator(mode="after")
    def _extra_needs_eval(self) -> DataSpec:
        if self.extra_eval and self.eval is None:
            raise ValueError("extra_eval scores models beside data.eval; give data.eval too")
        return self


class ModelSpec(ConfigModel):
    """A teacher: a Hugging Face path (``package:NAME`` for a model shipped in a Python
    package with ``get_model_path()``), its number of labels or their names, and a name (for
    several teachers)."""

    model: str
    num_labels: int | None = Field(None, ge=1)
    labels: list[str] | None = None
    """The class names in id order (a token task's tags, e.g. ``[O, B-person, I-person]``), for a
    teacher that is not fine-tuned yet; a fine-tuned teacher keeps them in its config."""
    name: str | None = None

    @model_validator(mode="after")
    def _labels(self) -> ModelSpec:
        if self.labels is not None and self.num_labels not in (None, len(self.labels)):
            raise ValueError(f"num_labels is {self.num_labels} but labels names {len(self.labels)} classes")
        return self


class StudentSpec(ConfigModel):
    """A student: a registered ``preset`` (its fields overridden by ``config``), a ``config`` that
    overrides the teacher's config, or a ``model`` path; ``init`` names a registered initializer
    (``etd_impt``) or gives it with options (``{name: etd_impt, num_batches: 8}``)."""

    model: str | None = None
    config: dict[str, Any] | None = None
    preset: str | None = None
    init: str | InitSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> StudentSpec:
        if self.model is not None and (self.config is not None or self.preset is not None):
            raise ValueError("give a model path, or a preset and/or config, not both")
        return self

    @property
    def initializer(self) -> InitSpec | None:
        """``init`` as an InitSpec (a bare name has no options)."""
        return InitSpec(name=self.init) if isinstance(self.init, str) else self.init


class TrainingSpec(ConfigModel):
    """Optimisation settings of a recipe."""

    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    num_steps: int | None = Field(None, ge=1)
    num_epochs: int | None = Field(None, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = Field(1, ge=1)
    ckpt_steps: int | None = Field(None, ge=1)
    keep_checkpoints: int | None = Field(None, ge=1)
    seed: int = 0
    device: str = "cpu"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    progress: bool = True
    skip_nonfinite: bool = False
    group_by_length: bool = False
    """Batch examples of similar length together (shuffled groups sorted by length, batches
    shuffled; :mod:`kd_core.sampling`): much less padding, the same examples every epoch."""

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if (self.num_steps is None) == (self.num_epochs is None):
            raise ValueError("give exactly one of num_steps and num_epochs")
        return self


class EvalSpec(ConfigModel):
    """How the report measures models: the metric and the batch size for latency."""

    metric: Literal["accuracy", "matthews", "macro_f1", "entity_f1"] = "accuracy"
    batch_size: int = Field(32, ge=1)


class TaskSpec(ConfigModel):
    """One task of a multi-task recipe: its data, its teacher and how it is measured."""

    data: DataSpec
    teacher: ModelSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)


class Recipe(ConfigModel):
    """A whole run. See the README for a commented example.

    Either ``data`` and ``teacher`` (one task), or ``tasks`` (name -> data, teacher, eval): a
    multi-task distillation into one student with a head per task.
    """

    task: str
    data: DataSpec | None = None
    teacher: ModelSpec | list[ModelSpec] | None = None
    """One teacher, or several (``MultiTeacherDistiller``); the first gives the tokenizer and the
    config students are built from."""
    tasks: dict[str, TaskSpec] | None = None
    student: StudentSpec = Field(default_factory=StudentSpec)
    assistants: list[StudentSpec] = Field(default_factory=list)
    training: TrainingSpec
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    eval: EvalSpec = Field(default_factory=EvalSpec)

    @property
    def teachers(self) -> list[ModelSpec]:
        """The teacher specs as a list (each task's teacher in a multi-task recipe)."""
        if self.tasks is not None:
            return [t.teacher for t in self.tasks.values()]
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    @property
    def primary_teacher(self) -> ModelSpec:
        """The first teacher: its tokenizer reads the data, its config shapes the students."""
        return self.teachers[0]

    @model_validator(mode="after")
    def _teacher_names(self) -> Recipe:
        if self.tasks is not None:
            if self.data is not None or self.teacher is not None:
                raise ValueError("a multi-task recipe gives data and teacher inside each of its tasks, not at the top")
            if not self.tasks:
                raise ValueError("tasks: give at least one task")
            if self.assistants:
                raise ValueError("assistants: teacher-assistant chains take one task, not a multi-task recipe")
            return self
        if self.data is None or self.teacher is None:
            raise ValueError("give data and teacher (one task) or tasks (several)")
        if not self.teachers:
            raise ValueError("teacher: give a teacher, or a list of at least one")
        names = [_teacher_name(spec, i) for i, spec in enumerate(self.teachers)]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher: the teachers' names must be unique, got {names}")
        return self


def _teacher_name(spec: ModelSpec, index: int) -> str:
    return spec.name or str(index)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[Recipe, Path]:
    """Read a YAML/JSON recipe, apply ``key.path=value`` overrides, validate; also return its folder.

    ``distillation`` may name a file instead of holding the section: a TextBrewer
    ``DistillationConfig`` JSON (or YAML), read unchanged and resolved against the recipe's folder,
    then overridden like the rest.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    folder = path.parent.resolve()
    data = _read_mapping(path, str(path))
    if isinstance(data.get("distillation"), str):
        data["distillation"] = _read_mapping(resolve_path(data["distillation"], folder, "distillation"),
                                             f"{path}: distillation")
    for override in overrides:
        apply_override(data, override)
    return Recipe.from_dict(data, where=str(path)), folder


def _read_mapping(path: Path, where: str) -> dict[str, Any]:
    """A YAML or JSON file (JSON is YAML) that must hold a mapping."""
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path} must hold a mapping of fields, not a {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``3``, ``true``, ``[1, 2]``)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: write it as key.path=value")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {override!r}: {'.'.join(parts[: i + 1])} is not a section")
    value = yaml.safe_load(raw)
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def task_for_name(name: str) -> Task:
    """The registered task called ``name``; a ConfigError lists the registered ones."""
    try:
        return lookup("tasks", name)
    except LookupError as exc:
        raise ConfigError(f"task: {exc}") from None


def task_for(recipe: Recipe) -> Task:
    """The registered task the recipe names."""
    return task_for_name(recipe.task)


def run_train(recipe: Recipe, output_dir: str | Path, base_dir: Path | None = None,
              resume: bool = False) -> dict[str, Any]:
    """Fine-tune the recipe's teacher on its labelled data (``kd train``).

    Writes ``output_dir/model`` (the trained model), ``metrics.jsonl``, checkpoints and
    ``report.json`` with the eval metric; returns the report.
    """
    output_dir = Path(output_dir)
    task = task_for(recipe)
    seed_everything(recipe.training.seed)
    if len(recipe.teachers) > 1 or recipe.tasks is not None:
        raise ConfigError("kd train fine-tunes one teacher on one task; give teacher a single model and data "
                          "(write one recipe per teacher or task)")
    if recipe.data.augment is not None:
        raise ConfigError("data.augment: kd train fine-tunes on gold labels; augmented rows have none (remove augment)")
    model = task.load_teacher(recipe.primary_teacher)
    data = task.prepare_data(recipe.data, recipe.primary_teacher, base_dir)
    adaptor = task.adaptor(model)
    trainer = BasicTrainer(_training_config(recipe, output_dir), model, adaptor)
    _fit(trainer, model, recipe, data, resume)
    if not is_main_process():
        return {}
    task.save_model(model, output_dir / "model", recipe.primary_teacher)
    report: dict[str, Any] = {"task": recipe.task, "metric": recipe.eval.metric}
    if data.eval is not None:
        report["model"] = measure(model, adaptor, data, recipe)
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def run_distill(recipe: Recipe, output_dir: str | Path, base_dir: Path | None = None,
                resume: bool = False, teacher_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Distill the recipe's teacher into its student (``kd distill``), through its assistants if
    it lists any: teacher -> assistant 1 -> ... -> student, each stage's student becoming the next
    stage's teacher (MiniLM section 3.3), all with the recipe's training and distillation settings.

    Writes ``output_dir/student`` (save_pretrained, safetensors), ``metrics.jsonl``,
    ``checkpoints/`` and ``report.json``, and each assistant's run under ``output_dir/assistant-N``;
    returns the report. ``teacher_result`` is the teacher's :func:`measure` on the same eval data
    when the caller already has it (the demo measures its teacher once, after fine-tuning, for all
    its students); otherwise the teacher is measured here. With ``resume``, finished assistants
    are loaded from their folders and the interrupted stage continues from its checkpoint.
    """
    output_dir = Path(output_dir)
    if recipe.tasks is not None:
        return run_multitask_distill(recipe, output_dir, base_dir, resume)
    task = task_for(recipe)
    seed_everything(recipe.training.seed)
    teachers = {_teacher_name(spec, i): task.load_teacher(spec) for i, spec in enumerate(recipe.teachers)}
    if recipe.assistants and recipe.data.train.teacher_logits:
        raise ConfigError("data.train.teacher_logits: stored logits are one teacher's, but with assistants each stage "
                          "distils from another teacher; leave teacher_logits out so every stage runs its teacher")
    data = task.prepare_data(transfer_set(task, recipe, output_dir, base_dir), recipe.primary_teacher, base_dir)
    # initializers that read batches (ETD's Taylor importance) need gold labels, which the new rows
    # of a transfer set do not have: they read the labelled training data
    init_data = data
    if recipe.data.augment is not None and any(s.init for s in (*recipe.assistants, recipe.student)):
        init_data = task.prepare_data(recipe.data.model_copy(update={"augment": None}), recipe.primary_teacher,
                                      base_dir)
    assistants = []
    current = teachers
    for index, spec in enumerate(recipe.assistants, start=1):
        assistant = _assistant_stage(task, recipe, spec, current, data, init_data, output_dir / f"assistant-{index}",
                                     resume)
        assistants.append(assistant)
        current = {"assistant": assistant}
    student = _distill_stage(task, recipe, recipe.student, current, data, init_data, output_dir, resume)
    if not is_main_process():
        return {}
    report: dict[str, Any] = {"task": recipe.task, "metric": recipe.eval.metric}
    if data.eval is not None:
        teacher = next(iter(teachers.values()))
        if teacher_result is None:
            teacher_result = measure(teacher, task.adaptor(teacher), data, recipe)
        report["teacher"] = teacher_result
        if len(teachers) > 1:
            report["teachers"] = {name: teacher_result if model is teacher else measure(model, task.adaptor(model),
                                                                                       data, recipe)
                                  for name, model in teachers.items()}
        if assistants:
            report["assistants"] = [_measure_against(a, task.adaptor(a), data, recipe, teacher_result)
                                    for a in assistants]
        report["student"] = _measure_against(student, task.adaptor(student), data, recipe, teacher_result)
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def run_multitask_distill(recipe: Recipe, output_dir: Path, base_dir: Path | None = None,
                          resume: bool = False) -> dict[str, Any]:
    """Distill each task's teacher into one student with a head per task (``MultiTaskDistiller``);
    tasks are sampled in proportion to their number of batches. The report has, per task, the
    teacher's and the student's metric and the retention."""
    task = task_for(recipe)
    seed_everything(recipe.training.seed)
    augmented = [name for name, spec in recipe.tasks.items() if spec.data.augment is not None]
    if augmented:
        raise ConfigError(f"tasks.{augmented[0]}.data.augment: a multi-task recipe does not augment its tasks yet; "
                          "grow each task's data with `kd augment` and give the (unlabelled) file as that task's "
                          "data.train: its teacher then runs on every batch")
    teachers = {name: task.load_teacher(spec.teacher) for name, spec in recipe.tasks.items()}
    data = {name: task.prepare_data(spec.data, spec.teacher, base_dir) for name, spec in recipe.tasks.items()}
    student = task.build_multitask_student(recipe.student, teachers)
    heads = {name: task.head_adaptor(student, name) for name in recipe.tasks}
    distiller = MultiTaskDistiller(_training_config(recipe, output_dir), recipe.distillation, teachers, student,
                                   {name: task.adaptor(t) for name, t in teachers.items()}, heads)
    loaders = {name: _train_loader(d, recipe.training) for name, d in data.items()}
    _optimize(distiller, student, recipe, loaders, sum(len(v) for v in loaders.values()), resume)
    if not is_main_process():
        return {}
    first = next(iter(recipe.tasks.values()))
    task.save_model(student, output_dir / "student", first.teacher)
    report: dict[str, Any] = {"task": recipe.task, "tasks": {}}
    for name, spec in recipe.tasks.items():
        if data[name].eval is None:
            continue
        measured = recipe.model_copy(update={"eval": spec.eval})
        teacher_result = measure(teachers[name], task.adaptor(teachers[name]), data[name], measured)
        report["tasks"][name] = {"metric": spec.eval.metric, "teacher": teacher_result, "student":
                                 _measure_against(student, heads[name], data[name], measured, teacher_result)}
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


TRANSFER_DIR = "transfer"


def transfer_set(task: Task, recipe: Recipe, output_dir: Path, base_dir: Path | None) -> DataSpec:
    """The recipe's data, with ``data.augment`` carried out: ``data.train`` grown by the augmenter
    (or read from the prepared file) and, unless ``augment.label`` is false, labelled by the
    teacher, in ``output_dir/transfer/``. Finished files are reused and interrupted ones resumed."""
    spec = recipe.data
    augment = spec.augment
    if augment is None:
        return spec
    if len(recipe.teachers) > 1 or recipe.assistants:
        raise ConfigError("data.augment: transfer sets are labelled by one teacher; a recipe with several teachers "
                          "or with assistants cannot use it yet. Grow the data with `kd augment` and give the "
                          "(unlabelled) file as data.train: the teachers then run on every batch")
    if recipe.distillation.hard_label_weight != 0:
        raise ConfigError("data.augment: the new rows of a transfer set have no gold labels; "
                          "set distillation.hard_label_weight: 0")
    train = spec.train
    directory = output_dir.resolve() / TRANSFER_DIR
    if augment.path is not None:
        source = train.model_copy(update={"path": str(resolve_path(augment.path, base_dir, "data.augment.path")),
                                          "label": None, "limit": None, "skip": 0, "format": "auto",
                                          "columns": None})
        first = read_records(Path(source.path), 1, where="data.augment.path")[0]
        if TEACHER_LOGITS in first:
            return spec.model_copy(update={"train": source.model_copy(update={"teacher_logits": TEACHER_LOGITS}),
                                           "augment": None})
    if launched_world_size() > 1:
        raise ConfigError("data.augment: under torchrun every process would write the transfer set; prepare it "
                          "first (kd augment ..., then kd augment label) and give it as data.augment.path")
    if augment.path is None:
        augmenter = augment.spec
        augment_file(resolve_path(train.path, base_dir, "data.train.path"), train.text_columns, augmenter.name,
                     augmenter.options, directory / "augmented.jsonl", n=augment.n, seed=augment.seed,
                     keep_original=augment.keep_original, limit=train.limit, skip=train.skip, format=train.format,
                     header=train.columns, progress=recipe.training.progress, batch_size=augment.batch_size,
                     where="data.augment.augmenter")
        source = DataFile(path=str(directory / "augmented.jsonl"), text=train.text)
    if not augment.label:
        return spec.model_copy(update={"train": source, "augment": None})
    labelled = directory / "labelled.jsonl"
    label_file(task, recipe.primary_teacher, source, labelled, max_length=spec.max_length,
               batch_size=augment.batch_size, top_k=augment.top_k, device=recipe.training.device,
               progress=recipe.training.progress)
    return spec.model_copy(update={"train": DataFile(path=str(labelled), text=train.text,
                                                     teacher_logits=TEACHER_LOGITS), "augment": None})


STAGE_DONE = "STAGE_COMPLETE"


def _distill_stage(task: Task, recipe: Recipe, spec: StudentSpec, teachers: dict[str, nn.Module],
                   data: PreparedData, init_data: PreparedData, output_dir: Path, resume: bool) -> nn.Module:
    """Build, initialise and distill one student from ``teachers`` (one, or several for a
    MultiTeacherDistiller; the first shapes the student); save it to ``output_dir/student``."""
    first = next(iter(teachers.values()))
    student = build_student(task, spec, first, init_data, recipe.training)
    config = _training_config(recipe, output_dir)
    if len(teachers) == 1:
        distiller = GeneralDistiller(config, recipe.distillation, first, student, task.adaptor(first),
                                     task.adaptor(student))
    else:
        distiller = MultiTeacherDistiller(config, recipe.distillation, teachers, student,
                                          [task.adaptor(t) for t in teachers.values()], task.adaptor(student))
    _fit(distiller, student, recipe, data, resume)
    if is_main_process():
        task.save_model(student, output_dir / "student", recipe.primary_teacher)
    return student


def _assistant_stage(task: Task, recipe: Recipe, spec: StudentSpec, teachers: dict[str, nn.Module],
                     data: PreparedData, init_data: PreparedData, output_dir: Path, resume: bool) -> nn.Module:
    """One teacher-assistant stage; a stage finished by an earlier run is loaded when resuming."""
    saved = output_dir / "student"
    if resume and (output_dir / STAGE_DONE).is_file():
        return task.load_teacher(ModelSpec(model=str(saved)))
    assistant = _distill_stage(task, recipe, spec, teachers, data, init_data, output_dir, resume)
    if is_main_process():
        write_text_atomic(output_dir / STAGE_DONE, f"{saved}\n")
    return assistant


def _measure_against(model: nn.Module, adaptor: Adaptor, data: PreparedData, recipe: Recipe,
                     teacher_result: dict[str, Any]) -> dict[str, Any]:
    """:func:`measure`, plus the retention against the teacher's result."""
    result = measure(model, adaptor, data, recipe)
    result["retention"] = _retention(result["value"], teacher_result["value"])
    teacher_sets = teacher_result.get("eval_sets", {})
    for name, entry in result.get("eval_sets", {}).items():
        if name in teacher_sets:
            entry["retention"] = _retention(entry["value"], teacher_sets[name]["value"])
    return result


def build_student(task: Task, spec: StudentSpec, teacher: nn.Module, data: PreparedData,
                  training: TrainingSpec) -> nn.Module:
    """The student the spec describes, initialised by its ``init`` (which may read batches of the
    training data, e.g. ETD's Taylor importance)."""
    student = task.build_student(spec, teacher)
    init = spec.initializer
    if init is None:
        return student
    try:
        initializer = lookup("initializers", init.name)
    except LookupError as exc:
        raise ConfigError(f"student.init: {exc}") from None
    try:
        return initializer(teacher, student, data=_train_loader(data, training), **init.options)
    except TypeError as exc:
        raise ConfigError(f"student.init {init.name!r}: {exc}") from None


def _training_config(recipe: Recipe, output_dir: Path) -> TrainingConfig:
    t = recipe.training
    return TrainingConfig(
        output_dir=str(output_dir), device=t.device, ckpt_steps=t.ckpt_steps, seed=t.seed,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=t.mixed_precision, progress=t.progress, keep_checkpoints=t.keep_checkpoints,
        skip_nonfinite=t.skip_nonfinite,
    )


def _fit(engine: BasicTrainer | GeneralDistiller, model: nn.Module, recipe: Recipe,
         data: PreparedData, resume: bool) -> None:
    loader = _train_loader(data, recipe.training)
    _optimize(engine, model, recipe, loader, len(loader), resume)


def _train_loader(data: PreparedData, training: TrainingSpec) -> DataLoader:
    """The training data in seeded shuffled batches of the recipe's size (grouped by length when
    the recipe asks for it)."""
    generator = torch.Generator().manual_seed(training.seed)
    if not training.group_by_length:
        return DataLoader(data.train, batch_size=training.batch_size, shuffle=True, collate_fn=data.collate,
                          generator=generator)
    if launched_world_size() > 1:
        raise ConfigError("training.group_by_length: distributed runs shard one random permutation per epoch and "
                          "do not group by length yet; set group_by_length: false under torchrun")
    lengths = [example_length(data.train[i], i) for i in range(len(data.train))]
    return DataLoader(data.train, batch_sampler=LengthGroupedBatchSampler(lengths, training.batch_size, generator),
                      collate_fn=data.collate)


def _optimize(engine: BasicTrainer | GeneralDistiller | MultiTaskDistiller, model: nn.Module, recipe: Recipe,
              train_data: Any, batches_per_epoch: int, resume: bool) -> None:
    """AdamW with linear warm-up and decay over the recipe's steps (or epochs of
    ``batches_per_epoch`` batches), then ``engine.train`` on ``train_data``."""
    t = recipe.training
    total = t.num_steps or t.num_epochs * math.ceil(batches_per_epoch / t.gradient_accumulation_steps)
    # the fused kernel updates every parameter in one pass: about 3x faster than foreach on CPU
    fused = torch.device(t.device).type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused)
    engine.train(
        optimizer, train_data, num_epochs=t.num_epochs, num_steps=t.num_steps,
        scheduler_class=linear_schedule_with_warmup,
        scheduler_args={"num_warmup_steps": int(t.warmup_ratio * total), "num_training_steps": total},
        max_grad_norm=t.max_grad_norm, resume=resume,
    )


def linear_schedule_with_warmup(optimizer: torch.optim.Optimizer, num_warmup_steps: int,
                                num_training_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base learning rate, then linear decay to zero (BERT's schedule)."""
    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return (step + 1) / (num_warmup_steps + 1)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def measure(model: nn.Module, adaptor: Adaptor, data: PreparedData, recipe: Recipe) -> dict[str, Any]:
    """Eval metric, parameter count and CPU latency (median milliseconds per eval batch); with
    ``data.extra_eval``, also ``eval_sets``: each extra set's ``{"value": metric}``."""
    if data.eval is None:
        raise ConfigError("data.eval is needed to measure a model")
    value, times = _score(model, adaptor, data.eval, data.collate, recipe)
    result: dict[str, Any] = {
        "value": value,
        "params": sum(p.numel() for p in model.parameters()),
        # the first batch pays one-off costs (allocations, kernel selection)
        "latency_ms": round(statistics.median(times[1:] or times), 3),
    }
    if data.extra_eval:
        result["eval_sets"] = {name: {"value": _score(model, adaptor, dataset, data.collate, recipe)[0]}
                               for name, dataset in data.extra_eval.items()}
    return result


@torch.no_grad()
def _score(model: nn.Module, adaptor: Adaptor, dataset: Any, collate: Any, recipe: Recipe) -> tuple[float, list[float]]:
    """The recipe's metric of ``model`` on ``dataset``, and the milliseconds each batch took."""
    device = torch.device(recipe.training.device)
    was_training = model.training
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=recipe.eval.batch_size, shuffle=False, collate_fn=collate)
    needs = FeatureNeeds({"logits": set()})
    predictions, golds, times = [], [], []
    token_level = None
    for batch in loader:
        batch = to_device(batch, device)
        start = time.perf_counter()
        features = adaptor.run(model, batch, needs)
        times.append((time.perf_counter() - start) * 1000)
        predicted, labels = features["logits"].argmax(-1).cpu(), features["labels"].cpu()
        token_level = predicted.dim() == 2
        if not token_level:
            predictions.append(predicted)
            golds.append(labels)
            continue
        # token level: one sequence per example, at the labelled tokens (a word's first piece)
        keep = labels != -100
        mask = features.get("logits_mask")
        if mask is not None:
            keep &= mask.cpu().bool()
        predictions.extend(p[k] for p, k in zip(predicted, keep, strict=True))
        golds.extend(g[k] for g, k in zip(labels, keep, strict=True))
    model.train(was_training)
    if recipe.eval.metric == "entity_f1":
        if token_level is False:
            raise ConfigError("eval.metric entity_f1 scores tag sequences; this model gives one label per example "
                              "(use it with task token_classification)")
        names = _label_names(model)
        value = entity_f1([[names[int(i)] for i in p] for p in predictions],
                          [[names[int(i)] for i in g] for g in golds])
    else:
        value = compute_metric(recipe.eval.metric, torch.cat(predictions), torch.cat(golds))
    return value, times


def _label_names(model: nn.Module) -> dict[int, str]:
    names = {int(i): name for i, name in (getattr(getattr(model, "config", None), "id2label", None) or {}).items()}
    wrong = [name for name in names.values() if name != "O" and not name.startswith(("B-", "I-"))]
    if not names or wrong:
        raise ConfigError(f"eval.metric entity_f1 reads BIO tags (O, B-type, I-type) from the model's config.id2label, "
                          f"which has {list(names.values())[:5]}...; give the teacher its tags (teacher.labels)")
    return names


def _retention(student: float, teacher: float) -> float | None:
    return None if teacher == 0 else round(student / teacher, 4)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML, as saved beside a run's outputs."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
