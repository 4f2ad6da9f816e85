"""Trainable projections of student features into the teacher's space (TextBrewer's ``proj``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def linear(dim_in: int, dim_out: int) -> nn.Module:
    """``W x + b``."""
    return nn.Linear(dim_in, dim_out)


def relu(dim_in: int, dim_out: int) -> nn.Module:
    """``relu(W x + b)``."""
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU())


def tanh(dim_in: int, dim_out: int) -> nn.Module:
    """``tanh(W x + b)``."""
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.Tanh())


PROJECTIONS: dict[str, Callable[[int, int], nn.Module]] = {"linear": linear, "relu": relu, "tanh": tanh}
