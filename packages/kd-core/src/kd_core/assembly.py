"""Building a recipe's parts: its task, teachers, students, loaders, distillers and optimizer.

The runs (:mod:`kd_core.recipe`) and the check that precedes them (:mod:`kd_core.preflight`)
build through these functions, so what ``kd distill --check`` validates is what the run builds.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from kd_core.config import TrainingConfig
from kd_core.distillers import BasicTrainer, GeneralDistiller, MultiTaskDistiller, MultiTeacherDistiller
from kd_core.distributed import launched_world_size
from kd_core.engine import TrainResult
from kd_core.errors import ConfigError
from kd_core.features import Adaptor
from kd_core.inference import RunSettings
from kd_core.plugins import lookup
from kd_core.sampling import LengthGroupedBatchSampler, example_length
from kd_core.schema import (
    InitSpec,
    ModelSpec,
    Recipe,
    StudentSpec,
    TaskSpec,
    TrainingSpec,
    default_learning_rate,
    teacher_name,
)
from kd_core.tasks import PreparedData, Task, eval_metrics, get_metric, get_task
from kd_core.validation import Validation

NUM_BATCHES = "num_batches"
"""The initializer option that says how many batches of ``data.train`` it reads (``etd_impt``'s);
it may not ask for more than the data gives."""


def task_for(recipe: Recipe) -> Task:
    """The registered task the recipe names, built anew with its ``task_options`` when it has some
    (the options are the keyword arguments of the task's class)."""
    task = get_task(recipe.task)
    if not recipe.task_options:
        return task
    accepted = [name for name, p in inspect.signature(type(task)).parameters.items()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(recipe.task_options) - set(accepted))
    if unknown:
        raise ConfigError(f"task_options: task {recipe.task} has no option {', '.join(unknown)}; its options are "
                          f"{', '.join(accepted) or 'none'}")
    try:
        return type(task)(**recipe.task_options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"task_options: {exc}") from None


def load_teachers(task: Task, recipe: Recipe, train_head: bool = False) -> dict[str, nn.Module]:
    """The recipe's teachers by name (each task's, in a multi-task recipe). ``train_head`` accepts
    teachers whose head is yet to be trained (``kd train``, or a teacher with ``finetune``)."""
    if recipe.tasks is not None:
        return {name: load_teacher(task, spec.teacher, train_head) for name, spec in recipe.tasks.items()}
    return {teacher_name(spec, i): load_teacher(task, spec, train_head) for i, spec in enumerate(recipe.teachers)}


def load_teacher(task: Task, spec: ModelSpec, train_head: bool = False) -> nn.Module:
    """One teacher; a teacher that the recipe fine-tunes first may lack a trained head."""
    return task.load_teacher(spec, train_head=train_head or spec.finetune is not None)


def check_trainable(recipe: Recipe) -> None:
    """What ``kd train`` refuses: several teachers or tasks, and augmented data (no gold labels)."""
    if len(recipe.teachers) > 1 or recipe.tasks is not None:
        raise ConfigError("kd train fine-tunes one teacher on one task; give teacher a single model and data "
                          "(write one recipe per teacher or task)")
    if recipe.data.augment is not None:
        raise ConfigError("data.augment: kd train fine-tunes on gold labels; augmented rows have none (remove augment)")


def teacher_recipe(recipe: Recipe, spec: ModelSpec, task_spec: TaskSpec | None = None) -> Recipe:
    """The ``kd train`` recipe that fine-tunes the teacher ``spec`` of ``recipe`` (of the task
    ``task_spec`` in a multi-task recipe): the recipe's data without augmentation, its training
    section with ``spec.finetune``'s fields in place, and the teacher without ``finetune``."""
    data = (task_spec.data if task_spec is not None else recipe.data).model_copy(update={"augment": None})
    training = recipe.training if spec.finetune is None else spec.finetune.training(recipe.training)
    # a teacher checkpoint is large: one per epoch, only the newest kept
    training = training.model_copy(update={"ckpt_steps": None, "keep_checkpoints": 1}) if spec.finetune else training
    return Recipe.from_dict({
        "task": recipe.task, "task_options": recipe.task_options, "data": data.to_dict(),
        "training": training.to_dict(),
        "teacher": spec.model_copy(update={"finetune": None, "name": None}).to_dict(),
        "eval": (task_spec.eval if task_spec is not None else recipe.eval).to_dict(),
    }, where="teacher.finetune")


def training_config(training: TrainingSpec, output_dir: Path) -> TrainingConfig:
    """The engine's TrainingConfig for a recipe's ``training`` section."""
    return TrainingConfig(
        output_dir=str(output_dir), device=training.device, ckpt_steps=training.ckpt_steps, seed=training.seed,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        mixed_precision=training.mixed_precision, progress=training.progress,
        keep_checkpoints=training.keep_checkpoints, skip_nonfinite=training.skip_nonfinite,
        report_to=training.report_to, distributed=training.distributed,
    )


def train_loader(data: PreparedData, training: TrainingSpec) -> DataLoader:
    """The training data in seeded shuffled batches of the recipe's size (grouped by length when
    the recipe asks for it). The sampler draws one permutation per epoch from a generator seeded
    with ``training.seed``, as :class:`~kd_core.distributed.ShardedLoader` does under torchrun, so
    one process with batch N x b sees the batches that N processes with batch b share."""
    generator = torch.Generator().manual_seed(training.seed)
    if not training.group_by_length:
        return DataLoader(data.train, batch_size=training.batch_size, sampler=RandomSampler(data.train,
                          generator=generator), collate_fn=data.collate)
    if launched_world_size() > 1:
        raise ConfigError("training.group_by_length: distributed runs shard one random permutation per epoch and "
                          "do not group by length yet; set group_by_length: false under torchrun")
    lengths = [example_length(data.train[i], i) for i in range(len(data.train))]
    return DataLoader(data.train, batch_sampler=LengthGroupedBatchSampler(lengths, training.batch_size, generator),
                      collate_fn=data.collate)


def initializer_for(init: InitSpec, batches: int, where: str = "student.init") -> Any:
    """The registered initializer ``init`` names, after checking its options against its signature
    and its ``num_batches`` against the ``batches`` the training data gives."""
    try:
        initializer = lookup("initializers", init.name)
    except LookupError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        inspect.signature(initializer).bind(None, None, data=None, **init.options)
    except TypeError as exc:
        raise ConfigError(f"{where} {init.name!r}: {exc}") from None
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        pass
    try:
        default = inspect.signature(initializer).parameters.get(NUM_BATCHES)
    except ValueError:
        default = None
    wanted = init.options.get(NUM_BATCHES, default.default if default is not None else None)
    if wanted is not None and (not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1):
        raise ConfigError(f"{where}.{NUM_BATCHES}: give a whole number of batches (1 or more), got {wanted!r}")
    if wanted is not None and wanted > batches:
        raise ConfigError(f"{where}.{NUM_BATCHES}: {init.name!r} asks for {wanted} batches of data.train, which "
                          f"gives only {batches} at training.batch_size; lower {NUM_BATCHES} to at most {batches}, "
                          "lower the batch size, or give more training rows")
    return initializer


def build_student(task: Task, spec: StudentSpec, teacher: nn.Module, data: PreparedData,
                  training: TrainingSpec, where: str = "student") -> nn.Module:
    """The student the spec describes, initialised by its ``init`` (which may read batches of the
    training data, e.g. ETD's Taylor importance)."""
    student = task.build_student(spec, teacher)
    init = spec.initializer
    if init is None:
        return student
    loader = train_loader(data, training)
    initializer = initializer_for(init, len(loader), f"{where}.init")
    try:
        return initializer(teacher, student, data=loader, **init.options)
    except TypeError as exc:
        raise ConfigError(f"{where}.init {init.name!r}: {exc}") from None


def make_distiller(task: Task, recipe: Recipe, teachers: dict[str, nn.Module], student: nn.Module,
                   output_dir: Path) -> GeneralDistiller:
    """The distiller of one stage: a GeneralDistiller from one teacher, a MultiTeacherDistiller
    from several (the first shapes the student)."""
    config = training_config(recipe.training, output_dir)
    if len(teachers) == 1:
        first = next(iter(teachers.values()))
        return GeneralDistiller(config, recipe.distillation, first, student, task.adaptor(first),
                                task.adaptor(student))
    return MultiTeacherDistiller(config, recipe.distillation, teachers, student,
                                 [task.adaptor(t) for t in teachers.values()], task.adaptor(student))


def make_multitask_distiller(task: Task, recipe: Recipe, teachers: dict[str, nn.Module], student: nn.Module,
                             output_dir: Path) -> MultiTaskDistiller:
    """The MultiTaskDistiller of a multi-task recipe: each task's teacher into the student's head for it."""
    heads = {name: task.head_adaptor(student, name) for name in teachers}
    return MultiTaskDistiller(training_config(recipe.training, output_dir), recipe.distillation, teachers, student,
                              {name: task.adaptor(t) for name, t in teachers.items()}, heads)


def learning_rate(training: TrainingSpec, model: nn.Module) -> float:
    """The recipe's learning rate, or the default for ``model``'s size when it gives none."""
    return training.learning_rate or default_learning_rate(sum(p.numel() for p in model.parameters()))


def validation_metrics(task: Task, recipe: Recipe) -> list[str]:
    """The metrics a validation set is scored with, the one that decides first: the recipe's
    ``eval.metric`` (the task's first by default); a task without metrics (``general``) cannot
    score one."""
    names = eval_metrics(task, recipe.eval.metric)
    if not names:
        raise ConfigError(f"data.validation: task {recipe.task} has no metric to score a validation set with; "
                          "leave validation out")
    return names


def validation_for(task: Task, recipe: Recipe, model: nn.Module, adaptor: Adaptor,
                   data: PreparedData) -> Validation | None:
    """The evaluation during training of ``model`` that the recipe asks for: its eval metric on
    ``data.validation`` every ``training.eval_steps`` steps (or every epoch); None without a
    validation set."""
    if data.validation is None:
        return None
    names = validation_metrics(task, recipe)
    metric = get_metric(names[0], task, recipe.task)
    t = recipe.training
    settings = RunSettings(batch_size=t.eval_batch_size or recipe.eval.batch_size, device=t.device)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        return task.evaluate(trained, adaptor, data.validation, data.collate, names, settings).values

    return Validation(evaluate, names[0], metric.greater_is_better, eval_steps=t.eval_steps, patience=t.patience,
                      min_delta=t.min_delta, keep_best=t.keep_best is not False)


def optimize(engine: BasicTrainer | GeneralDistiller | MultiTaskDistiller, model: nn.Module,
             training: TrainingSpec, train_data: Any, batches_per_epoch: int, resume: bool,
             validation: Validation | None = None,
             batch_postprocessor: Callable[[Any], Any] | None = None) -> TrainResult:
    """AdamW with linear warm-up and decay over the recipe's steps (or epochs of
    ``batches_per_epoch`` batches), then ``engine.train`` on ``train_data`` (each batch through
    ``batch_postprocessor`` first, when given)."""
    t = training
    total = t.num_steps or t.num_epochs * math.ceil(batches_per_epoch / t.gradient_accumulation_steps)
    # the fused kernel updates every parameter in one pass: about 3x faster than foreach on CPU
    fused = torch.device(t.device).type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate(t, model), weight_decay=t.weight_decay,
                                  fused=fused)
    return engine.train(
        optimizer, train_data, num_epochs=t.num_epochs, num_steps=t.num_steps,
        scheduler_class=linear_schedule_with_warmup,
        scheduler_args={"num_warmup_steps": int(t.warmup_ratio * total), "num_training_steps": total},
        max_grad_norm=t.max_grad_norm, resume=resume, validation=validation,
        batch_postprocessor=batch_postprocessor,
    )


def fit(engine: BasicTrainer | GeneralDistiller, model: nn.Module, training: TrainingSpec,
        data: PreparedData, resume: bool, validation: Validation | None = None,
        batch_postprocessor: Callable[[Any], Any] | None = None) -> TrainResult:
    """:func:`optimize` over the seeded training loader of ``data``."""
    loader = train_loader(data, training)
    return optimize(engine, model, training, loader, len(loader), resume, validation, batch_postprocessor)


def linear_schedule_with_warmup(optimizer: torch.optim.Optimizer, num_warmup_steps: int,
                                num_training_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base learning rate, then linear decay to zero (BERT's schedule)."""
    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return (step + 1) / (num_warmup_steps + 1)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
