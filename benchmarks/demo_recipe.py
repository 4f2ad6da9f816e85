"""How the demo's students were chosen: each candidate recipe distilled from the demo's teacher
and scored on the validation rows carved from SST-2's training split
(packages/kd-core/src/kd_core/demo_data/sst2/validation.tsv, disjoint from the demo's training
rows), never on the dev set the demo reports.

    .venv/bin/python -m benchmarks.demo_recipe [--output runs/demo-recipe]

The candidates vary what the demo's students could be given: the transfer set (none, or two or
three Tang et al. variants per sentence), MiniLM's last-layer relation terms, hard labels, the
number of steps. The best candidate of each student (by validation accuracy) is the demo's; the
results file says whether the demo's settings are that candidate. Writes
benchmarks/results/demo-recipe-selection.json, from which the README's table is generated.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Any

from kd_core.demo import SETTINGS, STUDENTS, DemoStudent, fine_tuned_teacher, student_recipe
from kd_core.machine import describe_machine
from kd_core.recipe import run_distill

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo-recipe-selection.json"
FULL = SETTINGS[False]
BERT, BILSTM = STUDENTS["bert-3x144"], STUDENTS["bilstm"]
WITHOUT_TRANSFER = {"hard_label_weight": 0.5}


def _variant(plan: DemoStudent, augment: bool, **distillation: Any) -> DemoStudent:
    return dataclasses.replace(plan, augment=augment, distillation={**plan.distillation, **distillation})


CANDIDATES: list[tuple[str, str, DemoStudent, int, int | None]] = [
    # (candidate, student, plan, steps, Tang variants per sentence or None)
    ("bert: sentences, KD + MiniLM + hard labels, 1,200 steps", "bert-3x144",
     _variant(BERT, False, **WITHOUT_TRANSFER), 1200, None),
    ("bert: sentences, KD + hard labels (no MiniLM terms), 1,200 steps", "bert-3x144",
     _variant(BERT, False, intermediate_matches=None, **WITHOUT_TRANSFER), 1200, None),
    ("bert: transfer set x2, KD + MiniLM, 1,500 steps", "bert-3x144", BERT, 1500, 2),
    ("bert: transfer set x3, KD + MiniLM, 1,800 steps", "bert-3x144", BERT, 1800, 3),
    ("bilstm: KD + hard labels, 500 steps", "bilstm", BILSTM, 500, None),
    ("bilstm: KD + hard labels, 1,000 steps", "bilstm", BILSTM, 1000, None),
]


def _is_demo(student: str, plan: DemoStudent, steps: int, variants: int | None) -> bool:
    """Whether a candidate is exactly what ``kd demo`` (full) runs."""
    augment = FULL.augment if STUDENTS[student].augment else None
    return (plan == STUDENTS[student] and steps == FULL.student_steps[student]
            and (variants is None if augment is None else variants == augment["n"]))


def main(argv: list[str] | None = None) -> int:
    """Run every candidate (or those named) and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "demo-recipe")
    parser.add_argument("--teacher-dir", type=Path, default=None,
                        help="Where the demo's teacher is (or goes): kd-demo-output/teacher shares kd demo's.")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    teacher_dir = args.teacher_dir or args.output / "teacher"
    teacher = fine_tuned_teacher(FULL, teacher_dir)
    rows = []
    for index, (title, student, plan, steps, variants) in enumerate(CANDIDATES):
        augment = None if variants is None else {**FULL.augment, "n": variants}
        settings = dataclasses.replace(FULL, student_steps={student: steps}, augment=augment, eval_limit=1000)
        clock = time.perf_counter()
        print(f"[{index + 1}/{len(CANDIDATES)}] {title}", flush=True)
        report = run_distill(student_recipe(settings, teacher_dir / "model", student, plan, eval_set="validation"),
                             args.output / f"candidate-{index}")
        rows.append({"candidate": title, "student": student, "steps": steps, "transfer_variants": variants,
                     "validation_accuracy": round(report["student"]["value"], 4),
                     "teacher_validation_accuracy": round(report["teacher"]["value"], 4),
                     "is_demo": _is_demo(student, plan, steps, variants),
                     "seconds": round(time.perf_counter() - clock, 1)})
    chosen = {}
    for student in STUDENTS:
        best = max((r for r in rows if r["student"] == student), key=lambda r: r["validation_accuracy"])
        chosen[student] = {"candidate": best["candidate"], "is_demo": best["is_demo"]}
    results = {"benchmark": "demo_recipe", "date": datetime.date.today().isoformat(), "machine": describe_machine(),
               "validation": "1,000 rows of SST-2's training split, disjoint from the demo's 10,000",
               "teacher_dev_accuracy": round(teacher["model"]["value"], 4), "candidates": rows, "chosen": chosen,
               "wall_time_s": round(time.perf_counter() - started, 1)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(chosen, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
