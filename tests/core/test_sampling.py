"""Length-grouped batches: every example once per epoch, batches of similar length, seeded."""

from __future__ import annotations

import itertools

import pytest
import torch

from kd_core import ConfigError
from kd_core.sampling import LengthGroupedBatchSampler, example_length


def _lengths(n: int = 203, seed: int = 0) -> list[int]:
    # skewed like SST-2: mostly short, a long tail
    g = torch.Generator().manual_seed(seed)
    return (1 + (torch.rand(n, generator=g) ** 3 * 60).long()).tolist()


def _epoch(sampler: LengthGroupedBatchSampler) -> list[list[int]]:
    return list(iter(sampler))


def test_every_index_once_and_all_but_one_batch_full() -> None:
    lengths = _lengths()
    sampler = LengthGroupedBatchSampler(lengths, 8, torch.Generator().manual_seed(0), group_batches=5)
    batches = _epoch(sampler)
    assert len(batches) == len(sampler) == 26
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert sum(len(b) != 8 for b in batches) == 1 and min(map(len, batches)) == 203 % 8


def test_one_group_gives_the_sorted_order_cut_into_batches() -> None:
    # with a single group the batches are consecutive slices of the examples sorted by length,
    # so no two batches' length ranges overlap
    lengths = _lengths(96)
    batches = _epoch(LengthGroupedBatchSampler(lengths, 8, torch.Generator().manual_seed(1), group_batches=12))
    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert high <= low


def test_grouping_pads_far_less_than_random_batches() -> None:
    lengths = _lengths(3200)
    grouped = _epoch(LengthGroupedBatchSampler(lengths, 32, torch.Generator().manual_seed(0)))
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).split(32)

    def padded(batches) -> int:
        return sum(len(b) * max(lengths[int(i)] for i in b) for b in batches)

    assert padded(grouped) < 0.5 * padded(shuffled)
    assert padded(grouped) >= sum(lengths)


def test_seeded_epochs_differ_and_a_saved_generator_state_replays_one() -> None:
    lengths = _lengths()
    first = LengthGroupedBatchSampler(lengths, 8, torch.Generator().manual_seed(3))
    second = LengthGroupedBatchSampler(lengths, 8, torch.Generator().manual_seed(3))
    assert _epoch(first) == _epoch(second)
    state = first.generator.get_state()
    epoch_two = _epoch(first)
    assert epoch_two != _epoch(LengthGroupedBatchSampler(lengths, 8, torch.Generator().manual_seed(3)))
    first.generator.set_state(state)
    assert _epoch(first) == epoch_two


def test_example_length_needs_input_ids() -> None:
    assert example_length({"input_ids": [1, 2, 3]}, 0) == 3
    with pytest.raises(ConfigError, match="example 4 has no input_ids"):
        example_length((1, 2), 4)
