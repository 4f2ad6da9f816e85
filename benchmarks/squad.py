"""Extractive question answering measured end to end: the packaged MiniLM fine-tuned on SQuAD
v1.1 part-a, distilled into a student with at least 4x fewer parameters, and the same student
fine-tuned on part-a without distillation; every model scored on part-b (other articles).

    .venv/bin/python -m benchmarks.squad [--output runs/squad-bench] [--limit N]

Every stage runs examples/recipes/squad.yaml as it is (its budgets, learning rates and teacher
cache): ETD init from the fine-tuned teacher, TextBrewer's MRC losses plus MiniLM's last-layer
attention and value relations; the student alone keeps only the hard-label loss, so the teacher
never runs for it. A fine-tuned teacher in ``OUTPUT/teacher`` from the same settings is reused
(its training time is the one recorded when it was trained). The trivial baseline answers every
question with its context's first sentence. ``--limit`` reads N questions of each part, a quick
check of the script. Writes benchmarks/results/squad-<machine>.json.
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
from kd_core import get_task
from kd_core.machine import describe_machine
from kd_core.recipe import REPORT_FILE, STAGE_DONE, finetune_teachers, run_distill
from kd_core.schema import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recipes" / "squad.yaml"
TEACHER_SECONDS = "benchmark-train-seconds.json"
"""Where the teacher's training time is kept beside it, for runs that reuse it."""


def _per_question_ms(result: dict[str, Any], batch_size: int, windows: int, questions: int) -> float:
    """Milliseconds of model time per question: the median batch time spread over its windows."""
    return round(result["latency_ms"] / batch_size * windows / questions, 3)


def _teacher(recipe: Any, output: Path, base_dir: Path) -> tuple[Any, dict[str, Any], float, bool]:
    """The recipe with its teacher fine-tuned (or the earlier fine-tuning of the same settings),
    the teacher's report, the seconds its training took and whether it was reused."""
    folder = output / "teacher"
    marker = folder / STAGE_DONE
    before = marker.stat().st_mtime_ns if marker.is_file() else None
    clock = time.perf_counter()
    finetuned = finetune_teachers(recipe, output, base_dir, resume=False)
    reused = marker.stat().st_mtime_ns == before
    if not reused:
        (folder / TEACHER_SECONDS).write_text(json.dumps({"seconds": time.perf_counter() - clock}) + "\n")
    seconds = json.loads((folder / TEACHER_SECONDS).read_text())["seconds"]
    return finetuned, json.loads((folder / REPORT_FILE).read_text()), seconds, reused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("runs/squad-bench"))
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="Questions of each part (a quick check of the script).")
    args = parser.parse_args()
    overrides = ["training.progress=true"]
    if args.limit:
        overrides += [f"data.train.limit={args.limit}", f"data.eval.limit={args.limit}", "student.init.num_batches=2",
                      "training.num_epochs=1", "teacher.finetune.num_epochs=1"]
    recipe, base_dir = load_recipe(RECIPE, overrides)
    started = time.perf_counter()
    trained, teacher_report, teacher_seconds, reused = _teacher(recipe, args.output, base_dir)

    clock = time.perf_counter()
    distilled = run_distill(trained, args.output / "distilled", base_dir, teacher_result=teacher_report["model"])
    distill_seconds = time.perf_counter() - clock

    alone = trained.model_copy(update={"distillation": trained.distillation.model_copy(update={
        "kd_loss_weight": 0.0, "hard_label_weight": 1.0, "intermediate_matches": [], "is_caching_logits": False})})
    clock = time.perf_counter()
    finetuned = run_distill(alone, args.output / "student-alone", base_dir, teacher_result=teacher_report["model"])
    alone_seconds = time.perf_counter() - clock

    task = get_task("question_answering")
    part_b = task.read(recipe.data.eval, recipe.primary_teacher, recipe.data.max_length, base_dir, "data.eval")
    windows, questions = len(part_b.windows), len(part_b.questions)
    batch = recipe.eval.batch_size

    def row(result: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {"exact_match": result["metrics"]["exact_match"], "f1": result["metrics"]["f1"],
                "params": result["params"], "latency_ms_per_question": _per_question_ms(result, batch, windows,
                                                                                         questions),
                "train_seconds": round(seconds, 1), **({"f1_retention": result["retention"]}
                                                         if "retention" in result else {})}

    teacher = teacher_report["model"]
    train = task.read(recipe.data.train, recipe.primary_teacher, recipe.data.max_length, base_dir, "data.train")
    report = {
        "date": datetime.date.today().isoformat(), "machine": describe_machine(), "torch": torch.__version__,
        "recipe": str(RECIPE.relative_to(ROOT)), "max_length": recipe.data.max_length,
        "teacher_training": {"epochs": recipe.primary_teacher.finetune.num_epochs,
                             "learning_rate": recipe.primary_teacher.finetune.learning_rate},
        "student_training": {"epochs": recipe.training.num_epochs, "learning_rate": recipe.training.learning_rate,
                             "teacher_cache": recipe.distillation.is_caching_logits},
        "train": {"file": "examples/data/squad11/part-a.json", "questions": len(train.questions),
                  "windows": len(train.windows)},
        "eval": {"file": "examples/data/squad11/part-b.json", "questions": questions, "windows": windows},
        "baseline_first_sentence": teacher["baseline_metrics"],
        "teacher": row(teacher, teacher_seconds),
        "student_distilled": row(distilled["student"], distill_seconds),
        "student_finetuned_alone": row(finetuned["student"], alone_seconds),
        "params_ratio": round(teacher["params"] / distilled["student"]["params"], 2),
        "latency_device": teacher["latency_device"],
        "teacher_reused": reused,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(report, args.results or results_path("squad", "cores"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
