"""Reading labelled examples from TSV, CSV, JSONL and CoNLL files (standard library only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from kd_core.errors import ConfigError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def resolve_path(path: str | Path, base_dir: Path | None, where: str) -> Path:
    """Resolve a data path: absolute as is; relative against ``base_dir`` (the recipe's folder),
    then the working directory. Fails naming every place it looked."""
    candidate = Path(path).expanduser()
    tried = [candidate] if candidate.is_absolute() else \
        [p for p in ((base_dir / candidate) if base_dir else None, Path.cwd() / candidate) if p]
    for option in tried:
        if option.is_file():
            return option.resolve()
    raise ConfigError(f"{where}: file {str(path)!r} not found (looked at {', '.join(map(str, tried))})")


CONLL_COLUMNS = ["tokens", "tags"]
"""The columns of a CoNLL file's sentences unless ``columns`` names them."""


def read_records(path: Path, limit: int | None = None, format: str = "auto", where: str = "data",
                 columns: list[str] | None = None, skip: int = 0) -> list[dict[str, Any]]:
    """Every row of a TSV/CSV/JSONL file as a dict of all its columns, in file order. A TSV/CSV
    without a header row (CoLA's) needs its column names as ``columns``. A CoNLL file (one
    ``token<TAB>tag`` per line, a blank line between sentences; WNUT-16's) gives one row per
    sentence with the lists ``tokens`` and ``tags`` (or the two names in ``columns``); fields may be
    separated by tabs or spaces, the tag is the last, ``-DOCSTART-`` lines are skipped. The first
    ``skip`` rows are passed over (a held-out part of a file that has no dev split)."""
    kind = FORMATS.get(path.suffix.lower()) if format == "auto" else format
    if kind is None:
        raise ConfigError(f"{where}: cannot tell the format of {path.name}; "
                          f"set format to one of tsv, csv, jsonl, conll")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        if kind == "conll":
            records = _conll_sentences(handle, columns or CONLL_COLUMNS, path, where)
        elif kind == "jsonl":
            records = (json.loads(line) for line in handle if line.strip())
        else:
            records = csv.DictReader(handle, fieldnames=columns, delimiter="\t" if kind == "tsv" else ",",
                                     quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL)
        for number, record in enumerate(records):
            if number < skip:
                continue
            rows.append(dict(record))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ConfigError(f"{where}: {path} holds no examples")
    return rows


def _conll_sentences(lines: Any, columns: list[str], path: Path, where: str) -> Any:
    if len(columns) != 2:
        raise ConfigError(f"{where}: a CoNLL file has two columns (tokens and tags); got names {columns}")
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if tokens:
                yield {columns[0]: tokens, columns[1]: tags}
            tokens, tags = [], []
            continue
        parts = line.split()
        if parts[0] == "-DOCSTART-":
            continue
        if len(parts) < 2:
            raise ConfigError(f"{where}: {path.name} line {number} is not 'token<TAB>tag': {line.strip()!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        yield {columns[0]: tokens, columns[1]: tags}


def read_examples(path: Path, columns: list[str], limit: int | None = None, format: str = "auto",
                  where: str = "data", header: list[str] | None = None, skip: int = 0) -> list[dict[str, Any]]:
    """Rows of a file (see :func:`read_records`) as dicts, keeping only ``columns`` (all must
    exist); ``header`` names the columns of a file without a header row."""
    rows = read_records(path, limit, format, where, header, skip)
    for number, record in enumerate(rows, start=1):
        missing = [c for c in columns if c not in record]
        if missing:
            raise ConfigError(f"{where}: {path.name} row {number} has no column(s) "
                              f"{', '.join(missing)}; its columns are {', '.join(record)}")
    return [{c: record[c] for c in columns} for record in rows]
