"""Task-agnostic distillation measured end to end, in MiniLM's and Extract-Then-Distill's setting:
a small general student distilled from the packaged MiniLM on unlabelled text, then fine-tuned on
every task of the downstream suite beside the models it must beat.

    .venv/bin/python -m benchmarks.general [--minutes 30] [--curve-steps 300] [--output runs/general-bench]

1. General distillation: a 3 x 144 student (12 heads, FFN 576; 4.4x fewer parameters) extracted from the packaged
   all-MiniLM-L6-v2 by ETD-Impt (importance from the corpus through the contrastive proxy, as the
   teacher has no masked-LM head) and distilled with MiniLM's last-layer objective
   (examples/recipes/general_minilm.yaml: its corpus, batch size and learning rate) for as many
   steps as ``--minutes`` of this machine allow (a probe run times the steps first).
2. Beside it, as base encoders with the teacher's tokenizer: (a) the same ETD-Impt extraction
   without general distillation (the student's own starting point), (b) the same shape randomly
   initialised, (c) the teacher.
3. ``kd suite examples/suites/downstream.yaml`` on the four; each task's retention against the
   teacher.
4. ETD in its real setting: general-distillation loss curves of ``etd_impt``, ``etd_rand`` and
   random init for ``--curve-steps`` steps each on the same batches, and the step at which each
   reaches random init's final loss (the paper reports about 30% of the compute).

Writes benchmarks/results/general-<machine>.json; every stage's folder under ``--output`` is
reused by a rerun (the suite reads finished runs back).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.results_file import results_path, write_results
from kd_analysis.curves import moving_average
from kd_core.machine import describe_machine
from kd_core.recipe import run_distill
from kd_core.schema import ModelSpec, Recipe
from kd_core.suite import load_suite, run_suite
from kd_core.tasks import prepare_data
from kd_models.extraction import extract_student
from kd_models.general import GeneralTask
from kd_models.students import transformer_student

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recipes" / "general_minilm.yaml"
SUITE = ROOT / "examples" / "suites" / "downstream.yaml"
SHAPE = {"num_hidden_layers": 3, "hidden_size": 144, "intermediate_size": 576}
IMPORTANCE_BATCHES = 16
PROBE_STEPS = 25


def _recipe(steps: int, init: str | dict | None) -> Recipe:
    """The MiniLM general recipe with ``steps`` steps and the student's ``init``."""
    raw = yaml.safe_load(RECIPE.read_text())
    raw["student"] = {"config": SHAPE, **({"init": init} if init else {})}
    raw["training"] = {**raw["training"], "num_steps": steps, "progress": True}
    for source in raw["data"]["train"]["sources"]:
        if not source["path"].startswith("package:"):
            source["path"] = str((RECIPE.parent / source["path"]).resolve())
    return Recipe.from_dict(raw, where=str(RECIPE))


def _distill(steps: int, init: str | dict | None, output: Path) -> dict[str, Any]:
    """One general distillation (reused when ``output`` holds its finished report)."""
    if not (output / "report.json").is_file():
        run_distill(_recipe(steps, init), output, RECIPE.parent)
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [line["loss"] for line in lines], "seconds": lines[-1]["elapsed_s"]}


def seconds_per_step(output: Path) -> float:
    """A probe run's seconds per step, its first 5 steps (warm-up, allocations) left out."""
    elapsed = [json.loads(line)["elapsed_s"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    return (elapsed[-1] - elapsed[4]) / (len(elapsed) - 5)


def baselines(output: Path) -> dict[str, Path]:
    """(a) ETD-Impt extraction without general distillation and (b) random init, of the student's
    shape, and (c) the teacher, each saved as a base encoder with the tokenizer."""
    recipe = _recipe(1, None)
    task, spec = GeneralTask(), recipe.primary_teacher
    folders = {"etd_impt_no_gd": output / "etd-impt-no-gd", "random_no_gd": output / "random-no-gd",
               "teacher": output / "teacher"}
    if all((f / "config.json").is_file() for f in folders.values()):
        return folders
    teacher = task.load_teacher(spec)
    data = prepare_data(task, recipe.data, spec, RECIPE.parent)
    generator = torch.Generator().manual_seed(recipe.training.seed)
    loader = torch.utils.data.DataLoader(data.train, batch_size=recipe.training.batch_size, shuffle=True,
                                         generator=generator, collate_fn=data.collate)
    torch.manual_seed(recipe.training.seed)
    models = {"etd_impt_no_gd": extract_student(teacher, SHAPE["num_hidden_layers"], SHAPE["hidden_size"],
                                                SHAPE["intermediate_size"], method="impt", dataloader=loader,
                                                num_batches=IMPORTANCE_BATCHES),
              "random_no_gd": transformer_student(teacher, **SHAPE), "teacher": teacher}
    for name, model in models.items():
        task.save_model(model, folders[name], ModelSpec(model=spec.model))
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="CPU minutes of general distillation.")
    parser.add_argument("--curve-steps", type=int, default=300, help="Steps of each ETD loss curve.")
    parser.add_argument("--window", type=int, default=20, help="Moving-average window of the loss curves.")
    parser.add_argument("--output", type=Path, default=Path("runs/general-bench"))
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    init = {"name": "etd_impt", "num_batches": IMPORTANCE_BATCHES}

    probe = args.output / "probe"
    _distill(PROBE_STEPS, init, probe)
    per_step = seconds_per_step(probe)
    steps = max(PROBE_STEPS, int(args.minutes * 60 / per_step))
    print(f"general distillation: {per_step:.2f} s a step, {steps} steps in {args.minutes} minutes", flush=True)
    general = _distill(steps, init, args.output / "general")

    folders = baselines(args.output)
    models = {"teacher": str(folders["teacher"]), "general_etd_impt": str(args.output / "general" / "student"),
              "etd_impt_no_gd": str(folders["etd_impt_no_gd"]), "random_no_gd": str(folders["random_no_gd"])}
    suite, base_dir = load_suite(SUITE)
    clock = time.perf_counter()
    table = run_suite(suite, base_dir, models, args.output / "suite", reference="teacher")
    suite_seconds = time.perf_counter() - clock
    teacher_row = table["models"]["teacher"]
    for row in table["models"].values():
        row["retention"] = {task: round(row["tasks"][task]["value"] / teacher_row["tasks"][task]["value"], 3)
                            for task in table["tasks"]}
        row["average_retention"] = round(row["average"] / teacher_row["average"], 3)

    curves = {name: _distill(args.curve_steps, init_spec, args.output / "curves" / name)
              for name, init_spec in (("rand_init", None), ("etd_rand", "etd_rand"), ("etd_impt", init))}
    smoothed = {name: moving_average(run["losses"], args.window) for name, run in curves.items()}
    target = smoothed["rand_init"][-1]
    convergence = {name: {"first_loss": round(run["losses"][0], 4), "final_smoothed_loss": round(smoothed[name][-1], 4),
                          "steps_to_rand_init_final_loss": next((i + 1 for i, v in enumerate(smoothed[name])
                                                                 if v <= target), None)}
                   for name, run in curves.items()}
    for row in convergence.values():
        reached = row["steps_to_rand_init_final_loss"]
        row["fraction_of_rand_init_steps"] = None if reached is None else round(reached / args.curve_steps, 3)

    recipe = _recipe(steps, init)
    batch_size, max_length = recipe.training.batch_size, recipe.data.max_length
    report = {
        "date": datetime.date.today().isoformat(), "machine": describe_machine(), "torch": torch.__version__,
        "recipe": str(RECIPE.relative_to(ROOT)), "suite": str(SUITE.relative_to(ROOT)), "student_shape": SHAPE,
        "general_distillation": {"steps": steps, "seconds_per_step": round(per_step, 3), "batch_size": batch_size,
                                 "max_length": max_length, "tokens_at_most": steps * batch_size * max_length,
                                 "seconds": general["seconds"], "first_loss": round(general["losses"][0], 4),
                                 "final_smoothed_loss": round(moving_average(general["losses"], args.window)[-1], 4)},
        "suite_table": table, "suite_seconds": round(suite_seconds, 1),
        "etd_convergence": {"steps": args.curve_steps, "window": args.window,
                            "rand_init_final_smoothed_loss": round(target, 4), "runs": convergence,
                            "curves_every_10_steps": {n: [round(v, 4) for v in c[9::10]] for n, c in smoothed.items()}},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    results = args.results or results_path("general", "threads")
    write_results(report, results)
    print(json.dumps({k: v for k, v in report.items() if k != "etd_convergence"}, indent=2))
    print(f"written to {results}")


if __name__ == "__main__":
    main()
