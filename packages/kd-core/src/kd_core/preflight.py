"""``kd distill --check``: everything a run would find wrong, found in seconds, before any
expensive stage (fine-tuning, augmentation, labelling, training).

:func:`check_recipe` loads the teachers, reads and tokenizes the gold data (every row, so a bad
label or line is found now), builds each student of the chain from its config through the same
functions the run uses, validates its initializer's options, compiles the loss plan, and runs one
batch forward through teacher and student and through every loss term. What it prints names each
term with its loss, weight, temperature, the layers and shapes it reads on both sides, its
projection and its value on that batch. ``kd distill`` runs the same check first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kd_core.assembly import (
    check_trainable,
    initializer_for,
    learning_rate,
    load_teachers,
    make_distiller,
    make_multitask_distiller,
    task_for,
    teacher_recipe,
    train_loader,
    validation_metrics,
)
from kd_core.engine import seed_everything
from kd_core.errors import ConfigError
from kd_core.features import FeatureNeeds, Features, LinearLogits, to_device, trim_padding
from kd_core.loss_plan import LossPlan, hard_label_loss
from kd_core.plugins import lookup
from kd_core.schema import Recipe, TrainingSpec
from kd_core.sharding import refuse_fused_linear, refuse_unsharded
from kd_core.tasks import PreparedData, Task, eval_metrics, get_metric, prepare_data


@dataclass
class Check:
    """What :func:`check_recipe` built (the run reuses the teachers and the gold data) and what it
    found, as lines of text."""

    teachers: dict[str, nn.Module]
    data: PreparedData | None
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The plan, as ``kd distill --check`` prints it."""
        return "\n".join(self.lines)


def check_recipe(recipe: Recipe, base_dir: Path | None = None) -> Check:
    """Validate every part of a ``kd distill`` recipe on one batch; raise the first error found
    (a :class:`~kd_core.errors.ConfigError` naming the field), or return the plan."""
    started = time.perf_counter()
    task = task_for(recipe)
    _check_metrics(task, recipe)
    _check_loggers(recipe)
    _check_augment(recipe)
    _check_sharding(recipe)
    seed_everything(recipe.training.seed)  # a head the teacher lacks starts the same in every run
    teachers = load_teachers(task, recipe)
    if recipe.tasks is not None:
        check = _check_multitask(task, recipe, teachers, base_dir)
    else:
        data = prepare_data(task, recipe.data.model_copy(update={"augment": None}), recipe.primary_teacher, base_dir)
        check = Check(teachers, data, [_data_line(recipe, data)])
        for spec, teacher in zip(recipe.teachers, teachers.values(), strict=True):
            check.lines.append(_teacher_line(spec, teacher))
        current = teachers
        stages = [*((f"assistant {i + 1}", f"assistants.{i}", s) for i, s in enumerate(recipe.assistants)),
                  ("student", "student", recipe.student)]
        for title, where, spec in stages:
            first = next(iter(current.values()))
            student = task.build_student(spec, first)
            batches = len(train_loader(data, recipe.training))
            if spec.initializer is not None:
                initializer_for(spec.initializer, batches, f"{where}.init")
            distiller = make_distiller(task, recipe, current, student, Path("."))
            check.lines.append(_model_line(title, student, first, spec.initializer.name if spec.initializer else None))
            check.lines += _run_plan(distiller.loss_plan, distiller.device, current, student,
                                     lambda batch, d=distiller: d.teacher_features(batch),
                                     lambda batch, d=distiller, s=student: d.adaptor_S.run(s, batch,
                                                                                           d.loss_plan.needs_S),
                                     _first_batch(data, recipe))
            current = {title: student}
        check.lines.append(_training_line(recipe.training, student, data))
    check.lines.append(f"check passed in {time.perf_counter() - started:.1f} s")
    return check


def check_training(recipe: Recipe, base_dir: Path | None = None) -> Check:
    """The check of a ``kd train`` recipe: its teacher (with ``finetune``'s settings), its gold
    data, and the supervised loss of one batch."""
    started = time.perf_counter()
    task = task_for(recipe)
    _check_metrics(task, recipe)
    _check_loggers(recipe)
    check_trainable(recipe)
    recipe = teacher_recipe(recipe, recipe.primary_teacher)
    model = task.load_teacher(recipe.primary_teacher, train_head=True)
    data = prepare_data(task, recipe.data, recipe.primary_teacher, base_dir)
    adaptor = task.adaptor(model)
    batch = to_device(_first_batch(data, recipe), torch.device(recipe.training.device))
    model.to(recipe.training.device).eval()
    with torch.no_grad():
        features = adaptor.run(model, batch, FeatureNeeds({"logits": set()}))
        loss = hard_label_loss(features)
    lines = [_data_line(recipe, data), _teacher_line(recipe.primary_teacher, model),
             _training_line(recipe.training, model, data),
             f"  one batch: logits {_shape(features['logits'])}, loss {float(loss):.4g}",
             f"check passed in {time.perf_counter() - started:.1f} s"]
    return Check({"teacher": model}, data, lines)


def _check_metrics(task: Task, recipe: Recipe) -> None:
    """Every metric the report will compute is registered and reads what the task gives."""
    specs = [spec.eval for spec in recipe.tasks.values()] if recipe.tasks is not None else [recipe.eval]
    for spec in specs:
        for name in eval_metrics(task, spec.metric):
            get_metric(name, task, recipe.task)
    if recipe.data is not None and recipe.data.has_validation:
        validation_metrics(task, recipe)


def _check_loggers(recipe: Recipe) -> None:
    """Every tracker of ``training.report_to`` is registered (an unknown one fails naming those
    that are)."""
    for name in recipe.training.report_to:
        lookup("loggers", name)


def _check_sharding(recipe: Recipe) -> None:
    """What ``training.distributed: fsdp`` cannot run (:mod:`kd_core.sharding`), said before anything runs."""
    if recipe.training.distributed != "fsdp":
        return
    data, distillation = recipe.data, recipe.distillation
    refuse_fused_linear(distillation.fused_linear)
    refuse_unsharded({
        "data.validation (scored during training on the main process alone)":
            data is not None and (data.validation is not None or data.validation_split is not None),
        "the teacher cache (distillation.is_caching_logits, teacher_cache_dir: its hits differ between processes)":
            bool(distillation.is_caching_logits or distillation.teacher_cache_dir)})


def _check_augment(recipe: Recipe) -> None:
    """What ``data.augment`` cannot be combined with, said before it runs."""
    augment = recipe.data.augment if recipe.data is not None else None
    if augment is None:
        return
    if len(recipe.teachers) > 1 or recipe.assistants:
        raise ConfigError("data.augment: transfer sets are labelled by one teacher; a recipe with several teachers "
                          "or with assistants cannot use it yet. Grow the data with `kd augment` and give the "
                          "(unlabelled) file as data.train: the teachers then run on every batch")
    if recipe.distillation.hard_label_weight != 0:
        raise ConfigError("data.augment: the new rows of a transfer set have no gold labels; "
                          "set distillation.hard_label_weight: 0")
    if augment.augmenter is not None:
        try:
            lookup("augmenters", augment.spec.name)
        except LookupError as exc:
            raise ConfigError(f"data.augment.augmenter: {exc}") from None


def _check_multitask(task: Task, recipe: Recipe, teachers: dict[str, nn.Module], base_dir: Path | None) -> Check:
    data = {name: prepare_data(task, spec.data, spec.teacher, base_dir) for name, spec in recipe.tasks.items()}
    check = Check(teachers, None)
    student = task.build_multitask_student(recipe.student, teachers)
    distiller = make_multitask_distiller(task, recipe, teachers, student, Path("."))
    for name, spec in recipe.tasks.items():
        check.lines.append(f"task {name}: {_data_line(recipe, data[name])}")
        check.lines.append(_teacher_line(spec.teacher, teachers[name]))
        check.lines += _run_plan(
            distiller.loss_plan, distiller.device, {name: teachers[name]}, student,
            lambda batch, n=name: distiller.run_teacher(n, distiller.models_T[n], distiller.adaptors_T[n], batch,
                                                        distiller.loss_plan.needs_T),
            lambda batch, n=name: distiller.adaptors_S[n].run(student, batch, distiller.loss_plan.needs_S),
            _first_batch(data[name], recipe))
    check.lines.insert(0, _model_line("student", student, next(iter(teachers.values())), None))
    return check


def _first_batch(data: PreparedData, recipe: Recipe) -> Any:
    """The first ``training.batch_size`` training examples as one batch, as the engine feeds it."""
    loader = DataLoader(data.train, batch_size=recipe.training.batch_size, shuffle=False, collate_fn=data.collate)
    return trim_padding(next(iter(loader)))


def _run_plan(plan: LossPlan, device: torch.device, teachers: dict[str, nn.Module], student: nn.Module,
              teacher_features: Any, student_features: Any, batch: Any) -> list[str]:
    """One forward of each side and of every term on ``batch``; the table of terms."""
    for model in (*teachers.values(), student):
        model.to(device).eval()
    plan.to(device)
    batch = to_device(batch, device)
    with torch.no_grad():
        features_T = teacher_features(batch)
        features_S = student_features(batch)
        terms = plan(features_S, features_T, 0.0)
    shape = "x".join(str(n) for n in batch["input_ids"].shape) if "input_ids" in batch else "?"
    rows = [("term", "loss", "weight", "T", "student reads", "teacher reads", "value")]
    config = plan.config
    if plan.kd_loss is not None:
        rows.append(("kd", config.kd_loss_type, f"{config.kd_loss_weight:g}", f"{config.temperature:g}",
                     _describe(features_S, "logits", None), _describe(features_T, "logits", None),
                     _value(terms, "kd")))
    if plan.uses_hard_labels:
        rows.append(("hard_label", "cross-entropy", f"{config.hard_label_weight:g}", "",
                     _describe(features_S, "logits", None), "labels", _value(terms, "hard_label")))
    projections = []
    for term in plan.matches:
        match = term.match
        side_T = features_T.get("teachers", {}).get(str(match.teacher or features_T.get("first_teacher")), features_T)
        rows.append((term.name, match.loss, f"{match.weight:g}", "",
                     _describe(features_S, match.feature, match.layer_S),
                     _describe(side_T, match.feature, match.layer_T),
                     _value(terms, term.name)))
        key = str(term.index)
        if key in plan.projections:
            count = sum(p.numel() for p in plan.projections[key].parameters())
            projections.append(f"{term.name}: {match.proj[0]} {match.proj[1]} -> {match.proj[2]} "
                               f"({count:,} parameters, trained with the student)")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"  one batch of {shape} tokens through teacher and student:"]
    lines += ["    " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    lines += [f"    projection {p}" for p in projections]
    return lines


def _value(terms: dict[str, torch.Tensor], name: str) -> str:
    return f"{float(terms[name]):.4g}" if name in terms else "-"


def _describe(features: Features, feature: str | list[str], layer: int | list[int] | None) -> str:
    """``hidden[6] 16x37x384``: a feature, its layer(s) and shape(s) as a term reads them."""
    if isinstance(feature, list):
        return ", ".join(_describe(features, f, layer) for f in feature)
    value = features.get(feature)
    if layer is None:
        return f"{feature} {_shape(value)}"
    layers = layer if isinstance(layer, list) else [layer]
    return ", ".join(f"{feature}[{i}] {_shape(value[i] if value is not None else None)}" for i in layers)


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "x".join(str(n) for n in value.shape)
    if isinstance(value, LinearLogits):
        return f"{_shape(value.hidden)} hidden states x {_shape(value.weight)} head"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shape(v) for v in value) + "]"
    return "-"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _data_line(recipe: Recipe, data: PreparedData) -> str:
    evaluation = f", {len(data.eval)} eval rows" if data.eval is not None else ", no eval set"
    extra = "".join(f", {len(d)} {name} rows" for name, d in data.extra_eval.items())
    validation = ""
    if data.validation is not None:
        held = " (held out of data.train)" if recipe.data.validation_split is not None else ""
        validation = f", {len(data.validation)} validation rows{held}"
    return f"{recipe.task}: {len(data.train)} training rows{validation}{evaluation}{extra}"


def _training_line(t: TrainingSpec, model: nn.Module, data: PreparedData) -> str:
    """The budget, the learning rate (and where it came from) and the evaluation during training."""
    budget = f"{t.num_epochs} epoch(s)" if t.num_epochs else f"{t.num_steps} steps"
    rate = f"{learning_rate(t, model):g}" + ("" if t.learning_rate else " (the default for its size)")
    line = f"  training: {budget} at learning rate {rate}, batch size {t.batch_size}"
    if data.validation is not None:
        every = f"every {t.eval_steps} steps" if t.eval_steps else "every epoch"
        stop = f", stops after {t.patience} without improvement" if t.patience else ""
        line += f"; validation scored {every}, {'the best' if t.keep_best is not False else 'the last'} kept{stop}"
    if t.report_to:
        line += f"; logged to metrics.jsonl and {', '.join(t.report_to)}"
    return line


def _teacher_line(spec: Any, teacher: nn.Module) -> str:
    finetune = ""
    if spec.finetune is not None:
        settings = ", ".join(f"{k} {v}" for k, v in spec.finetune.to_dict().items() if v is not None)
        finetune = f"; fine-tuned first ({settings or 'the recipe training settings'})"
    return f"teacher {spec.name or spec.model}: {type(teacher).__name__}, {_params(teacher):,} params{finetune}"


def _model_line(title: str, model: nn.Module, teacher: nn.Module, init: str | None) -> str:
    ratio = _params(teacher) / max(1, _params(model))
    return (f"{title}: {type(model).__name__}, {_params(model):,} params ({ratio:.2f}x fewer than its teacher), "
            f"init {init or 'random'}")
