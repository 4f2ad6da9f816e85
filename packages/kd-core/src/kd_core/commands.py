"""kd-core's subcommands: ``plugins``, ``distill``, ``train``, ``suite``, ``demo`` and ``size``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kd_core.assembly import task_for
from kd_core.checkpoint import write_text_atomic
from kd_core.distributed import is_main_process
from kd_core.options import ManyValues
from kd_core.plugins import registry, skipped_plugins
from kd_core.preflight import check_recipe, check_training
from kd_core.recipe import run_distill, run_train
from kd_core.registry import KINDS
from kd_core.schema import ModelSpec, Recipe, load_recipe, recipe_to_yaml
from kd_core.tasks import get_task


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List every registered name with its kind and provider."""
    rows = [
        {"kind": kind, "name": entry.name, "provider": entry.provider.distribution or entry.provider.module,
         "module": entry.provider.module}
        for kind in KINDS for entry in registry(kind).entries()
    ]
    skipped = [{"name": s.name, "distribution": s.distribution, "reason": s.reason} for s in skipped_plugins()]
    if as_json:
        click.echo(json.dumps({"registered": rows, "skipped": skipped}, indent=2))
        return
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for h, k in
              (("KIND", "kind"), ("NAME", "name"), ("PROVIDER", "provider"))]
    click.echo(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'PROVIDER':<{widths[2]}}  MODULE")
    for r in rows:
        click.echo(f"{r['kind']:<{widths[0]}}  {r['name']:<{widths[1]}}  {r['provider']:<{widths[2]}}  {r['module']}")
    for s in skipped:
        click.echo(f"skipped plugin {s['name']} ({s['distribution']}): {s['reason']}", err=True)


def _run_options(function):
    function = click.option("--check", is_flag=True,
                            help="Only check the recipe: build its parts, run one batch, print the plan.")(function)
    function = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                            help="Override a recipe field, e.g. --set training.num_steps=100.")(function)
    function = click.option("--resume", is_flag=True,
                            help="Continue from the newest checkpoint in the output directory.")(function)
    function = click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
                            default=None, help="Where outputs go (default: runs/<recipe name>).")(function)
    return click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))(function)


def _start_run(recipe: Path, output_dir: Path | None, overrides: tuple[str, ...]) -> tuple[Recipe, Path, Path]:
    """Load and validate the recipe, and choose the output folder (created by :func:`_save_recipe`)."""
    parsed, base_dir = load_recipe(recipe, list(overrides))
    task_for(parsed)  # an unknown task fails before anything is written
    return parsed, base_dir, output_dir or Path("runs") / recipe.stem


def _save_recipe(recipe: Recipe, output_dir: Path) -> None:
    """Create the output folder and save the recipe as run there."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_dir / "recipe.yaml", recipe_to_yaml(recipe))


@click.command("distill")
@_run_options
def distill_command(recipe: Path, output_dir: Path | None, resume: bool, overrides: tuple[str, ...],
                    check: bool) -> None:
    """Distill a teacher into a student as the RECIPE (YAML/JSON) says.

    The recipe is checked first (--check stops there): its models built, one batch run through
    every loss term, the plan printed.
    """
    parsed, base_dir, output_dir = _start_run(recipe, output_dir, overrides)
    checked = check_recipe(parsed, base_dir)
    if is_main_process():
        click.echo(checked.text, err=not check)
    if check:
        return
    _save_recipe(parsed, output_dir)
    report = run_distill(parsed, output_dir, base_dir, resume=resume, checked=checked)
    if not is_main_process():
        return
    click.echo(json.dumps(report, indent=2))
    click.echo(f"student saved to {output_dir / 'student'}; report at {output_dir / 'report.json'}")


@click.command("train")
@_run_options
def train_command(recipe: Path, output_dir: Path | None, resume: bool, overrides: tuple[str, ...],
                  check: bool) -> None:
    """Fine-tune the RECIPE's teacher on its labelled data (with teacher.finetune's settings, if any)."""
    parsed, base_dir, output_dir = _start_run(recipe, output_dir, overrides)
    checked = check_training(parsed, base_dir)
    if is_main_process():
        click.echo(checked.text, err=not check)
    if check:
        return
    _save_recipe(parsed, output_dir)
    report = run_train(parsed, output_dir, base_dir, resume=resume)
    if not is_main_process():
        return
    click.echo(json.dumps(report, indent=2))
    click.echo(f"model saved to {output_dir / 'model'}; report at {output_dir / 'report.json'}")


def _models(values: tuple[str, ...]) -> dict[str, str]:
    models: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r}: write it as NAME=PATH", param_hint="--models")
        if name in models:
            raise click.BadParameter(f"the name {name!r} is given twice", param_hint="--models")
        models[name] = path
    return models


@click.command("suite")
@click.argument("suite", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--models", "-m", cls=ManyValues, multiple=True, required=True, metavar="NAME=PATH ...",
              help="The models to fine-tune on every task (folders, e.g. general students), each as NAME=PATH.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where runs and tables go (default: runs/suite-<suite name>).")
@click.option("--reference", default=None, help="The model the speed-ups are measured against (default: the first).")
@click.option("--tasks", "only", default=None, help="Run only these of the suite's tasks (comma-separated).")
def suite_command(suite: Path, models: tuple[str, ...], output_dir: Path | None, reference: str | None,
                  only: str | None) -> None:
    """Fine-tune every model on every task of SUITE with the same settings and seed; write a table
    (suite.md, suite.json, suite.png) of each task's metric, the average, parameters, latency and
    speed-up. Finished (model, task) runs are read back on a rerun; interrupted ones resume."""
    from kd_core.suite import load_suite, markdown, run_suite

    parsed, base_dir = load_suite(suite)
    if only:
        chosen = [t.strip() for t in only.split(",") if t.strip()]
        unknown = [t for t in chosen if t not in parsed.tasks]
        if unknown:
            raise click.BadParameter(f"{', '.join(unknown)}: the suite's tasks are {', '.join(parsed.tasks)}",
                                     param_hint="--tasks")
        latency = parsed.latency if parsed.latency in chosen else None
        parsed = parsed.model_copy(update={"tasks": {t: parsed.tasks[t] for t in chosen}, "latency": latency})
    output_dir = output_dir or Path("runs") / f"suite-{suite.stem}"
    table = run_suite(parsed, base_dir, _models(models), output_dir, reference, echo=click.echo)
    click.echo(markdown(table))
    click.echo(f"tables in {output_dir / 'suite.md'} and {output_dir / 'suite.json'}")


@click.command("demo")
@click.option("--quick", is_flag=True, help="A smaller run that finishes in under 3 minutes on 2 CPU cores.")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path),
              default=Path("kd-demo-output"), show_default=True)
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report here (benchmarks/results/demo-*.json feeds the README's demo table).")
@click.pass_context
def demo_command(ctx: click.Context, quick: bool, output_dir: Path, results: Path | None) -> None:
    """Fine-tune the bundled MiniLM teacher on SST-2 and distill it into small students."""
    from kd_core.demo import run_demo

    group = ctx.find_root().command
    analyze = group.get_command(ctx, "analyze") if isinstance(group, click.Group) else None
    run_demo(output_dir, quick=quick, echo=click.echo, results=results, analyze=analyze)


@click.command("size")
@click.argument("model")
@click.option("--task", default="sequence_classification", show_default=True,
              help="The registered task that loads MODEL.")
@click.option("--depth", type=click.IntRange(min=0), default=3, show_default=True,
              help="How many levels of submodules to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a tree.")
def size_command(model: str, task: str, depth: int, as_json: bool) -> None:
    """Parameters and megabytes per module of MODEL (a directory, or package:MODULE)."""
    from dataclasses import asdict

    from kd_core.size import format_sizes, module_sizes

    rows = module_sizes(get_task(task).load_teacher(ModelSpec(model=model), train_head=True), max_depth=depth)
    if as_json:
        click.echo(json.dumps([{**asdict(r), "megabytes": round(r.megabytes, 4)} for r in rows], indent=2))
    else:
        click.echo(format_sizes(rows))


BUILTIN_COMMANDS = (plugins_command, distill_command, train_command, suite_command, demo_command, size_command)
