"""Budgets that fit the data: the demo's 3 x 144 student recipe on small labelled tasks with many
classes, with today's fixed budget beside kd's default of evaluation during training.

    .venv/bin/python -m benchmarks.early_stopping [--output runs/early-stopping]

The tasks are benchmarks/small_tasks.py's (neither is SST-2): ``squad_topics`` (24 classes,
3,797 training questions) and ``wnut16`` (21 tags, 2,000 tweets). Per task the teacher, the
packaged all-MiniLM-L6-v2, is fine-tuned once with validation (10% of the training rows held out,
up to 10 epochs scored every epoch, the best kept, patience 3, the learning rate kd's default for
its size), and distilled with the demo's recipe for its 3 x 144 student
(``kd_core.demo.STUDENTS["bert-3x144"]``: ETD-Impt from the fine-tuned teacher, MiniLM's
last-layer relations plus logit KL at T = 4) two ways:

- ``fixed_budget``: today's settings, the demo's 1,500 steps at its learning rate (2e-4), the last
  weights kept, no validation;
- ``validated``: kd's defaults with validation: the same held-out rows scored every epoch, up to
  30 epochs, the best weights kept, stopped after 5 evaluations without improvement, the learning
  rate the default for the student's size.

Each student's test metric (``data.eval``, never read for a choice), its retention against the
teacher, the steps it trained and the step of the weights kept. Writes
benchmarks/results/early-stopping-<machine>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.results_file import results_path, write_results
from benchmarks.small_tasks import DEMO_STUDENT, demo_student_recipe, task_recipes
from kd_core.demo import SETTINGS, STUDENTS
from kd_core.machine import describe_machine
from kd_core.recipe import REPORT_FILE, finetune_teachers, run_distill
from kd_core.schema import Recipe

VALIDATION_SPLIT = 0.1
TEACHER_EPOCHS = 10
TEACHER_PATIENCE = 3
STUDENT_EPOCHS = 30
STUDENT_PATIENCE = 5


def validated_recipe(task: dict[str, Any]) -> Recipe:
    """``task`` with a held-out validation split, its teacher fine-tuned with validation, and
    the demo's student distilled with kd's validated defaults."""
    plan = STUDENTS[DEMO_STUDENT]
    teacher = {**task["teacher"], "finetune": {"num_epochs": TEACHER_EPOCHS, "patience": TEACHER_PATIENCE}}
    return Recipe.from_dict({
        **task, "data": {**task["data"], "validation_split": VALIDATION_SPLIT}, "teacher": teacher,
        "student": plan.student,
        "training": {"batch_size": 32, "num_epochs": STUDENT_EPOCHS, "patience": STUDENT_PATIENCE,
                     "group_by_length": True, "seed": 0, "keep_checkpoints": 1, "progress": True},
        "distillation": plan.distillation,
    })


def fixed_budget_recipe(task: dict[str, Any], teacher: dict[str, Any]) -> Recipe:
    """The demo's recipe as it is today (its steps and learning rate, the last weights, no
    validation) on ``task``, from the fine-tuned ``teacher`` spec."""
    return demo_student_recipe({**task, "teacher": teacher}, STUDENTS[DEMO_STUDENT].student)


def _row(report: dict[str, Any], teacher: dict[str, Any], seconds: float) -> dict[str, Any]:
    student = report["student"]
    validation = report.get("validation")
    return {"value": student["value"], "retention": student["retention"], "params": student["params"],
            "params_ratio": round(teacher["params"] / student["params"], 2), "steps": report["steps"],
            "kept_step": validation["best_step"] if validation else report["steps"],
            "best_validation": validation["best_value"] if validation else None,
            "stopped_early": validation["stopped_early"] if validation else False, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("runs/early-stopping"))
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    tasks: dict[str, Any] = {}
    for name, (raw, train_rows) in task_recipes(args.output / "data").items():
        out = args.output / name
        print(f"{name}: fine-tuning the teacher with validation", flush=True)
        validated = finetune_teachers(validated_recipe(raw), out, None, resume=False)
        teacher_report = json.loads((out / "teacher" / REPORT_FILE).read_text())
        teacher = teacher_report["model"]
        rows: dict[str, Any] = {}
        for label, recipe in (("fixed_budget", fixed_budget_recipe(raw, validated.teacher.to_dict())),
                              ("validated", validated)):
            print(f"{name}: distilling, {label}", flush=True)
            clock = time.perf_counter()
            report = run_distill(recipe, out / label, teacher_result=teacher)
            rows[label] = _row(report, teacher, time.perf_counter() - clock)
        tasks[name] = {"metric": raw["eval"]["metric"], "classes": len(raw["teacher"]["labels"]),
                       "train_rows": train_rows,
                       "teacher": {"value": teacher["value"], "params": teacher["params"],
                                   "steps": teacher_report["steps"],
                                   "kept_step": teacher_report["validation"]["best_step"]},
                       "students": rows}
    report = {
        "date": datetime.date.today().isoformat(), "machine": describe_machine(), "torch": torch.__version__,
        "student_recipe": f"kd_core.demo.STUDENTS[{DEMO_STUDENT!r}]",
        "settings": {"validation_split": VALIDATION_SPLIT, "teacher_epochs": TEACHER_EPOCHS,
                     "teacher_patience": TEACHER_PATIENCE, "student_epochs": STUDENT_EPOCHS,
                     "student_patience": STUDENT_PATIENCE,
                     "fixed_steps": SETTINGS[False].student_steps[DEMO_STUDENT],
                     "fixed_learning_rate": STUDENTS[DEMO_STUDENT].learning_rate},
        "tasks": tasks, "wall_seconds": round(time.perf_counter() - started, 1),
    }
    results = args.results or results_path("early-stopping", "cores")
    write_results(report, results)
    print(json.dumps(report, indent=2))
    print(f"written to {results}")


if __name__ == "__main__":
    main()
