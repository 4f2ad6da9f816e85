"""The runs a recipe drives: ``kd train`` (:func:`run_train`, fine-tune the teacher) and
``kd distill`` (:func:`run_distill`: check the recipe, fine-tune teachers that ask for it, grow
the transfer set, distill through any assistants, measure).

The schema of a recipe is :mod:`kd_core.schema`; building its parts is :mod:`kd_core.assembly`;
measuring models is :mod:`kd_core.measure`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from kd_core.assembly import (
    build_student,
    check_trainable,
    fit,
    learning_rate,
    load_teachers,
    make_distiller,
    make_multitask_distiller,
    optimize,
    task_for,
    teacher_recipe,
    train_loader,
    training_config,
    validation_for,
)
from kd_core.augmentation import augment_file
from kd_core.checkpoint import list_checkpoints, write_text_atomic
from kd_core.data import read_records, resolve_path
from kd_core.distillers import BasicTrainer
from kd_core.distributed import is_main_process, launched_world_size
from kd_core.engine import CHECKPOINTS_DIR, TrainResult, seed_everything
from kd_core.errors import ConfigError
from kd_core.features import TEACHER_LOGITS
from kd_core.labelling import label_file
from kd_core.measure import at_chance_warning, measure, measure_against
from kd_core.model_card import write_model_card
from kd_core.preflight import Check, check_recipe
from kd_core.schema import DataFile, DataSpec, ModelSpec, Recipe, StudentSpec, TaskSpec, teacher_name
from kd_core.tasks import PreparedData, Task, batch_postprocessor, eval_metrics, prepare_data
from kd_core.validation import BEST_DIR

REPORT_FILE = "report.json"
STAGE_DONE = "STAGE_COMPLETE"
"""The file a finished stage (a fine-tuned teacher, an assistant) leaves in its folder."""
STAGE_SETTINGS = "STAGE_SETTINGS"
"""The settings a teacher's fine-tuning stage was started with: a resumed run continues it only
under the same settings."""
TRANSFER_DIR = "transfer"


def run_train(recipe: Recipe, output_dir: str | Path, base_dir: Path | None = None,
              resume: bool = False) -> dict[str, Any]:
    """Fine-tune the recipe's teacher on its labelled data (``kd train``), with the settings of
    its ``finetune`` section when it has one (so that ``kd train`` and the first stage of
    ``kd distill`` train the same model).

    Writes ``output_dir/model`` (the trained model: the best on the validation set when there is
    one), ``metrics.jsonl``, checkpoints and ``report.json`` with the eval metric (and the
    validation's best step); returns the report.
    """
    output_dir = Path(output_dir)
    task = task_for(recipe)
    check_trainable(recipe)
    recipe = teacher_recipe(recipe, recipe.primary_teacher)
    seed_everything(recipe.training.seed)
    model = task.load_teacher(recipe.primary_teacher, train_head=True)
    data = prepare_data(task, recipe.data, recipe.primary_teacher, base_dir)
    adaptor = task.adaptor(model)
    trainer = BasicTrainer(training_config(recipe.training, output_dir), model, adaptor)
    result = fit(trainer, model, recipe.training, data, resume, validation_for(task, recipe, model, adaptor, data))
    if not is_main_process():
        return {}
    task.save_model(model, output_dir / "model", recipe.primary_teacher)
    metric = next(iter(eval_metrics(task, recipe.eval.metric)), None)
    report: dict[str, Any] = {"task": recipe.task, "metric": metric,
                              **_trained(result, learning_rate(recipe.training, model))}
    if data.eval is not None:
        report["model"] = measure(task, model, adaptor, data, recipe)
        _warn_at_chance(report, report["model"], metric, "fine-tuned model",
                        "Train it longer or at another learning rate, and check the labels of data.train")
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    write_model_card(output_dir / "model", recipe, report, "fine-tuned", getattr(task, "pipeline_tag", None))
    return report


def finetune_teachers(recipe: Recipe, output_dir: Path, base_dir: Path | None, resume: bool) -> Recipe:
    """The recipe with every teacher that has a ``finetune`` section replaced by the model that
    ``kd train`` makes of it, in ``output_dir/teacher`` (``teacher-NAME`` when there are
    several, ``teacher-TASK`` per task). A folder that holds the finished training of the same
    settings is reused; an unfinished one resumes from its checkpoint with ``resume``."""
    if recipe.tasks is not None:
        tasks = {name: spec.model_copy(update={"teacher": _finetuned(
                     recipe, spec.teacher, output_dir / f"teacher-{name}", base_dir, resume, spec)})
                 for name, spec in recipe.tasks.items()}
        return recipe.model_copy(update={"tasks": tasks})
    teachers = recipe.teachers
    folders = ["teacher"] if len(teachers) == 1 else [f"teacher-{teacher_name(s, i)}" for i, s in enumerate(teachers)]
    done = [_finetuned(recipe, spec, output_dir / folder, base_dir, resume) for spec, folder in zip(teachers, folders,
                                                                                                  strict=True)]
    return recipe.model_copy(update={"teacher": done if isinstance(recipe.teacher, list) else done[0]})


def _finetuned(recipe: Recipe, spec: ModelSpec, directory: Path, base_dir: Path | None, resume: bool,
               task_spec: TaskSpec | None = None) -> ModelSpec:
    if spec.finetune is None:
        return spec
    trained = spec.model_copy(update={"model": str((directory / "model").resolve()), "finetune": None})
    stage = teacher_recipe(recipe, spec, task_spec)
    fingerprint = _training_fingerprint(stage)
    marker = directory / STAGE_DONE
    if marker.is_file() and marker.read_text(encoding="utf-8") == fingerprint:
        return trained
    if launched_world_size() > 1:
        raise ConfigError(f"teacher.finetune: under torchrun, fine-tune the teacher first (kd train RECIPE -o "
                          f"{directory}), then remove teacher.finetune and give {directory / 'model'} as "
                          "teacher.model")
    started = directory / STAGE_SETTINGS
    same = started.is_file() and started.read_text(encoding="utf-8") == fingerprint
    if resume and not same and started.is_file():
        warnings.warn(f"--resume: the teacher's fine-tuning settings changed since {directory} was started; "
                      "fine-tuning it afresh", stacklevel=2)
    write_text_atomic(started, fingerprint)
    run_train(stage, directory, base_dir, resume=same and _resumable(directory, resume))
    write_text_atomic(marker, fingerprint)
    for folder in (CHECKPOINTS_DIR, BEST_DIR):  # only an unfinished stage resumes from them
        shutil.rmtree(directory / folder, ignore_errors=True)
    return trained


def _training_fingerprint(stage: Recipe) -> str:
    """What decides the fine-tuned teacher: the stage's recipe without what only shows or
    measures it (progress bars, trackers, the device, the eval sets)."""
    settings = stage.to_dict()
    settings["training"] = {k: v for k, v in settings["training"].items()
                            if k not in ("progress", "device", "report_to")}
    settings["data"] = {k: v for k, v in settings["data"].items() if k not in ("eval", "extra_eval")}
    settings.pop("eval", None)
    return json.dumps(settings, sort_keys=True)


def run_distill(recipe: Recipe, output_dir: str | Path, base_dir: Path | None = None,
                resume: bool = False, teacher_result: dict[str, Any] | None = None,
                checked: Check | None = None) -> dict[str, Any]:
    """Distill the recipe's teacher into its student (``kd distill``), through its assistants if
    it lists any: teacher -> assistant 1 -> ... -> student, each stage's student becoming the next
    stage's teacher (MiniLM section 3.3), all with the recipe's training and distillation settings.

    First the recipe is checked (:func:`~kd_core.preflight.check_recipe`, unless ``checked``
    holds that check already) and teachers with a ``finetune`` section are fine-tuned.

    Writes ``output_dir/student`` (save_pretrained, safetensors), ``metrics.jsonl``,
    ``checkpoints/`` and ``report.json``, and each assistant's run under ``output_dir/assistant-N``;
    returns the report. ``teacher_result`` is the teacher's :func:`~kd_core.measure.measure` on
    the same eval data when the caller already has it (the demo measures its teacher once for all
    its students); otherwise the teacher is measured here. With ``resume``, finished stages are
    loaded from their folders and the interrupted stage continues from its checkpoint.
    """
    output_dir = Path(output_dir)
    checked = checked or check_recipe(recipe, base_dir)
    finetuned = finetune_teachers(recipe, output_dir, base_dir, resume)
    if recipe.tasks is not None:
        fine_tuned = any(s.teacher.finetune for s in recipe.tasks.values())
        return run_multitask_distill(finetuned, output_dir, base_dir, resume, None if fine_tuned else checked.teachers)
    task = task_for(recipe)
    seed_everything(recipe.training.seed)
    teachers = checked.teachers
    if any(s.finetune for s in recipe.teachers):
        checked.teachers = {}  # the check's copies (not yet fine-tuned) give way to the trained ones
        teachers = load_teachers(task, finetuned)
    recipe = finetuned
    if recipe.assistants and recipe.data.train.teacher_logits:
        raise ConfigError("data.train.teacher_logits: stored logits are one teacher's, but with assistants each stage "
                          "distils from another teacher; leave teacher_logits out so every stage runs its teacher")
    # initializers that read batches (ETD's Taylor importance) need gold labels, which the new rows
    # of a transfer set do not have: they read the labelled training data, as the check prepared it
    init_data = checked.data
    data = init_data if recipe.data.augment is None else \
        prepare_data(task, transfer_set(task, recipe, output_dir, base_dir), recipe.primary_teacher, base_dir)
    assistants = []
    current = teachers
    for index, spec in enumerate(recipe.assistants, start=1):
        assistant = _assistant_stage(task, recipe, spec, current, data, init_data, output_dir / f"assistant-{index}",
                                     resume, f"assistants.{index - 1}")
        assistants.append(assistant)
        current = {"assistant": assistant}
    student, result = _distill_stage(task, recipe, recipe.student, current, data, init_data, output_dir, resume)
    if not is_main_process():
        return {}
    metric = next(iter(eval_metrics(task, recipe.eval.metric)), None)
    report: dict[str, Any] = {"task": recipe.task, "metric": metric,
                              **_trained(result, learning_rate(recipe.training, student))}
    if data.eval is not None:
        teacher = next(iter(teachers.values()))
        if teacher_result is None:
            teacher_result = measure(task, teacher, task.adaptor(teacher), data, recipe)
        report["teacher"] = teacher_result
        _warn_at_chance(report, teacher_result, metric)
        if len(teachers) > 1:
            report["teachers"] = {name: teacher_result if model is teacher else
                                  measure(task, model, task.adaptor(model), data, recipe)
                                  for name, model in teachers.items()}
        if assistants:
            report["assistants"] = [measure_against(task, a, task.adaptor(a), data, recipe, teacher_result)
                                    for a in assistants]
        report["student"] = measure_against(task, student, task.adaptor(student), data, recipe, teacher_result)
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    write_model_card(output_dir / "student", recipe, report, "student", getattr(task, "pipeline_tag", None))
    return report


def _trained(result: TrainResult, rate: float) -> dict[str, Any]:
    """What a report says of the training itself: its steps, its learning rate (the recipe's, or
    the default for the model's size) and, with a validation set, the best step and value, and
    whether it stopped early."""
    return {"steps": result.global_step, "learning_rate": rate,
            **({"validation": result.validation} if result.validation else {})}


def _warn_at_chance(report: dict[str, Any], result: dict[str, Any], metric: str, who: str = "teacher",
                    *hint: str) -> None:
    """Say so in the report, and as a warning, when ``result`` is at chance level."""
    message = at_chance_warning(result, metric, who, *hint)
    if message is not None:
        report.setdefault("warnings", []).append(message)
        warnings.warn(message, stacklevel=3)


def run_multitask_distill(recipe: Recipe, output_dir: Path, base_dir: Path | None = None,
                          resume: bool = False, teachers: dict[str, nn.Module] | None = None) -> dict[str, Any]:
    """Distill each task's teacher into one student with a head per task (``MultiTaskDistiller``);
    tasks are sampled in proportion to their number of batches. The report has, per task, the
    teacher's and the student's metric and the retention. ``teachers`` are the loaded teachers
    when the caller has them (the recipe's check)."""
    task = task_for(recipe)
    seed_everything(recipe.training.seed)
    augmented = [name for name, spec in recipe.tasks.items() if spec.data.augment is not None]
    if augmented:
        raise ConfigError(f"tasks.{augmented[0]}.data.augment: a multi-task recipe does not augment its tasks yet; "
                          "grow each task's data with `kd augment` and give the (unlabelled) file as that task's "
                          "data.train: its teacher then runs on every batch")
    teachers = teachers or load_teachers(task, recipe)
    data = {name: prepare_data(task, spec.data, spec.teacher, base_dir) for name, spec in recipe.tasks.items()}
    student = task.build_multitask_student(recipe.student, teachers)
    distiller = make_multitask_distiller(task, recipe, teachers, student, output_dir)
    loaders = {name: train_loader(d, recipe.training) for name, d in data.items()}
    optimize(distiller, student, recipe.training, loaders, sum(len(v) for v in loaders.values()),
             _resumable(output_dir, resume))
    if not is_main_process():
        return {}
    first = next(iter(recipe.tasks.values()))
    task.save_model(student, output_dir / "student", first.teacher)
    report: dict[str, Any] = {"task": recipe.task, "tasks": {}}
    for name, spec in recipe.tasks.items():
        if data[name].eval is None:
            continue
        metric = eval_metrics(task, spec.eval.metric)[0]
        teacher_result = measure(task, teachers[name], task.adaptor(teachers[name]), data[name], recipe, spec.eval)
        report["tasks"][name] = {"metric": metric, "teacher": teacher_result, "student":
                                 measure_against(task, student, distiller.adaptors_S[name], data[name], recipe,
                                                 teacher_result, spec.eval)}
        _warn_at_chance(report, teacher_result, metric, f"teacher of task {name}")
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    write_model_card(output_dir / "student", recipe, report, "student", getattr(task, "pipeline_tag", None))
    return report


def transfer_set(task: Task, recipe: Recipe, output_dir: Path, base_dir: Path | None) -> DataSpec:
    """The recipe's data, with ``data.augment`` carried out: ``data.train`` grown by the augmenter
    (or read from the prepared file) and, unless ``augment.label`` is false, labelled by the
    teacher, in ``output_dir/transfer/``. Finished files are reused and interrupted ones resumed."""
    spec = recipe.data
    augment = spec.augment
    if augment is None:
        return spec
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


def _resumable(directory: Path, resume: bool) -> bool:
    """Whether a stage of a resumed run continues from a checkpoint: one that an interrupted run
    never reached (its folder holds none) starts afresh, with a warning."""
    if not resume:
        return False
    if list_checkpoints(directory / CHECKPOINTS_DIR):
        return True
    warnings.warn(f"--resume: {directory} holds no checkpoint of this stage yet; starting it afresh", stacklevel=3)
    return False


def _distill_stage(task: Task, recipe: Recipe, spec: StudentSpec, teachers: dict[str, nn.Module],
                   data: PreparedData, init_data: PreparedData, output_dir: Path, resume: bool,
                   where: str = "student") -> tuple[nn.Module, TrainResult]:
    """Build, initialise and distill one student from ``teachers`` (one, or several for a
    MultiTeacherDistiller; the first shapes the student), scored on the validation set during
    training when there is one; save it to ``output_dir/student``."""
    first = next(iter(teachers.values()))
    student = build_student(task, spec, first, init_data, recipe.training, where)
    distiller = make_distiller(task, recipe, teachers, student, output_dir)
    validation = validation_for(task, recipe, student, task.adaptor(student), data)
    result = fit(distiller, student, recipe.training, data, _resumable(output_dir, resume), validation,
                 batch_postprocessor(task, student, recipe.primary_teacher))
    if is_main_process():
        task.save_model(student, output_dir / "student", recipe.primary_teacher)
    return student, result


def _assistant_stage(task: Task, recipe: Recipe, spec: StudentSpec, teachers: dict[str, nn.Module],
                     data: PreparedData, init_data: PreparedData, output_dir: Path, resume: bool,
                     where: str) -> nn.Module:
    """One teacher-assistant stage; a stage finished by an earlier run is loaded when resuming."""
    saved = output_dir / "student"
    if resume and (output_dir / STAGE_DONE).is_file():
        return task.load_teacher(ModelSpec(model=str(saved)))
    assistant, _ = _distill_stage(task, recipe, spec, teachers, data, init_data, output_dir, resume, where)
    if is_main_process():
        write_text_atomic(output_dir / STAGE_DONE, f"{saved}\n")
    return assistant
