"""Normalising loss terms over a whole optimizer step, not over each micro-batch.

A loss averages over *items*: the real rows of its mask (tokens, or examples for one row per
example), the pairs of real tokens of an attention map, or the sequences. With gradient
accumulation and several processes, one optimizer step spans many micro-batches that hold
different numbers of items (a batch of short sentences has fewer tokens). The mean of per-batch
means then weighs a token of a short batch more than one of a long batch, so the step depends on
how the data was split: 2 processes x batch 8 do not end where 1 x 16 ends. kd weighs each
micro-batch's term by its share of the step's items instead (what transformers does with
``num_items_in_batch`` for the model's own loss), for every term:

    step loss of a term = sum over micro-batches i (n_i / N) * mean_i

where ``n_i`` counts the items of micro-batch i and ``N`` those of every micro-batch of the step on
every process. The engine counts them from the batches before the step's first backward
(:meth:`~kd_core.features.Adaptor.masks`), so the result is the mean over all the step's items
however the step is split.

A loss says what it averages over with :func:`averages_over` (``rows`` when it says nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

ITEMS = ("rows", "pairs", "sequences")
"""What a loss can average over: ``rows`` (the real entries of its mask: tokens for a [B, L] mask,
examples for a [B] mask), ``pairs`` (the (query, key) pairs of real tokens of [B, H, L, L] maps) or
``sequences`` (the examples with at least one real token)."""
ROWS = "rows"
BATCH_ROWS = ""
"""The count key of a micro-batch's rows (examples): the weight of every term whose items are not
known before the forward pass (an adaptor without :meth:`~kd_core.features.Adaptor.masks`)."""

Loss = TypeVar("Loss", bound=Callable[..., Any])


def averages_over(items: str) -> Callable[[Loss], Loss]:
    """Mark a loss function as a mean over ``items`` (one of :data:`ITEMS`)."""
    if items not in ITEMS:
        raise ValueError(f"items must be one of {', '.join(ITEMS)}, got {items!r}")

    def mark(loss: Loss) -> Loss:
        loss.kd_items = items  # type: ignore[attr-defined]
        return loss

    return mark


def items_of(loss: Any) -> str:
    """What ``loss`` averages over (:func:`averages_over`; ``rows`` when it does not say)."""
    return getattr(loss, "kd_items", ROWS)


def count_items(items: str, mask: torch.Tensor | None, rows: int) -> float:
    """The items a loss averaging over ``items`` counts under ``mask`` (1 = real); a loss without a
    mask averages over every row, so ``rows`` (the batch's examples) weighs it."""
    if mask is None:
        return float(rows)
    real = mask.bool()
    if items == "pairs":
        return float((real.reshape(real.shape[0], -1).sum(-1) ** 2).sum())
    if items == "sequences":
        return float(real.reshape(real.shape[0], -1).any(-1).sum())
    return float(real.sum())


def step_weights(counts: Sequence[Mapping[str, float]], total: Callable[[dict[str, float]], dict[str, float]],
                 world_size: int) -> list[dict[str, float]]:
    """Each micro-batch's factor per counted term: ``n_i * world_size / N`` (the world size undoes
    the average of gradients over processes), with ``N`` from ``total`` (the sum of this process's
    counts over every process). Each micro-batch's counts hold :data:`BATCH_ROWS`."""
    local: dict[str, float] = {}
    for batch in counts:
        for key, value in batch.items():
            local[key] = local.get(key, 0.0) + value
    totals = total(local)
    return [{key: value * world_size / totals[key] if totals[key] else 0.0 for key, value in batch.items()}
            for batch in counts]


def weight_of(weights: Mapping[str, float], term: str) -> float:
    """The factor of ``term`` in one micro-batch (its items' share, else its rows' share)."""
    return weights[term] if term in weights else weights[BATCH_ROWS]
