"""``kd suite``: fine-tune every model on every task of a suite with the same per-task settings and
seed, and tabulate the results as MiniLM's tables do (each task's metric, their average,
parameters, CPU latency and speed-up). This is how a general student (``task: general``) is
scored: as one would score the teacher.

A suite file (YAML or JSON)::

    seed: 0                 # every task's training seed
    device: cpu
    latency: sst2           # the task whose eval batches time the models (default: the first)
    tasks:
      sst2:                 # a recipe without teacher.model: task, task_options, data,
        task: sequence_classification            # teacher (num_labels or labels), training, eval
        data: {train: {path: ..., text: sentence, label: label}, eval: {...}, max_length: 64}
        teacher: {num_labels: 2}
        training: {batch_size: 32, num_epochs: 3, learning_rate: 1.0e-4}

Each (model, task) is run as ``kd train`` runs a recipe, in ``OUT/MODEL/TASK``; one that finished
under the same settings (the task's recipe and the model's weights) is read back instead of run
again, and one that was interrupted resumes from its checkpoint. ``OUT/suite.json``,
``OUT/suite.md`` and, when matplotlib is installed, ``OUT/suite.png`` hold the table.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from kd_core.checkpoint import list_checkpoints, write_text_atomic
from kd_core.config import ConfigModel
from kd_core.data import file_fingerprint, resolve_path
from kd_core.engine import CHECKPOINTS_DIR
from kd_core.errors import ConfigError
from kd_core.paths import resolve_model_path
from kd_core.recipe import REPORT_FILE, run_train
from kd_core.schema import Recipe, recipe_to_yaml
from kd_core.validation import BEST_DIR

SETTINGS_FILE = "suite-settings.json"
"""What a finished (model, task) was run with, beside its report."""


class SuiteSpec(ConfigModel):
    """A suite file: the tasks (recipes without a teacher model), the seed and the device."""

    tasks: dict[str, dict[str, Any]] = Field(min_length=1)
    seed: int = 0
    device: str = "cpu"
    latency: str | None = None
    """The task whose eval batches time every model (default: the first task)."""

    def recipe(self, name: str, model: str) -> Recipe:
        """Task ``name``'s recipe for the model at ``model``."""
        if name not in self.tasks:
            raise ConfigError(f"suite: no task {name!r}; its tasks are {', '.join(self.tasks)}")
        spec = dict(self.tasks[name])
        if "model" in (spec.get("teacher") or {}):
            raise ConfigError(f"suite tasks.{name}.teacher.model: the suite's models come from --modelss; leave it out")
        for section in ("finetune", "distillation", "student", "assistants"):
            if section in spec or section in (spec.get("teacher") or {}):
                raise ConfigError(f"suite tasks.{name}.{section}: a suite fine-tunes each model as it is; leave "
                                  f"{section} out")
        spec["teacher"] = {**(spec.get("teacher") or {}), "model": model}
        spec["training"] = {**(spec.get("training") or {}), "seed": self.seed, "device": self.device}
        return Recipe.from_dict(spec, where=f"suite tasks.{name}")


def load_suite(path: Path) -> tuple[SuiteSpec, Path]:
    """The suite at ``path`` and the folder its relative data paths resolve against."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a suite is a mapping with 'tasks' (and 'seed', 'device', 'latency')")
    suite = SuiteSpec.from_dict(raw, where="suite")
    if suite.latency is not None and suite.latency not in suite.tasks:
        raise ConfigError(f"suite latency: {suite.latency!r} is not one of its tasks ({', '.join(suite.tasks)})")
    return suite, path.resolve().parent


def model_fingerprint(path: str) -> str:
    """A hash of a model folder's files (or of one model file): the weights a run fine-tuned."""
    location = Path(path)
    files = sorted(p for p in location.rglob("*") if p.is_file()) if location.is_dir() else [location]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(location) if location.is_dir() else file.name}:".encode())
        digest.update(file_fingerprint(file).encode())
    return digest.hexdigest()


def run_suite(suite: SuiteSpec, base_dir: Path, models: dict[str, str], output_dir: Path,
              reference: str | None = None, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Fine-tune and score every model on every task (see the module's docstring); returns the
    table that ``suite.json`` holds."""
    if not models:
        raise ConfigError("kd suite: give at least one model (--models NAME=PATH ...)")
    reference = reference or next(iter(models))
    if reference not in models:
        raise ConfigError(f"--reference {reference!r} is not one of the models ({', '.join(models)})")
    paths = {name: resolve_model_path(path, where=f"--models {name}") for name, path in models.items()}
    for name, path in paths.items():
        if not Path(path).exists():
            raise ConfigError(f"--models {name}={models[name]}: kd suite fine-tunes local models; {path} is not one")
    recipes = {task: {name: suite.recipe(task, path) for name, path in paths.items()} for task in suite.tasks}
    for task, by_model in recipes.items():  # every data file exists before hours of training start
        for file in (by_model[reference].data.train, by_model[reference].data.eval):
            if file is not None and file.path is not None:
                resolve_path(file.path, base_dir, f"suite tasks.{task}.data")
    results: dict[str, dict[str, Any]] = {name: {} for name in models}
    for name, path in paths.items():
        weights = model_fingerprint(path)
        for task, by_model in recipes.items():
            results[name][task] = _run_one(by_model[name], weights, output_dir / name / task, base_dir,
                                           f"{name} on {task}", echo)
    table = tabulate(results, suite, reference)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / "suite.json", json.dumps(table, indent=2) + "\n")
    write_text_atomic(output_dir / "suite.md", markdown(table) + "\n")
    plot(table, output_dir / "suite.png", echo)
    return table


def _run_one(recipe: Recipe, weights: str, directory: Path, base_dir: Path, title: str,
             echo: Callable[[str], Any]) -> dict[str, Any]:
    """One model fine-tuned and scored on one task: read back when it finished under the same
    settings, resumed when interrupted, else run afresh."""
    settings = json.dumps({"recipe": recipe.to_dict(), "weights": weights}, sort_keys=True, default=str)
    marker, report_file = directory / SETTINGS_FILE, directory / REPORT_FILE
    if marker.is_file() and marker.read_text(encoding="utf-8") == settings and report_file.is_file():
        echo(f"{title}: done earlier, read from {report_file}")
        return json.loads(report_file.read_text(encoding="utf-8"))
    started = directory / f"{SETTINGS_FILE}.started"
    resume = (started.is_file() and started.read_text(encoding="utf-8") == settings
              and bool(list_checkpoints(directory / CHECKPOINTS_DIR)))
    if not resume and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(started, settings)
    write_text_atomic(directory / "recipe.yaml", recipe_to_yaml(recipe))
    echo(f"{title}: {'resuming' if resume else 'fine-tuning'} in {directory}")
    report = run_train(recipe, directory, base_dir, resume=resume)
    if "model" not in report:
        raise ConfigError(f"{title}: the task has no data.eval to score the model on")
    write_text_atomic(marker, settings)
    for folder in (CHECKPOINTS_DIR, BEST_DIR):  # the finished run's model is saved
        shutil.rmtree(directory / folder, ignore_errors=True)
    return report


def tabulate(results: dict[str, dict[str, dict[str, Any]]], suite: SuiteSpec, reference: str) -> dict[str, Any]:
    """The table of a suite's runs: per model, each task's metrics, the average of the tasks'
    main metrics, parameters, latency on the latency task and speed-up against ``reference``."""
    latency_task = suite.latency or next(iter(suite.tasks))
    rows = {}
    for name, by_task in results.items():
        tasks = {task: {"metric": report["metric"], "value": report["model"]["value"],
                        "metrics": report["model"].get("metrics", {report["metric"]: report["model"]["value"]})}
                 for task, report in by_task.items()}
        timed = by_task[latency_task]["model"]
        rows[name] = {"tasks": tasks, "average": statistics.fmean(t["value"] for t in tasks.values()),
                      "params": timed["params"], "latency_ms": timed["latency_ms"],
                      "latency_device": timed["latency_device"]}
    for row in rows.values():
        row["speedup"] = round(rows[reference]["latency_ms"] / row["latency_ms"], 2)
    return {"tasks": list(suite.tasks), "latency_task": latency_task, "reference": reference, "seed": suite.seed,
            "models": rows}


def markdown(table: dict[str, Any]) -> str:
    """The table in MiniLM's form: a row per model, a column per task (its metrics x 100)."""
    tasks = table["tasks"]
    first = next(iter(table["models"].values()))
    names = {task: "/".join(first["tasks"][task]["metrics"]) for task in tasks}
    header = ["model", *(f"{task} ({names[task]})" for task in tasks), "average", "params",
              f"ms / batch ({table['latency_task']})", "speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table["models"].items():
        cells = ["/".join(f"{100 * v:.1f}" for v in row["tasks"][task]["metrics"].values()) for task in tasks]
        lines.append("| " + " | ".join([name, *cells, f"{100 * row['average']:.1f}", f"{row['params']:,}",
                                         f"{row['latency_ms']:.1f}", f"{row['speedup']:.2f}x"]) + " |")
    return "\n".join(lines)


def plot(table: dict[str, Any], path: Path, echo: Callable[[str], Any]) -> None:
    """Each task's main metric per model as grouped bars (skipped, with a note, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        echo("matplotlib is not installed: no suite.png (pip install matplotlib, or kd-analysis)")
        return
    tasks, models = [*table["tasks"], "average"], list(table["models"])
    width = 0.8 / len(models)
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * len(tasks), 3.6))
    for i, name in enumerate(models):
        row = table["models"][name]
        values = [100 * row["tasks"][t]["value"] for t in table["tasks"]] + [100 * row["average"]]
        axes.bar([x + i * width for x in range(len(tasks))], values, width, label=name)
    axes.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(tasks))], tasks)
    axes.set_ylabel("score x 100 (each task's metric)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
