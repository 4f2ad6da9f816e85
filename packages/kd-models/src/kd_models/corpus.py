"""Unlabelled text for task-agnostic distillation: files read, tokenized once, packed into
sequences of ``max_length`` tokens and kept memory-mapped on disk.

Sources (a recipe's ``data.train``, or each of its ``sources``):

- a plain-text file: one paragraph or document per line (blank lines skipped);
- JSON lines, CSV or TSV: the text column (``text`` unless ``data.text`` names another), only the
  rows whose columns hold the values of ``select`` (``{source: imdb}``), after ``skip`` and up
  to ``limit`` of them;
- a SQuAD JSON file: its context paragraphs, each once.

Packing (the input of BERT's and RoBERTa's pre-training): every document is tokenized without
special tokens, documents follow one another with a separator token between them, and the
stream is cut into blocks of ``max_length - 2`` tokens, each read as ``[CLS] block [SEP]``. Only
a source's last block is shorter; a block may end one document and start the next (RoBERTa's
FULL-SENTENCES). For a causal LM (GPT-2's input) the separator is the end-of-sequence token and
the blocks are ``max_length`` tokens with no special token around them.

Cache: a source's sequences are written once per (file content, rows read, tokenizer,
``max_length``) with the Hugging Face ``datasets`` library, as Arrow files written batch by
batch (the tokens never have to fit in memory), under :func:`cache_dir`; every later read maps
them from disk. A half-written cache never counts: it is built in a temporary folder and
renamed into place.

Mixture: a source of ``weight`` w gives floor(w) passes over its sequences plus a sample of a
fraction w - floor(w) of them, seeded by the source's content (so every run of a recipe reads the
same corpus); the corpus is the sources one after the other, which the training loader shuffles.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kd_core.data import file_fingerprint, iter_records, resolve_path
from kd_core.errors import ConfigError
from kd_core.schema import DataFile
from kd_models.squad import read_contexts

PACKING_VERSION = 1
"""Bumped whenever packing changes, so that caches written by another version are not read."""
TOKENIZE_BATCH = 256
"""Documents tokenized at once."""
WRITE_BATCH = 1000
"""Sequences per Arrow record batch."""


def cache_dir() -> Path:
    """Where tokenized corpora are kept: ``$KD_CACHE_DIR/corpus``, by default ``~/.cache/kd/corpus``."""
    return Path(os.environ.get("KD_CACHE_DIR") or Path.home() / ".cache" / "kd") / "corpus"


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of what decides a tokenizer's ids: its class, vocabulary and normalisation (not the
    truncation and padding settings, which a fast tokenizer's backend changes as it is used)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        described = json.dumps(state, sort_keys=True)
    else:
        described = json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(f"{type(tokenizer).__name__}|{tokenizer.cls_token_id}|{tokenizer.sep_token_id}|".encode())
    digest.update(described.encode())
    return digest.hexdigest()


def documents(file: DataFile, path: Path, where: str) -> Iterator[str]:
    """The documents of one source, in file order (see the module's docstring)."""
    contexts = read_contexts(path, where)
    if contexts is not None:
        if file.select:
            raise ConfigError(f"{where}.select: {path.name} is a SQuAD file, whose context paragraphs have no columns "
                              "to select on")
        selected: Iterator[str] = iter(contexts)
    else:
        columns = file.text_columns
        if len(columns) != 1:
            raise ConfigError(f"{where}.text: unlabelled text is read from one column, got {columns}")
        selected = _selected_texts(path, columns[0], file, where)
    end = None if file.limit is None else file.skip + file.limit
    for number, text in enumerate(selected):
        if number < file.skip:
            continue
        if end is not None and number >= end:
            return
        yield text


def _selected_texts(path: Path, column: str, file: DataFile, where: str) -> Iterator[str]:
    select = file.select or {}
    for number, record in enumerate(iter_records(path, None, file.format, where, file.columns), start=1):
        if any(str(record.get(key)) != str(value) for key, value in select.items()):
            continue
        text = record.get(column)
        if text is None:
            raise ConfigError(f"{where}: {path.name} row {number} has no column {column!r} (its columns are "
                              f"{', '.join(str(c) for c in record)}); name the text column in data.text")
        if str(text).strip():
            yield str(text)


def packed_sequences(texts: Iterator[str], tokenizer: Any, max_length: int,
                     causal: bool = False) -> Iterator[list[int]]:
    """Sequences of at most ``max_length`` tokens from the documents ``texts`` (see the module's
    docstring): ``[CLS] block [SEP]`` with documents joined by the separator token, or with
    ``causal`` (a causal LM's pre-training input) blocks of ``max_length`` tokens with documents
    joined by the end-of-sequence token."""
    if causal:
        separator, first, last = tokenizer.eos_token_id, [], []
        if separator is None:
            raise ConfigError(f"the tokenizer {type(tokenizer).__name__} has no end-of-sequence token to join "
                              "documents with")
        if max_length < 2:
            raise ConfigError(f"data.max_length {max_length}: a causal LM's block needs at least two tokens")
    else:
        if max_length < 3:
            raise ConfigError(f"data.max_length {max_length}: a packed sequence needs room for [CLS], a token and "
                              "[SEP]")
        cls, separator = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls is None or separator is None:
            raise ConfigError(f"the tokenizer {type(tokenizer).__name__} has no [CLS]/[SEP] (or <s>/</s>) tokens to "
                              "pack sequences with")
        first, last = [cls], [separator]
    width = max_length - len(first) - len(last)
    stream: list[int] = []
    batch: list[str] = []

    def flush() -> Iterator[list[int]]:
        for ids in tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]:
            if stream:
                stream.append(separator)
            stream.extend(ids)
            while len(stream) >= width:
                yield [*first, *stream[:width], *last]
                del stream[:width]
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == TOKENIZE_BATCH:
            yield from flush()
    yield from flush()
    if stream:
        yield [*first, *stream, *last]


def source_fingerprint(file: DataFile, path: Path, tokenizer: Any, max_length: int, causal: bool = False) -> str:
    """What decides a source's sequences: its file's bytes, the rows read, the tokenizer, the
    length and the packing."""
    settings = {**({"packing": "causal"} if causal else {}), "file": file_fingerprint(path), "text": file.text,
                "format": file.format, "columns": file.columns,
                "select": file.select, "skip": file.skip, "limit": file.limit, "max_length": max_length,
                "tokenizer": tokenizer_identity(tokenizer), "version": PACKING_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def tokenized_source(file: DataFile, tokenizer: Any, max_length: int, base_dir: Path | None, where: str,
                     progress: bool = True, causal: bool = False) -> tuple[Any, str]:
    """One source's packed sequences as a memory-mapped ``datasets.Dataset`` with the column
    ``input_ids``, built on first use (see the module's docstring), and the source's fingerprint."""
    import datasets

    path = resolve_path(file.path, base_dir, f"{where}.path")
    fingerprint = source_fingerprint(file, path, tokenizer, max_length, causal)
    directory = cache_dir() / fingerprint[:32]
    if not (directory / "dataset_info.json").is_file():
        _build(file, path, tokenizer, max_length, directory, where, progress, causal)
    return datasets.load_from_disk(str(directory)), fingerprint


def _build(file: DataFile, path: Path, tokenizer: Any, max_length: int, directory: Path, where: str,
           progress: bool, causal: bool) -> None:
    import datasets

    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    bar = tqdm(desc=f"tokenizing {path.name}", unit="seq", disable=not progress)

    def rows() -> Iterator[dict[str, list[int]]]:
        for ids in packed_sequences(documents(file, path, where), tokenizer, max_length, causal):
            bar.update(1)
            yield {"input_ids": ids}

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    progress_bars = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        built = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(scratch / "build"),
                                                fingerprint=directory.name, writer_batch_size=WRITE_BATCH)
        if len(built) == 0:
            raise ConfigError(f"{where}: {path.name} holds no text to distil on (check data.text and data.select)")
        built.save_to_disk(str(scratch / "dataset"))
        del built
        if directory.exists():  # another process finished it first
            return
        os.replace(scratch / "dataset", directory)
    finally:
        bar.close()
        shutil.rmtree(scratch, ignore_errors=True)
        datasets.logging.set_verbosity(verbosity)
        if progress_bars:
            datasets.enable_progress_bars()


def mixture_indices(size: int, weight: float, seed: str) -> torch.Tensor:
    """The rows of a source of ``size`` sequences read per epoch at ``weight``: floor(weight)
    passes over all of them, then a sample of the fraction left, seeded by ``seed``."""
    whole = math.floor(weight)
    parts = [torch.arange(size)] * whole
    extra = round((weight - whole) * size)
    if extra:
        generator = torch.Generator().manual_seed(int(seed[:15], 16))
        parts.append(torch.randperm(size, generator=generator)[:extra].sort().values)
    if not parts:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(parts)


class CorpusDataset(torch.utils.data.Dataset):
    """Packed sequences of one or more sources, mixed by weight (see the module's docstring).

    Examples are ``{"input_ids": [...]}``; ``sources`` lists each source's file, sequences read
    per epoch and tokens, as reports show them.
    """

    def __init__(self, parts: list[tuple[Any, torch.Tensor]], sources: list[dict[str, Any]]) -> None:
        self.parts = [(data, rows) for data, rows in parts if len(rows)]
        self.sources = sources
        self.offsets = [0]
        for _, rows in self.parts:
            self.offsets.append(self.offsets[-1] + len(rows))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = bisect.bisect_right(self.offsets, index) - 1
        data, rows = self.parts[part]
        return {"input_ids": data[int(rows[index - self.offsets[part]])]["input_ids"]}


def read_corpus(file: DataFile, tokenizer: Any, max_length: int, base_dir: Path | None, where: str,
                progress: bool = True, causal: bool = False) -> CorpusDataset:
    """The corpus ``file`` names: one source, or its ``sources`` by weight (packed for a causal LM
    with ``causal``)."""
    sources = file.sources if file.sources is not None else [file]
    parts, described = [], []
    for index, source in enumerate(sources):
        at = f"{where}.sources[{index}]" if file.sources is not None else where
        data, fingerprint = tokenized_source(source, tokenizer, max_length, base_dir, at, progress, causal)
        rows = mixture_indices(len(data), source.weight, fingerprint)
        parts.append((data, rows))
        described.append({"path": source.path, "sequences": len(data), "read_per_epoch": len(rows),
                          "weight": source.weight})
    return CorpusDataset(parts, described)
