"""Model cards: a ``README.md`` beside every model a recipe saves, so a student is publishable as is.

The card opens with Hugging Face's YAML front matter (``library_name``, ``pipeline_tag``,
``tags``, ``base_model`` when the teacher is a Hub id, ``datasets``, ``model-index`` with the
metric values of the run's report) plus kd's own section (``kd``: its version, the role, the
teacher, the parameters and latency of both models, the training steps and validation); the body
says the same in prose and a table, and ends with the recipe as run. Everything comes from the
run's ``report.json`` and recipe: nothing is measured again.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import yaml

from kd_core.checkpoint import write_text_atomic
from kd_core.schema import Recipe, recipe_to_yaml

CARD_FILE = "README.md"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""What a Hugging Face Hub model id looks like (``owner/name``); other teachers (local folders,
``package:`` models) are named in the card but not given as ``base_model``."""

Role = Literal["student", "fine-tuned"]


def kd_version() -> str:
    """The installed kd-core's version (``unknown`` when run from an uninstalled source tree)."""
    try:
        return version("kd-core")
    except PackageNotFoundError:
        return "unknown"


def _hub_id(model: str) -> str | None:
    return model if HUB_ID.match(model) and not Path(model).exists() else None


def _data_files(recipe: Recipe) -> list[str]:
    sections = [recipe.data] if recipe.data is not None else [t.data for t in (recipe.tasks or {}).values()]
    files = [f for data in sections for f in (data.train, data.validation, data.eval)]
    return [str(f.path) for f in files if f is not None and f.path]


def _task_results(recipe: Recipe, report: dict[str, Any], pipeline_tag: str | None) -> list[dict[str, Any]]:
    """The model-index results of a multi-task student: one per task, on that task's eval file."""
    results = []
    for name, entry in report.get("tasks", {}).items():
        eval_path, metric, student = str(recipe.tasks[name].data.eval.path), entry["metric"], entry["student"]
        metrics = [{"type": metric, "value": student["value"], "name": f"{name} {metric} ({eval_path})"}]
        if student.get("retention") is not None:
            metrics.append({"type": "retention", "value": student["retention"],
                            "name": f"{name} {metric} / the teacher's"})
        results.append({"task": {"type": pipeline_tag or recipe.task, "name": name},
                        "dataset": {"type": eval_path, "name": Path(eval_path).name}, "metrics": metrics})
    return results


def _eval_path(recipe: Recipe) -> str | None:
    """The file the report's metrics were measured on."""
    return str(recipe.data.eval.path) if recipe.data is not None and recipe.data.eval is not None else None


def _measured(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if not result:
        return None
    keys = ("value", "params", "latency_ms", "latency_device", "retention")
    return {k: result[k] for k in keys if k in result}


def _number(value: float | None, spec: str) -> str:
    """``value`` formatted, or nothing when the report has none (a retention against a teacher at 0)."""
    return "" if value is None else format(value, spec)


def card_metadata(recipe: Recipe, report: dict[str, Any], role: Role, name: str,
                  pipeline_tag: str | None = None) -> dict[str, Any]:
    """The front matter of a model's card: Hugging Face's keys, then kd's own."""
    teacher = recipe.primary_teacher.name or recipe.primary_teacher.model
    model = report.get("student" if role == "student" else "model")
    metric = report.get("metric")
    meta: dict[str, Any] = {"library_name": "transformers", "tags": ["kd", "knowledge-distillation", recipe.task]}
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    base = _hub_id(recipe.primary_teacher.model)
    if base:
        meta["base_model"] = base
    files = _data_files(recipe)
    if files:
        meta["datasets"] = files
    eval_path = _eval_path(recipe)
    if recipe.tasks is not None:
        results = _task_results(recipe, report, pipeline_tag)
        if results:
            meta["model-index"] = [{"name": name, "results": results}]
    elif model and metric and eval_path:
        metrics = [{"type": metric, "value": model["value"], "name": f"{metric} ({eval_path})"}]
        if model.get("retention") is not None:
            metrics.append({"type": "retention", "value": model["retention"], "name": f"{metric} / the teacher's"})
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": pipeline_tag or recipe.task, "name": recipe.task},
            "dataset": {"type": eval_path, "name": Path(eval_path).name},
            "metrics": metrics}]}]
    meta["kd"] = {
        "version": kd_version(), "role": role, "task": recipe.task, "teacher": teacher, "metric": metric,
        "model": _measured(model), "teacher_measured": _measured(report.get("teacher")),
        "steps": report.get("steps"), "learning_rate": report.get("learning_rate"),
        **({"validation": report["validation"]} if "validation" in report else {}),
        **({"tasks": {name: {"metric": entry["metric"], "model": _measured(entry["student"]),
                             "teacher_measured": _measured(entry["teacher"])}
                      for name, entry in report["tasks"].items()}} if "tasks" in report else {}),
    }
    if recipe.tasks is not None:
        meta["kd"]["teacher"] = {name: t.teacher.name or t.teacher.model for name, t in recipe.tasks.items()}
    return meta


def card_text(recipe: Recipe, report: dict[str, Any], role: Role, name: str,
              pipeline_tag: str | None = None) -> str:
    """The whole card: front matter, a description and table from the report, the recipe."""
    meta = card_metadata(recipe, report, role, name, pipeline_tag)
    info = meta["kd"]
    teacher = info["teacher"]
    if isinstance(teacher, dict):  # a multi-task student: one teacher per task
        what = "distilled from " + ", ".join(f"`{t}` ({name})" for name, t in teacher.items())
    else:
        what = (f"distilled from `{teacher}`" if role == "student" else f"`{teacher}` fine-tuned")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {name}", "",
             f"A `{recipe.task}` model {what} with kd {info['version']}"
             + (f" in {info['steps']:,} optimizer steps at learning rate {info['learning_rate']:g}."
                if info["steps"] is not None else ".")]
    if "validation" in info:
        v = info["validation"]
        lines += ["", f"The weights kept are those of step {v['best_step']:,}, the best {v['metric']} "
                      f"({v['best_value']:.4f}) on the validation rows"
                      + (", where training stopped early." if v.get("stopped_early") else ".")]
    rows = [("teacher", info["teacher_measured"]), ("this model", info["model"])] if role == "student" \
        else [("this model", info["model"])]
    if info["model"] and info["metric"]:
        lines += ["", f"Measured on `{_eval_path(recipe)}`:", "",
                  f"| model | {info['metric']} | retention | parameters | latency (ms per batch) |",
                  "|---|---|---|---|---|"]
        for label, result in rows:
            if result:
                latency = _number(result.get("latency_ms"), ".1f")
                where = f" ({result['latency_device']})" if latency and result.get("latency_device") else ""
                lines.append(f"| {label} | {_number(result.get('value'), '.4f')} | "
                             f"{_number(result.get('retention'), '.3f')} | {_number(result.get('params'), ',')} | "
                             f"{latency}{where} |")
    if "tasks" in info:
        lines += ["", "Measured on each task's evaluation file, with the head of that task:", "",
                  "| task | metric | teacher | this model | retention | parameters |", "|---|---|---|---|---|---|"]
        for name, entry in info["tasks"].items():
            model, teacher_result = entry["model"] or {}, entry["teacher_measured"] or {}
            lines.append(f"| {name} | {entry['metric']} | {_number(teacher_result.get('value'), '.4f')} | "
                         f"{_number(model.get('value'), '.4f')} | {_number(model.get('retention'), '.3f')} | "
                         f"{_number(model.get('params'), ',')} |")
    generations = (report.get("student" if role == "student" else "model") or {}).get("generations")
    if generations:
        lines += ["", "## Generations", "", "Greedy continuations of fixed prompts, as the report gives them:", ""]
        for sample in generations:
            lines += [f"- **{_inline(sample['prompt'])}** {_inline(sample['continuation'])}"]
    lines += ["", "## Recipe", "", "```yaml", recipe_to_yaml(recipe).rstrip(), "```", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """``text`` on one Markdown line, its emphasis marks escaped."""
    return " ".join(text.split()).replace("*", "\\*").replace("_", "\\_")


def write_model_card(directory: Path, recipe: Recipe, report: dict[str, Any], role: Role,
                     pipeline_tag: str | None = None) -> Path:
    """Write ``directory/README.md`` (atomically) for the model saved there, named after the run's
    folder; returns its path."""
    directory = Path(directory)
    path = directory / CARD_FILE
    write_text_atomic(path, card_text(recipe, report, role, directory.resolve().parent.name or "model", pipeline_tag))
    return path


def read_front_matter(path: Path) -> dict[str, Any]:
    """The YAML front matter of a card (what the Hub reads)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{path} has no YAML front matter")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])
