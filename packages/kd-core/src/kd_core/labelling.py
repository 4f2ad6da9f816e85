"""Labelling a transfer set with a teacher: every row written back with the teacher's logits.

:func:`label_file` runs the teacher over a file in order, through a
:class:`~kd_core.teacher_cache.TeacherCache` (in memory, or in ``cache_dir`` so that a later
labelling, or ``kd distill`` with the same ``teacher_cache_dir``, reuses what was computed), and
writes each input row with a ``teacher_logits`` field: the logits as a list (a list per real
token for token-level tasks), or with ``top_k`` the parts of
:func:`~kd_core.teacher_cache.compress_logits` as lists. A task whose examples are not one per
row (question answering reads a question as the windows of its context) gives a dataset with
:class:`RowGroups`; each of its rows is written with the list of its examples' logits. The
output resumes like augmentation does (:class:`~kd_core.resumable.ResumableJsonl`).

A recipe reads such a file with ``teacher_logits: teacher_logits`` in its data file; batches then
carry the logits under :data:`~kd_core.features.TEACHER_LOGITS` (:func:`collate_teacher_logits`)
and distillers use them instead of running the teacher for its logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from kd_core.data import file_fingerprint, read_records, resolve_path
from kd_core.features import TEACHER_LOGITS, FeatureNeeds
from kd_core.inference import RunSettings, run_model
from kd_core.resumable import ResumableJsonl
from kd_core.teacher_cache import TeacherCache, logits_from_parts, stack_logits

if TYPE_CHECKING:
    from kd_core.schema import DataFile, ModelSpec
    from kd_core.tasks import Task


@runtime_checkable
class RowGroups(Protocol):
    """A dataset whose examples group into the rows of its file, several examples to a row.

    ``example_rows[i]`` is the row of example ``i`` (non-decreasing: a row's examples are
    consecutive, and every row has at least one); :meth:`label_rows` gives the rows to write, in
    the field names the dataset was read with, so that the labelled file reads back the same way.
    """

    example_rows: Sequence[int]

    def label_rows(self) -> Sequence[dict[str, Any]]:
        """Every row of the dataset as a JSON record (a list, or a sequence that makes each when read)."""


def label_file(task: Task, teacher: ModelSpec, data: DataFile, output: str | Path, *, max_length: int = 128,
               batch_size: int = 64, top_k: int | None = None, cache_dir: str | Path | None = None,
               device: str = "cpu", overwrite: bool = False, progress: bool = True,
               base_dir: Path | None = None) -> int:
    """Write every row of ``data`` (its ``path``, ``text`` column(s), ``limit``, ``format``, and
    its ``label`` when given: it is kept, never needed) to ``output`` with the ``teacher``'s
    logits; returns the number of rows written."""
    path = resolve_path(data.path, base_dir, "label input")
    model = task.load_teacher(teacher)
    adaptor = task.adaptor(model)
    cache = TeacherCache(model, cache_dir, top_k, adaptor.logits_over_tokens)
    dataset = task.read(data.model_copy(update={"path": str(path), "teacher_logits": None}), teacher, max_length,
                        None, "label input")
    grouped = isinstance(dataset, RowGroups)
    if grouped:
        rows, example_rows = dataset.label_rows(), list(dataset.example_rows)
    else:
        rows = read_records(path, data.limit, data.format, "label input", data.columns, data.skip)
        example_rows = list(range(len(rows)))
    settings = {"input": file_fingerprint(path), "limit": data.limit, "skip": data.skip, "format": data.format,
                "header": data.columns, "columns": data.text_columns, "label": data.label, "teacher": cache.identity,
                "max_length": max_length, "top_k": top_k, "examples": len(example_rows)}
    needs = FeatureNeeds({"logits": set()})
    with ResumableJsonl(output, settings, overwrite) as stream:
        if stream.complete:
            return stream.written
        first_example = example_rows.index(stream.written) if stream.written < len(rows) else len(example_rows)
        bar = tqdm(total=len(rows), initial=stream.written, desc="label", unit="row", disable=not progress)
        pending: list[Any] = []  # the logits of the next row's examples read so far
        index = first_example
        for _, stored in run_model(model, adaptor, Subset(dataset, range(first_example, len(example_rows))),
                                   task.collator(teacher), needs, RunSettings(batch_size, device),
                                   forward=lambda batch: cache.stored_logits(batch, lambda: adaptor.run(model, batch,
                                                                                                        needs))):
            unit = []  # only whole rows: a resumed run starts at a row's first example
            for parts in stored:
                pending.append(logits_to_json(parts))
                row = example_rows[index]
                index += 1
                if index == len(example_rows) or example_rows[index] != row:
                    unit.append({**rows[row], TEACHER_LOGITS: pending if grouped else pending[0]})
                    pending = []
            stream.write_unit(unit)
            bar.update(len(unit))
        bar.close()
        stream.finish()
        return stream.written


def logits_to_json(parts: dict[str, torch.Tensor]) -> Any:
    """Stored logits as JSON values: a (nested) list, or a dict of the top-k parts."""
    if "logits" in parts:
        return parts["logits"].tolist()
    return {name: value.tolist() for name, value in parts.items()}


def logits_from_json(value: Any) -> torch.Tensor:
    """The logits of one row from what :func:`logits_to_json` wrote (top-k parts expanded)."""
    if isinstance(value, dict):
        return logits_from_parts({name: torch.tensor(part, dtype=torch.long if name in ("topk_indices", "vocab")
                                                     else torch.float32) for name, part in value.items()})
    return torch.tensor(value, dtype=torch.float32)


def collate_teacher_logits(values: list[Any], attention_mask: torch.Tensor | None,
                           over_tokens: bool = False) -> torch.Tensor:
    """A batch of stored teacher logits: [B, C], or [B, L, C] with zeros at padded tokens, or
    ``over_tokens`` [B, R, L] with :data:`~kd_core.features.MASKED_LOGIT` at padded tokens."""
    reals = [row.bool() for row in attention_mask] if attention_mask is not None else [None] * len(values)
    length = attention_mask.shape[1] if attention_mask is not None else None
    return stack_logits([logits_from_json(v) for v in values], reals, length, over_tokens)
