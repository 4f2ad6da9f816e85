"""Small labelled tasks with many classes: the demo's student recipe copied as is onto a new task,
against the path the README recommends for one (a general student, then distilled on the task).

    .venv/bin/python -m benchmarks.small_tasks --general runs/general-bench/general/student [--output runs/small-tasks]

The tasks (a few thousand rows, many classes, not SST-2):

- ``squad_topics``: which of 24 Wikipedia articles a question of SQuAD v1.1 part-b asks about
  (5,609 questions; part-b's contexts are not in the general corpus). The rows are split by
  paragraph, so no test question shares its paragraph with a training one: in each article every
  third paragraph is held out. The TSV files are written from examples/data/squad11/part-b.json.
- ``wnut16``: named entities in tweets (21 BIO tags, entity F1; 2,000 tweets train, 394 evaluate),
  examples/recipes/wnut16_ner.yaml's data.

For each task the packaged all-MiniLM-L6-v2 is fine-tuned once (the teacher), then distilled with
the demo's recipe for its 3 x 144 student (``kd_core.demo.STUDENTS["bert-3x144"]``: MiniLM's
last-layer relations plus logit KL at T = 4, its learning rate and its full run's steps) into:

- ``demo_recipe``: that recipe as is, its student extracted from the fine-tuned teacher (ETD-Impt);
- ``general_student``: the same recipe with ``student: {model: GENERAL}``, the general student of
  ``benchmarks/general.py`` (the same 3 x 144 shape, general-distilled on unlabelled text).

Both read the same rows and no transfer set (the demo's Tang et al. augmentation is for sentence
classification), so the student's starting point is the only difference. Writes
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


def squad_topics(folder: Path) -> tuple[list[str], int]:
    """Write ``train.tsv`` and ``test.tsv`` (question, topic) of SQuAD part-b's questions under
    ``folder``; the topics, in the order of the articles, and the number of training rows."""
    folder.mkdir(parents=True, exist_ok=True)
    articles = json.loads(PART_B.read_text(encoding="utf-8"))["data"]
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for article in articles:
        for i, paragraph in enumerate(article["paragraphs"]):
            split = "test" if i % 3 == 2 else "train"
            splits[split] += [(qa["question"].strip(), article["title"]) for qa in paragraph["qas"]]
    for split, rows in splits.items():
        with (folder / f"{split}.tsv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
            writer.writerow(["question", "topic"])
            writer.writerows(rows)
    return [article["title"] for article in articles], len(splits["train"])


def task_recipes(data: Path) -> dict[str, tuple[dict[str, Any], int]]:
    """Each task's recipe without a student (data, the teacher and its fine-tuning, the metric)
    and its number of training rows."""
    wnut = yaml.safe_load(WNUT_RECIPE.read_text())
    wnut["data"].pop("validation_split", None)  # the rows as measured; a script adds its own validation
    for split in ("train", "eval"):
        wnut["data"][split]["path"] = str((WNUT_RECIPE.parent / wnut["data"][split]["path"]).resolve())
    topics, topic_rows = squad_topics(data / "squad_topics")
    return {
        "squad_topics": ({
            "task": "sequence_classification",
            "data": {"train": {"path": str(data / "squad_topics" / "train.tsv"), "text": "question", "label": "topic"},
                     "eval": {"path": str(data / "squad_topics" / "test.tsv"), "text": "question", "label": "topic"},
                     "max_length": 64},
            "teacher": {"model": TEACHER, "labels": topics,
                        "finetune": {"num_epochs": 4, "learning_rate": 1e-4}},
            "eval": {"metric": "accuracy"},
        }, topic_rows),
        "wnut16": ({"task": wnut["task"], "data": wnut["data"],
                    "teacher": {k: wnut["teacher"][k] for k in ("model", "labels", "finetune")},
                    "eval": wnut["eval"]}, wnut["data"]["train"]["limit"]),
    }


def demo_student_recipe(task: dict[str, Any], student: dict[str, Any]) -> Recipe:
    """``task`` distilled with the demo's recipe for its 3 x 144 student, into ``student``."""
    plan, steps = STUDENTS[DEMO_STUDENT], SETTINGS[False].student_steps[DEMO_STUDENT]
    return Recipe.from_dict({
        **task, "student": student,
        "training": {"batch_size": 32, "num_steps": steps, "learning_rate": plan.learning_rate,
                     "group_by_length": True, "seed": 0, "keep_checkpoints": 1, "progress": True},
        "distillation": plan.distillation,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--general", type=Path, required=True,
                        help="The general student (benchmarks/general.py writes it to OUTPUT/general/student).")
    parser.add_argument("--output", type=Path, default=Path("runs/small-tasks"))
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    general_config = json.loads((args.general / "config.json").read_text())
    students = {"demo_recipe": STUDENTS[DEMO_STUDENT].student,
                "general_student": {"model": str(args.general.resolve())}}

    tasks: dict[str, Any] = {}
    for name, (raw, train_rows) in task_recipes(args.output / "data").items():
        print(f"{name}: fine-tuning the teacher", flush=True)
        out = args.output / name
        recipe = demo_student_recipe(raw, students["demo_recipe"])
        trained = finetune_teachers(recipe, out, None, resume=False)
        teacher = json.loads((out / "teacher" / REPORT_FILE).read_text())["model"]
        rows: dict[str, Any] = {}
        for student_name, student in students.items():
            print(f"{name}: distilling into {student_name}", flush=True)
            clock = time.perf_counter()
            report = run_distill(trained.model_copy(update={"student": demo_student_recipe(raw, student).student}),
                                 out / student_name, teacher_result=teacher)
            result = report["student"]
            rows[student_name] = {"value": result["value"], "retention": result["retention"],
                                  "params": result["params"],
                                  "params_ratio": round(teacher["params"] / result["params"], 2),
                                  "seconds": round(time.perf_counter() - clock, 1)}
        tasks[name] = {"metric": raw["eval"]["metric"], "classes": len(raw["teacher"]["labels"]),
                       "train_rows": train_rows, "teacher": {"value": teacher["value"], "params": teacher["params"]},
                       "students": rows}

    report = {
        "date": datetime.date.today().isoformat(), "machine": describe_machine(), "torch": torch.__version__,
        "student_recipe": f"kd_core.demo.STUDENTS[{DEMO_STUDENT!r}]",
        "steps": SETTINGS[False].student_steps[DEMO_STUDENT],
        "general_student": {"path": str(args.general), "shape": {k: general_config[k] for k in
                            ("num_hidden_layers", "hidden_size", "intermediate_size")}},
        "tasks": tasks, "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(report, args.results or results_path("small-tasks", "cores"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
