"""Shape checks shared by the losses: wrong input fails with a message naming both shapes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kd_core.errors import ShapeError


def same_shape(loss: str, student: torch.Tensor, teacher: torch.Tensor, expected: str,
               names: tuple[str, str] = ("student", "teacher")) -> None:
    """Both inputs must have the same shape (``expected`` describes it, e.g. [B, L, D])."""
    if student.shape != teacher.shape:
        hint = " (add a projection if the widths differ)" if names == ("student", "teacher") else ""
        raise ShapeError(
            f"{loss}: {names[0]} {tuple(student.shape)} and {names[1]} {tuple(teacher.shape)} differ; "
            f"both must be {expected}{hint}")


def same_shape_but_width(loss: str, student: torch.Tensor, teacher: torch.Tensor, expected: str) -> None:
    """Student and teacher must agree on every dimension but the last (the widths may differ)."""
    if student.dim() != teacher.dim() or student.shape[:-1] != teacher.shape[:-1]:
        raise ShapeError(
            f"{loss}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must agree on "
            f"every dimension but the last; both must be {expected}")


def rank(loss: str, side: str, tensor: torch.Tensor, ranks: tuple[int, ...], expected: str) -> None:
    """``tensor`` must have one of ``ranks`` dimensions."""
    if not isinstance(tensor, torch.Tensor):
        raise ShapeError(f"{loss}: the {side} input is a {type(tensor).__name__}; expected {expected}")
    if tensor.dim() not in ranks:
        raise ShapeError(f"{loss}: the {side} tensor has shape {tuple(tensor.shape)}; expected {expected}")


def row_mask(loss: str, mask: torch.Tensor | None, rows: torch.Size, expected: str) -> None:
    """A mask must cover the rows (all dimensions but the last) of the input."""
    if mask is not None and mask.shape != rows:
        raise ShapeError(f"{loss}: mask {tuple(mask.shape)} does not match the inputs' rows "
                         f"{tuple(rows)}; expected {expected}")


def token_mask(loss: str, mask: torch.Tensor | None, batch: int, length: int) -> None:
    """A token mask must be [B, L] for inputs of batch ``batch`` and length ``length``."""
    if mask is not None and tuple(mask.shape) != (batch, length):
        raise ShapeError(f"{loss}: mask {tuple(mask.shape)} does not match the inputs' "
                         f"[B, L] = {(batch, length)}; expected a [B, L] token mask")


def pair(loss: str, side: str, value: object, expected: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``value`` must be a pair of tensors (two layers, or Q and K)."""
    if not isinstance(value, Sequence) or len(value) != 2 or not all(isinstance(v, torch.Tensor) for v in value):
        got = type(value).__name__ if not isinstance(value, torch.Tensor) else f"a tensor {tuple(value.shape)}"
        raise ShapeError(f"{loss}: the {side} input must be a pair {expected}, got {got}")
    return value[0], value[1]


def is_pair(value: object) -> bool:
    """Whether a loss input is a pair of tensors rather than one tensor."""
    return isinstance(value, Sequence) and not isinstance(value, torch.Tensor)
