"""Growing a training set with a registered augmenter, streamed to a resumable JSON-lines file.

Augmenters are registered (``kd_register_augmenters``) as factories ``factory(**options)``
returning one of two kinds:

- an :class:`ExampleAugmenter` edits one text at a time (TextBrewer's token edits, Tang et al.'s
  rules, masked-LM replacement): each input row gives up to ``n`` new rows, each derived from it;
- a :class:`CorpusAugmenter` writes new texts from the whole corpus (causal-LM generation):
  ``n`` new rows in all.

Output rows hold the text column(s) plus ``augmented`` (false for the copied originals) and, for
an edited row, ``source_row`` (the input row it came from). Originals are all copied, with every
column; new rows have no label, since an edit may change it: the teacher labels them
(:mod:`kd_core.labelling`). A new row equal to an input row or to a row already written is
dropped. Sentence pairs are augmented pairwise: each new pair edits both sides of one input pair.

Row ``i``'s edits are drawn from a generator seeded with ``(seed, i)`` and generation batch
``b`` from one seeded with ``(seed, b)``, so an interrupted run resumes to the same file.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from kd_core.data import file_fingerprint, read_records
from kd_core.errors import ConfigError
from kd_core.plugins import lookup
from kd_core.resumable import ResumableJsonl

AUGMENTED = "augmented"
SOURCE_ROW = "source_row"
ATTEMPTS_PER_ROW = 3
"""An example augmenter is asked for at most this many times ``n`` variants of a row, to find
``n`` that are new (short sentences have few distinct edits)."""
ROWS_PER_UNIT = 16
"""Input rows written per resumable unit (each unit saves progress once)."""
BATCHES_WITHOUT_NEW_ROWS = 20
"""A corpus augmenter stops after this many batches in a row that give no new row."""
RUN_ONLY_OPTIONS = ("device", "progress")
"""Augmenter options that do not change what is written, left out of the resume check (a run
started on a CPU may be finished on a GPU)."""
WORK_SUFFIX = ".work"
"""A corpus augmenter keeps what a resumed run reuses (a fine-tuned model) in ``OUT.work/``,
which is removed when the file is complete."""


@runtime_checkable
class ExampleAugmenter(Protocol):
    """Edits one text at a time."""

    def fit(self, texts: Sequence[str]) -> None:
        """See the whole corpus once before editing (e.g. to learn which words share a POS tag)."""

    def variants(self, text: str, rng: random.Random) -> Iterator[str]:
        """An endless stream of edited versions of ``text``, drawn with ``rng`` only."""


@runtime_checkable
class CorpusAugmenter(Protocol):
    """Writes new texts from a corpus."""

    def fit(self, texts: Sequence[str], work_dir: Path, seed: int) -> None:
        """Learn from the corpus (e.g. fine-tune a language model) with every random choice fixed
        by ``seed``, keeping what a resumed run can reuse under ``work_dir`` (a folder that is
        specific to the run's settings)."""

    def sample(self, count: int, seed: int) -> list[str]:
        """``count`` new texts, determined by ``seed``."""


@dataclass(frozen=True)
class AugmentResult:
    """What an augmentation wrote: every row of the file, how many of them are new, and how many
    input rows they came from."""

    rows: int
    new: int
    inputs: int


def build_augmenter(name: str, options: dict[str, Any], where: str = "augmenter") -> Any:
    """The registered augmenter ``name`` built with ``options``; a ConfigError names what is wrong."""
    try:
        factory = lookup("augmenters", name)
    except LookupError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"{where} {name!r}: {exc}") from None


def augment_file(path: Path, text_columns: Sequence[str], name: str, options: dict[str, Any], output: str | Path,
                 *, n: int, seed: int = 0, keep_original: bool = True, limit: int | None = None, skip: int = 0,
                 format: str = "auto", header: list[str] | None = None, overwrite: bool = False,
                 progress: bool = True, batch_size: int = 32, where: str = "augmenter") -> AugmentResult:
    """Grow the rows of the file at ``path`` (read as :func:`~kd_core.data.read_records` does)
    with the registered augmenter ``name`` and its ``options``; see :func:`augment_rows`. The
    resume check covers the file's content, how it is read and every option that changes what
    is written."""
    rows = read_records(path, limit, format, "augment input", header, skip)
    settings = {"input": file_fingerprint(path), "limit": limit, "skip": skip, "format": format, "header": header,
                "augmenter": name, "options": {k: v for k, v in options.items() if k not in RUN_ONLY_OPTIONS}}
    return augment_rows(rows, text_columns, lambda: build_augmenter(name, options, where), output, n=n, seed=seed,
                        keep_original=keep_original, settings=settings, overwrite=overwrite, progress=progress,
                        batch_size=batch_size)


def augment_rows(rows: Sequence[dict[str, Any]], text_columns: Sequence[str], make_augmenter: Callable[[], Any],
                 output: str | Path, n: int, seed: int = 0, keep_original: bool = True,
                 settings: dict[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
                 batch_size: int = 32) -> AugmentResult:
    """Write ``rows`` grown by the augmenter ``make_augmenter()`` builds to ``output`` (JSON
    lines), resuming a killed run with the same ``settings``; returns what the file holds. The
    augmenter is built only when there is work left.

    ``n`` is per input row for an example augmenter and in all for a corpus augmenter (which
    samples ``batch_size`` texts at a time).
    """
    columns = list(text_columns)
    if not 1 <= len(columns) <= 2:
        raise ConfigError(f"augment: give one text column or a pair, got {columns}")
    if n < 1:
        raise ConfigError(f"augment: n must be at least 1, got {n}")
    for number, row in enumerate(rows, start=1):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ConfigError(f"augment: input row {number} has no column(s) {', '.join(missing)}; "
                              f"its columns are {', '.join(row)}")
    settings = {**(settings or {}), "columns": columns, "n": n, "seed": seed, "keep_original": keep_original,
                "batch_size": batch_size}
    work_dir = Path(f"{output}{WORK_SUFFIX}")
    if overwrite:
        shutil.rmtree(work_dir, ignore_errors=True)
    with ResumableJsonl(output, settings, overwrite) as stream:
        if not stream.complete:
            _augment(rows, columns, make_augmenter(), stream, n, seed, keep_original, progress, batch_size,
                     work_dir / stream.fingerprint[:16])
            stream.finish()
            shutil.rmtree(work_dir, ignore_errors=True)
        return AugmentResult(stream.written, sum(1 for record in stream.records() if record[AUGMENTED]), len(rows))


def _augment(rows: Sequence[dict[str, Any]], columns: list[str], augmenter: Any, stream: ResumableJsonl, n: int,
             seed: int, keep_original: bool, progress: bool, batch_size: int, work_dir: Path) -> None:
    written = list(stream.records())
    seen = {_key(record, columns) for record in [*written, *rows]}
    if isinstance(augmenter, ExampleAugmenter):
        _augment_each(rows, columns, augmenter, stream, seen, n, seed, keep_original, progress)
    elif isinstance(augmenter, CorpusAugmenter):
        if len(columns) != 1:
            raise ConfigError(f"augment: {type(augmenter).__name__} writes single texts, not pairs")
        new = sum(1 for record in written if record[AUGMENTED])
        _augment_corpus(rows, columns[0], augmenter, stream, seen, new, n, seed, keep_original, progress, batch_size,
                        work_dir)
    else:
        raise ConfigError(f"augment: {type(augmenter).__name__} is neither an ExampleAugmenter (variants) "
                          "nor a CorpusAugmenter (sample)")


def _key(row: dict[str, Any], columns: list[str]) -> tuple[str, ...]:
    return tuple(str(row[c]).strip() for c in columns)


def _augment_each(rows: Sequence[dict[str, Any]], columns: list[str], augmenter: ExampleAugmenter,
                  stream: ResumableJsonl, seen: set, n: int, seed: int, keep_original: bool, progress: bool) -> None:
    augmenter.fit([str(row[c]) for row in rows for c in columns])
    start = stream.units_done * ROWS_PER_UNIT
    bar = tqdm(total=len(rows), initial=start, desc="augment", unit="row", disable=not progress)
    for first in range(start, len(rows), ROWS_PER_UNIT):
        unit = []
        for index in range(first, min(first + ROWS_PER_UNIT, len(rows))):
            row = rows[index]
            if keep_original:
                unit.append({**row, AUGMENTED: False})
            rng = random.Random(f"{seed}:{index}")
            variants = zip(*(augmenter.variants(str(row[c]), rng) for c in columns), strict=False)  # endless
            added = 0
            for _ in range(ATTEMPTS_PER_ROW * n):
                texts = next(variants)
                key = tuple(t.strip() for t in texts)
                if all(key) and _admit(key, seen):
                    unit.append({**dict(zip(columns, key, strict=True)), AUGMENTED: True, SOURCE_ROW: index})
                    added += 1
                    if added == n:
                        break
        stream.write_unit(unit)
        bar.update(min(ROWS_PER_UNIT, len(rows) - first))
        bar.set_postfix(written=stream.written)
    bar.close()


def _augment_corpus(rows: Sequence[dict[str, Any]], column: str, augmenter: CorpusAugmenter, stream: ResumableJsonl,
                    seen: set, new: int, n: int, seed: int, keep_original: bool, progress: bool, batch_size: int,
                    work_dir: Path) -> None:
    augmenter.fit([str(row[column]) for row in rows], work_dir, seed)
    if stream.units_done == 0:
        stream.write_unit([{**row, AUGMENTED: False} for row in rows] if keep_original else [])
    bar = tqdm(total=n, initial=new, desc="generate", unit="text", disable=not progress)
    fruitless = 0
    while new < n:
        batch = stream.units_done  # unit 0 holds the originals; unit b >= 1 is batch b
        unit = []
        for text in augmenter.sample(batch_size, seed=_batch_seed(seed, batch)):
            key = (text.strip(),)
            if key[0] and new + len(unit) < n and _admit(key, seen):
                unit.append({column: key[0], AUGMENTED: True})
        stream.write_unit(unit)
        new += len(unit)
        bar.update(len(unit))
        fruitless = 0 if unit else fruitless + 1
        if fruitless == BATCHES_WITHOUT_NEW_ROWS:
            bar.write(f"generate: stopped at {new} of {n} new texts; the last {fruitless} batches gave none")
            break
    bar.close()


def _batch_seed(seed: int, batch: int) -> int:
    return random.Random(f"{seed}:batch:{batch}").getrandbits(63)


def _admit(key: tuple[str, ...], seen: set) -> bool:
    if key in seen:
        return False
    seen.add(key)
    return True

