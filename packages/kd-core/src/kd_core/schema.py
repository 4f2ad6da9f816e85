"""The recipe schema: one YAML/JSON file that names every part of a run.

A recipe has the sections ``task``, ``data``, ``teacher``, ``student``, ``training``,
``distillation`` (a :class:`~kd_core.config.DistillationConfig`) and ``eval``;
:func:`load_recipe` reads, overrides and validates one, and resolves the local model paths it
names against its folder. What the runs do with a recipe is :mod:`kd_core.recipe`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, model_validator

from kd_core.config import ConfigModel, DistillationConfig
from kd_core.data import FORMAT_NAMES, resolve_path
from kd_core.errors import ConfigError
from kd_core.paths import resolve_model_path


class DataFile(ConfigModel):
    """One file: TSV, CSV, JSONL, CoNLL or plain text (one example per line, the column ``text``)
    with a text column (or a pair), a label column and, for a transfer set labelled by
    ``kd augment label``, a column of stored teacher logits. Or, for unlabelled text (task
    ``general``), several such files mixed by weight (``sources``)."""

    path: str | None = None
    text: str | list[str] = "text"
    label: str | None = None
    """The gold label column; without it the examples have no labels (a teacher-labelled transfer
    set, distilled with ``hard_label_weight: 0``)."""
    teacher_logits: str | None = None
    """The column of stored teacher logits (``teacher_logits`` as ``kd augment label`` writes it);
    distillers then use them instead of running the teacher for its logits."""
    limit: int | None = Field(None, ge=1)
    skip: int = Field(0, ge=0)
    """Rows passed over before reading (``limit`` counts after them): a held-out part of a file."""
    format: Literal[FORMAT_NAMES] = "auto"
    columns: list[str] | None = None
    """The column names, in order, of a TSV/CSV without a header row (CoLA's files), or the names
    of a CoNLL file's two columns (default ``tokens`` and ``tags``)."""
    select: dict[str, Any] | None = None
    """Read only the rows whose columns hold these values (``{source: imdb}``: the IMDB reviews of
    a file that also holds other sources). Read by task ``general``."""
    sources: list[DataFile] | None = None
    """Several files read as one corpus (task ``general``), each with its ``weight``; give either
    ``path`` or ``sources``."""
    weight: float = Field(1.0, gt=0)
    """In ``sources``: how many times the file's examples are read per epoch (2: twice; 0.5: a
    seeded half of them)."""

    @model_validator(mode="after")
    def _one_source(self) -> DataFile:
        if (self.path is None) == (self.sources is None):
            raise ValueError("give the path of a file, or sources (several files), not both")
        if self.sources is not None:
            if not self.sources:
                raise ValueError("sources: give at least one file")
            if any(source.sources is not None for source in self.sources):
                raise ValueError("sources: a source is one file (a path), not another list of sources")
        return self

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
    """Training, validation and evaluation data, the tokenizer's maximum length, and optional
    augmentation. ``validation`` (or ``validation_split``) is scored during training for every
    choice a run makes (the best checkpoint, early stopping); ``eval`` is the reported test set and
    is never used for choices."""

    train: DataFile
    validation: DataFile | None = None
    """The labelled set scored during training (``training.eval_steps``)."""
    validation_split: float | None = Field(None, gt=0, lt=1)
    """Or: this share of ``train`` held out as the validation set (a seeded split, the same for
    every training seed; question answering splits by question)."""
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
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("give data.validation (a file) or data.validation_split (a share of data.train), "
                             "not both")
        if self.validation_split is not None and self.augment is not None:
            raise ValueError("data.validation_split with data.augment: augmented rows grown from held-out ones would "
                             "leak into training; give the validation rows as their own file in data.validation")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether the data gives a validation set."""
        return self.validation is not None or self.validation_split is not None


class FinetuneSpec(ConfigModel):
    """How ``kd distill`` fine-tunes a teacher first (``teacher.finetune``): the recipe's
    ``training`` section with these fields replaced. ``num_epochs`` or ``num_steps`` replaces both
    of the recipe's. ``kd train`` on the same recipe uses the same settings."""

    num_epochs: int | None = Field(None, ge=1)
    num_steps: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    weight_decay: float | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    group_by_length: bool | None = None
    seed: int | None = None
    eval_steps: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _length(self) -> FinetuneSpec:
        if self.num_epochs is not None and self.num_steps is not None:
            raise ValueError("give num_epochs or num_steps, not both")
        return self

    def training(self, base: TrainingSpec) -> TrainingSpec:
        """``base`` with this spec's fields in place of its own."""
        update = {k: v for k, v in self.to_dict().items() if v is not None}
        if "num_epochs" in update or "num_steps" in update:
            update = {"num_epochs": None, "num_steps": None, **update}
        return TrainingSpec.from_dict({**base.to_dict(), **update}, where="teacher.finetune")


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
    finetune: FinetuneSpec | None = None
    """Fine-tune this teacher on the recipe's data before distilling (``kd train`` as the first
    stage of ``kd distill``, saved under ``OUTPUT/teacher/`` and reused by later runs)."""
    allow_untrained_head: bool = False
    """Distill from a teacher whose task head is not in its checkpoint (random), with a warning:
    for tests of mechanics (resume, speed), never for results."""

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


DEFAULT_EPOCHS = 3
"""Epochs of training when a recipe gives neither ``num_epochs`` nor ``num_steps`` (transformers'
default too); with a validation set and ``patience``, give more and let early stopping end it."""
LEARNING_RATES = ((15_000_000, 3e-4), (60_000_000, 1e-4), (None, 3e-5))
"""The default learning rate by the trained model's parameters (up to, rate). Measured: students
of 3 x 144 (5.2 M) kept the majority class of CoLA and WNUT-16 at 1e-4 and learnt both at 3e-4
(benchmarks/general.py's suite); models of MiniLM-L6's size (22.7 M) fine-tune well at 1e-4; for
BERT-base and larger, the BERT paper's range (2e-5 to 5e-5)."""


def default_learning_rate(num_params: int) -> float:
    """The learning rate for a model of ``num_params`` parameters when a recipe gives none
    (:data:`LEARNING_RATES`)."""
    return next(rate for limit, rate in LEARNING_RATES if limit is None or num_params <= limit)


class TrainingSpec(ConfigModel):
    """Optimisation settings of a recipe. The budget is ``num_epochs`` (3 when neither it nor
    ``num_steps`` is given); the learning rate, when not given, follows the trained model's size
    (:func:`default_learning_rate`). With a validation set (``data.validation`` or
    ``data.validation_split``) the model is scored every ``eval_steps`` steps (or every epoch),
    the best weights are kept (``keep_best``) and ``patience`` stops training early."""

    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    num_steps: int | None = Field(None, ge=1)
    num_epochs: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    """None: :func:`default_learning_rate` of the trained model's parameter count."""
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
    eval_steps: int | None = Field(None, ge=1)
    """Score the validation set every that many optimizer steps (None: at the end of every epoch);
    the last step is always scored."""
    keep_best: bool | None = None
    """End with the weights of the best validation score (None: yes when there is a validation set)."""
    patience: int | None = Field(None, ge=1)
    """Stop after that many validation scores in a row without improvement (None: never early)."""
    min_delta: float = Field(0.0, ge=0)
    """The least gain over the best score that resets ``patience`` (the best kept is the best score)."""
    report_to: list[str] = Field(default_factory=list)
    """Experiment trackers that receive every metrics.jsonl record (``tensorboard``, or a plugin's;
    :mod:`kd_core.loggers`), writing under ``OUTPUT/logs``."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ``ddp`` (whole models on every process) or ``fsdp`` (FSDP2 shards of the
    student's and teachers' weights; :mod:`kd_core.sharding`)."""

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if self.num_steps is not None and self.num_epochs is not None:
            raise ValueError("give num_steps or num_epochs, not both")
        if self.num_steps is None and self.num_epochs is None:
            object.__setattr__(self, "num_epochs", DEFAULT_EPOCHS)
        return self

    @property
    def validates(self) -> bool:
        """Whether any validation setting is given (which needs a validation set)."""
        return (self.eval_steps is not None or bool(self.keep_best) or self.patience is not None
                or self.min_delta > 0)


class EvalSpec(ConfigModel):
    """How the report measures models: the metric and the batch size for latency."""

    metric: str | None = None
    """A registered metric (``kd plugins`` lists them) that the task can compute; the report's
    ``value`` and retention read it. Default: the task's own first metric (``accuracy`` for
    sequence classification)."""
    batch_size: int = Field(32, ge=1)


class TaskSpec(ConfigModel):
    """One task of a multi-task recipe: its data, its teacher and how it is measured."""

    data: DataSpec
    teacher: ModelSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)


class Recipe(ConfigModel):
    """A whole run. See docs/recipes.md for a commented example.

    Either ``data`` and ``teacher`` (one task), or ``tasks`` (name -> data, teacher, eval): a
    multi-task distillation into one student with a head per task.
    """

    task: str
    task_options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the task (``doc_stride: 64`` for question_answering,
    ``mlm_probability: 0.15`` for general); empty: the registered task as it is."""
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
            validated = [name for name, spec in self.tasks.items() if spec.data.has_validation]
            if validated or self.training.validates:
                raise ValueError(f"{'tasks.' + validated[0] + '.data' if validated else 'training'}: evaluation "
                                 "during training is not available for multi-task recipes yet; leave out "
                                 "validation, eval_steps, keep_best and patience")
            return self
        if self.data is None or self.teacher is None:
            raise ValueError("give data and teacher (one task) or tasks (several)")
        if not self.teachers:
            raise ValueError("teacher: give a teacher, or a list of at least one")
        if self.training.validates and not self.data.has_validation:
            raise ValueError("training.eval_steps, keep_best and patience score a validation set: give "
                             "data.validation (a file) or data.validation_split (a share of data.train, e.g. 0.1)")
        names = [teacher_name(spec, i) for i, spec in enumerate(self.teachers)]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher: the teachers' names must be unique, got {names}")
        return self


def teacher_name(spec: ModelSpec, index: int) -> str:
    """The name a teacher goes by in reports and folders: its ``name``, else its position."""
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
    recipe = Recipe.from_dict(data, where=str(path))
    return resolve_models(recipe, folder), folder


def resolve_models(recipe: Recipe, folder: Path | None) -> Recipe:
    """The recipe with every model it names that is a local path made absolute: relative paths
    resolve against the recipe's ``folder``, then the working directory, as data paths do. A
    name that looks like a path and exists nowhere fails here, naming its field."""
    def resolved(spec: ConfigModel, where: str) -> ConfigModel:
        if spec.model is None or spec.model.startswith("package:"):
            return spec
        return spec.model_copy(update={"model": resolve_model_path(spec.model, folder, where)})

    update: dict[str, Any] = {
        "student": resolved(recipe.student, "student.model"),
        "assistants": [resolved(s, f"assistants.{i}.model") for i, s in enumerate(recipe.assistants)],
    }
    if recipe.tasks is not None:
        update["tasks"] = {name: t.model_copy(update={"teacher": resolved(t.teacher, f"tasks.{name}.teacher.model")})
                           for name, t in recipe.tasks.items()}
    elif isinstance(recipe.teacher, list):
        update["teacher"] = [resolved(t, f"teacher.{i}.model") for i, t in enumerate(recipe.teacher)]
    else:
        update["teacher"] = resolved(recipe.teacher, "teacher.model")
    return recipe.model_copy(update=update)


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


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML, as saved beside a run's outputs."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)

