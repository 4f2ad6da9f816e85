"""Random inputs for every registered loss, built so a padded and an unpadded batch agree.

A case builds student and teacher inputs at some total length with a token mask whose real
lengths never exceed ``REAL``; ``trim`` cuts the token axes back to ``REAL`` so a test can
compare a loss on the padded batch with the same loss on the trimmed one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

BATCH, HEADS, REAL = 3, 2, 5


@dataclass
class Case:
    """How to build the inputs of one loss: ``build(generator, length, dtype) -> (S, T)`` and the
    token axes of each tensor (negative, so they hold for pairs and maps alike)."""

    loss: str
    build: Callable[[torch.Generator, int, torch.dtype], tuple[Any, Any]]
    token_axes: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def logits(g, length, dtype):
    return _randn(g, BATCH, length, 7, dtype=dtype, scale=3), _randn(g, BATCH, length, 7, dtype=dtype, scale=3)


def hidden(g, length, dtype):
    return _randn(g, BATCH, length, 6, dtype=dtype), _randn(g, BATCH, length, 6, dtype=dtype)


def hidden_pairs(g, length, dtype):
    return ([_randn(g, BATCH, length, 6, dtype=dtype) for _ in range(2)],
            [_randn(g, BATCH, length, 6, dtype=dtype) for _ in range(2)])


def hidden_pairs_of_two_widths(g, length, dtype):
    return ([_randn(g, BATCH, length, 6, dtype=dtype) for _ in range(2)],
            [_randn(g, BATCH, length, 10, dtype=dtype) for _ in range(2)])


def scores(g, length, dtype):
    return (_randn(g, BATCH, HEADS, length, length, dtype=dtype, scale=2),
            _randn(g, BATCH, HEADS, length, length, dtype=dtype, scale=2))


def probabilities(g, length, dtype):
    s, t = scores(g, length, dtype)
    return (s / 2).softmax(-1), (t / 2).softmax(-1)  # not so peaked that gradcheck's step distorts log p


def query_key_pairs(g, length, dtype):
    return ((_randn(g, BATCH, HEADS, length, 4, dtype=dtype), _randn(g, BATCH, HEADS, length, 4, dtype=dtype)),
            (_randn(g, BATCH, HEADS, length, 6, dtype=dtype), _randn(g, BATCH, HEADS, length, 6, dtype=dtype)))


def values(g, length, dtype):
    return _randn(g, BATCH, HEADS, length, 4, dtype=dtype), _randn(g, BATCH, HEADS, length, 6, dtype=dtype)


def states_of_two_widths(g, length, dtype):
    return _randn(g, BATCH, length, 8, dtype=dtype), _randn(g, BATCH, length, 12, dtype=dtype)


CASES = [
    *(Case(name, logits, (-2,)) for name in ("ce", "kl", "mse", "reverse_kl")),
    Case("jsd", logits, (-2,), {"beta": 0.3}),
    *(Case(name, hidden, (-2,)) for name in ("hidden_mse", "cos", "pkd")),
    Case("fsp", hidden_pairs, (-2,)),
    Case("nst", hidden_pairs_of_two_widths, (-2,)),
    *(Case(name, scores, (-2, -1)) for name in ("attention_mse", "attention_mse_sum", "attention_ce",
                                               "attention_ce_mean")),
    Case("attention_kl", probabilities, (-2, -1)),
    *(Case(name, query_key_pairs, (-2,)) for name in ("attention_mse", "attention_ce", "attention_kl")),
    Case("value_relation_kl", values, (-2,)),
    Case("relation_kl", states_of_two_widths, (-2,), {"num_relation_heads": 4}),
]
"""Every registered loss (``gram`` and ``mmd`` are aliases of ``fsp`` and ``nst``), the
attention losses both from maps and from (Q, K)."""


def case_id(case: Case) -> str:
    return f"{case.loss}[{case.build.__name__}]"


def make(case: Case, length: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, torch.Tensor]:
    """Student, teacher and a [B, length] mask whose real lengths are between 1 and REAL."""
    g = torch.Generator().manual_seed(seed)
    student, teacher = case.build(g, length, dtype)
    lengths = torch.tensor([REAL, 1, 3])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return student, teacher, mask


def trim(value: Any, case: Case, length: int) -> Any:
    """Cut every token axis of a case's input to ``length``."""
    if isinstance(value, (list, tuple)):
        return type(value)(trim(v, case, length) for v in value)
    for axis in case.token_axes:
        value = value.narrow(axis, 0, length)
    return value


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a loss input (one tensor, or the elements of a pair)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def cast(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``function`` to every tensor of a loss input, keeping pairs as pairs."""
    if isinstance(value, (list, tuple)):
        return type(value)(function(v) for v in value)
    return function(value)
