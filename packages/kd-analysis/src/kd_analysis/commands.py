"""``kd analyze`` (what the teacher and its students get wrong, how sure they are, where they
disagree) and ``kd probe`` (what each of their layers encodes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kd_analysis.analysis import ANALYSIS_FILE, analyze
from kd_analysis.answers import analyze_answers
from kd_analysis.curves import read_curves
from kd_analysis.predictions import evaluate_models, predict, texts_of
from kd_analysis.tokens import analyze_tokens
from kd_core.data import default_text_column, read_records, resolve_path
from kd_core.errors import ConfigError
from kd_core.inference import RunSettings
from kd_core.options import ManyValues
from kd_core.schema import DataFile
from kd_core.tasks import get_metric, get_task


@click.command("analyze")
@click.option("--models", "-m", cls=ManyValues, multiple=True, required=True,
              help="The models, reference (teacher) first: directories or package:MODULE.")
@click.option("--names", default=None, help="Comma-separated names for the models (default: teacher, student-1, ...).")
@click.option("--data", "-d", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A labelled TSV/CSV/JSONL file (or CoNLL, with --task token_classification; SQuAD JSON, with "
                   "--task question_answering -c question -c context -l answers; text, with --task causal_lm).")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--text-column", "-c", "text_columns", multiple=True, default=("sentence",), show_default=True,
              help="The text column; twice for a pair.")
@click.option("--label-column", "-l", default="label", show_default=True)
@click.option("--columns", "header", default=None, help="Comma-separated column names of a file without a header.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--task", default="sequence_classification", show_default=True)
@click.option("--metric", default="accuracy", show_default=True,
              help="A registered metric of class labels (accuracy, matthews, macro_f1, or a plugin's).")
@click.option("--bins", type=click.IntRange(min=2), default=10, show_default=True, help="Confidence bins.")
@click.option("--examples", type=click.IntRange(min=0), default=5, show_default=True,
              help="Examples shown per cell of each disagreement table.")
@click.option("--runs", cls=ManyValues, multiple=True,
              help="The training run of each model, in the order of --models (folders with metrics.jsonl): "
                   "their learning curves go to learning_curves.png.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def analyze_command(models: tuple[str, ...], names: str | None, data_path: Path, output: Path,
                    text_columns: tuple[str, ...], label_column: str, header: str | None, limit: int | None,
                    task: str, metric: str, bins: int, examples: int, runs: tuple[str, ...], batch_size: int,
                    max_length: int, device: str, quiet: bool) -> None:
    """Predictions, mistakes, agreement and calibration of a teacher and its students on DATA."""
    labels = _model_names(names, models)
    if runs and len(runs) != len(models):
        raise ConfigError(f"--runs: give one training run per model ({len(models)}), got {len(runs)}")
    curves = {name: read_curves(Path(run)) for name, run in zip(labels, runs, strict=True)} if runs else None
    data = DataFile(path=str(resolve_path(data_path, None, "--data")), text=list(text_columns), label=label_column,
                    limit=limit, columns=header.split(",") if header else None)
    registered = get_task(task)
    if "token_nll" in registered.reads:
        text = list(text_columns) if text_columns != ("sentence",) else "text"
        _analyze_tokens(registered, dict(zip(labels, models, strict=True)),
                        DataFile(path=data.path, text=text, limit=limit, columns=data.columns), output, max_length,
                        RunSettings(batch_size, device), not quiet)
        return
    if "answers" in registered.reads:
        _analyze_answers(registered, dict(zip(labels, models, strict=True)), data, output, max_length,
                         RunSettings(batch_size, device), not quiet)
        return
    if get_metric(metric).reads != "labels":
        raise ConfigError(f"--metric {metric}: kd analyze compares one class per example; choose a metric of "
                          "class labels (accuracy, matthews, macro_f1)")
    predictions = [predict(registered, name, model, data, max_length, batch_size, device, not quiet)
                   for name, model in zip(labels, models, strict=True)]
    rows = read_records(Path(data.path), data.limit, data.format, "--data", data.columns)
    report = analyze(predictions, texts_of(rows, data), output, metric, bins, examples, curves)
    for name, result in report["models"].items():
        click.echo(f"{name:<14} {metric} {result['value']:.4f}  ECE {result['ece']:.4f}  "
                   f"confidence right {result['mean_confidence_right'] or 0:.3f} / "
                   f"wrong {result['mean_confidence_wrong'] or 0:.3f}")
    for name, table in report["comparisons"].items():
        counts = table["counts"]
        click.echo(f"{name} vs {report['reference']}: agree {table['agreement']:.3f}; "
                   f"only {report['reference']} right {counts['only_reference_right']}, "
                   f"only {name} right {counts['only_model_right']}, "
                   f"both wrong {counts['both_wrong_same'] + counts['both_wrong_different']}")
    figures = "reliability.png, confidence.png" + (", learning_curves.png" if curves else "")
    click.echo(f"written: {output / ANALYSIS_FILE}, predictions.jsonl, {figures}")


def _echo_metrics(report: dict[str, Any]) -> None:
    """One line per model of a task's own metrics (the ones its evaluation reports, baseline left out)."""
    for name, result in report["models"].items():
        click.echo(f"{name:<14} " + "  ".join(f"{m} {v:.4f}" for m, v in result.items() if m != "baseline"))


def _analyze_tokens(task: Any, models: dict[str, str], data: DataFile, output: Path, max_length: int,
                    settings: RunSettings, progress: bool) -> None:
    evaluations, _ = evaluate_models(task, models, data, max_length, settings, progress)
    report = analyze_tokens(evaluations, output)
    _echo_metrics(report)
    for name, table in report["comparisons"].items():
        counts = table["counts"]
        click.echo(f"{name} vs {report['reference']}: same next token {table['agreement']:.3f} of "
                   f"{report['tokens']:,} tokens; only {report['reference']} right {counts['only_reference_right']}, "
                   f"only {name} right {counts['only_model_right']}")
    click.echo(f"written: {output / ANALYSIS_FILE}, predictions.jsonl")


def _analyze_answers(task: Any, models: dict[str, str], data: DataFile, output: Path, max_length: int,
                     settings: RunSettings, progress: bool) -> None:
    evaluations, texts = evaluate_models(task, models, data, max_length, settings, progress)
    report = analyze_answers(evaluations, texts, output)
    _echo_metrics(report)
    for name, table in report["comparisons"].items():
        counts = table["counts"]
        click.echo(f"{name} vs {report['reference']}: same answer {table['agreement']:.3f}, F1 with it "
                   f"{table['f1_with_reference']:.3f}; only {report['reference']} right "
                   f"{counts['only_reference_right']}, only {name} right {counts['only_model_right']}")
    click.echo(f"written: {output / ANALYSIS_FILE}, predictions.jsonl")


@click.command("probe")
@click.option("--models", "-m", cls=ManyValues, multiple=True, required=True,
              help="The models (teacher first): directories or package:MODULE.")
@click.option("--names", default=None, help="Comma-separated names for the models (default: teacher, student-1, ...).")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A plain-text file (one sentence per line) or a TSV/CSV/JSONL file of sentences.")
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--text-column", "-c", default=None,
              help="The sentence column (default: the file's only column, else 'sentence' or 'text').")
@click.option("--columns", "header", default=None, help="Comma-separated column names of a file without a header.")
@click.option("--limit", type=click.IntRange(min=1), default=2000, show_default=True, help="Sentences read.")
@click.option("--task", default="sequence_classification", show_default=True,
              help="The registered task that loads the models.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def probe_command(models: tuple[str, ...], names: str | None, corpus: Path, output: Path, text_column: str | None,
                  header: str | None, limit: int, task: str, seed: int, batch_size: int, max_length: int, device: str,
                  quiet: bool) -> None:
    """Probe every layer of the models with SentEval-style tasks built from CORPUS."""
    from kd_analysis.probing import PROBING_FILE, probe
    from kd_analysis.probing_tasks import build_tasks

    labels = _model_names(names, models)
    rows = read_records(corpus, limit, "auto", "--corpus", header.split(",") if header else None)
    text_column = text_column or default_text_column(rows, corpus, "--text-column")
    if text_column not in rows[0]:
        raise ConfigError(f"--text-column: {corpus.name} has no column {text_column!r}; it has {', '.join(rows[0])}")
    tasks = build_tasks([str(row[text_column]) for row in rows], seed)
    report = probe(get_task(task), dict(zip(labels, models, strict=True)), tasks, output, seed, max_length,
                   batch_size, device, not quiet)
    width = max(16, *(len(name) + 2 for name in labels))
    click.echo(f"{'task':<24}{'chance':>8}" + "".join(f"{name:>{width}}" for name in labels) + "   (best layer)")
    for name, entry in report["tasks"].items():
        if not entry["built"]:
            click.echo(f"{name:<24}not built: {entry['reason']}")
            continue
        cells = []
        for model in labels:
            scores = report["models"][model]["tasks"][name]
            best = max(range(len(scores)), key=scores.__getitem__)
            cells.append(f"{scores[best]:.3f} (L{best})")
        click.echo(f"{name:<24}{entry['chance']:>8.3f}" + "".join(f"{c:>{width}}" for c in cells))
    click.echo(f"written: {output / PROBING_FILE}, probing.png, tasks/")


def _model_names(names: str | None, models: tuple[str, ...]) -> list[str]:
    labels = names.split(",") if names else ["teacher", *(f"student-{i}" for i in range(1, len(models)))]
    if len(labels) != len(models) or len(set(labels)) != len(labels):
        raise ConfigError(f"--names: give {len(models)} distinct names, got {labels}")
    return labels
