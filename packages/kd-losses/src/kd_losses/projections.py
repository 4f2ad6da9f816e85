"""Trainable projections of student features into the teacher's space (TextBrewer's ``proj``).

Weights start from N(0, 0.02) with zero bias, as TextBrewer initialises its projections.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

INIT_STD = 0.02


def _linear(dim_in: int, dim_out: int) -> nn.Linear:
    layer = nn.Linear(dim_in, dim_out)
    nn.init.normal_(layer.weight, std=INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def linear(dim_in: int, dim_out: int) -> nn.Module:
    """``W x + b``."""
    return _linear(dim_in, dim_out)


def relu(dim_in: int, dim_out: int) -> nn.Module:
    """``relu(W x + b)``."""
    return nn.Sequential(_linear(dim_in, dim_out), nn.ReLU())


def tanh(dim_in: int, dim_out: int) -> nn.Module:
    """``tanh(W x + b)``."""
    return nn.Sequential(_linear(dim_in, dim_out), nn.Tanh())


PROJECTIONS: dict[str, Callable[[int, int], nn.Module]] = {"linear": linear, "relu": relu, "tanh": tanh}
