"""Shape checks shared by the losses: wrong input fails with a message naming both shapes."""

from __future__ import annotations

import torch

from kd_core.errors import ShapeError


def same_shape(loss: str, student: torch.Tensor, teacher: torch.Tensor, expected: str) -> None:
    """Student and teacher must have the same shape (``expected`` describes it, e.g. [B, L, D])."""
    if student.shape != teacher.shape:
        raise ShapeError(
            f"{loss}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ; "
            f"both must be {expected} (add a projection if the widths differ)")


def rank(loss: str, side: str, tensor: torch.Tensor, ranks: tuple[int, ...], expected: str) -> None:
    """``tensor`` must have one of ``ranks`` dimensions."""
    if tensor.dim() not in ranks:
        raise ShapeError(f"{loss}: the {side} tensor has shape {tuple(tensor.shape)}; expected {expected}")


def row_mask(loss: str, mask: torch.Tensor | None, rows: torch.Size, expected: str) -> None:
    """A mask must cover the rows (all dimensions but the last) of the input."""
    if mask is not None and mask.shape != rows:
        raise ShapeError(f"{loss}: mask {tuple(mask.shape)} does not match the inputs' rows "
                         f"{tuple(rows)}; expected {expected}")
