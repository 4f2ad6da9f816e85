"""Batches of examples of similar length, so that padding costs little.

A batch is padded to its longest example. Drawn at random from SST-2, a batch of 32 is padded to
about three times its mean length, and every padded position costs as much as a real one.
:class:`LengthGroupedBatchSampler` keeps training stochastic while cutting that waste, as
Hugging Face's ``group_by_length`` does: each epoch it shuffles the examples, cuts the order into
groups of ``batch_size * group_batches`` examples, sorts each group by length, cuts the groups
into batches and shuffles the batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from kd_core.errors import ConfigError

GROUP_BATCHES = 50
"""Batches per sorted group (Hugging Face's ``LengthGroupedSampler`` uses 50 too)."""


def example_length(example: Any, index: int) -> int:
    """The number of tokens of a tokenized example (its ``input_ids``)."""
    if not isinstance(example, Mapping) or "input_ids" not in example:
        raise ConfigError(f"training.group_by_length sorts examples by their number of tokens, but example {index} "
                          f"has no input_ids ({type(example).__name__}); set group_by_length: false")
    return len(example["input_ids"])


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Seeded batches of indices whose examples have similar ``lengths`` (see the module docstring).

    Every index appears exactly once per epoch; all batches have ``batch_size`` indices except at
    most one. ``generator`` draws each epoch's order, so saving and restoring its state replays an
    epoch (kd's engine does so for exact resume).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                 group_batches: int = GROUP_BATCHES) -> None:
        if batch_size < 1 or group_batches < 1:
            raise ValueError(f"batch_size and group_batches must be positive, got {batch_size} and {group_batches}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = batch_size
        self.generator = generator
        self.group_size = batch_size * group_batches

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        batches: list[torch.Tensor] = []
        for group in order.split(self.group_size):
            # stable sort: equal lengths keep their shuffled order
            ranked = group[torch.sort(self.lengths[group], descending=True, stable=True).indices]
            batches.extend(ranked.split(self.batch_size))
        for position in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[position].tolist()
