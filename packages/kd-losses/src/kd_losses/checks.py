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


def _describe(value: object) -> str:
    return f"{tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def rank(loss: str, side: str, tensor: torch.Tensor, ranks: tuple[int, ...], expected: str) -> None:
    """``tensor`` must have one of ``ranks`` dimensions."""
    if not isinstance(tensor, torch.Tensor):
        raise ShapeError(f"{loss}: the {side} input is a {type(tensor).__name__}; expected {expected}")
    if tensor.dim() not in ranks:
        raise ShapeError(f"{loss}: the {side} tensor has shape {tuple(tensor.shape)}; expected {expected}")


def ranks(loss: str, student: torch.Tensor, teacher: torch.Tensor, allowed: tuple[int, ...], expected: str) -> None:
    """Both inputs must be tensors with one of ``allowed`` dimensions; the error names both shapes."""
    if not all(isinstance(x, torch.Tensor) and x.dim() in allowed for x in (student, teacher)):
        raise ShapeError(f"{loss}: got student {_describe(student)} and teacher {_describe(teacher)}; "
                         f"both must be {expected}")


def _tensor_mask(loss: str, mask: object) -> None:
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"{loss}: mask must be a tensor or None, got {type(mask).__name__}; kd's losses take "
                         "(student, teacher, mask=None, **params), so pass options such as temperature by keyword")


def row_mask(loss: str, mask: torch.Tensor | None, rows: torch.Size, expected: str) -> None:
    """A mask must cover the rows (all dimensions but the last) of the input."""
    if mask is None:
        return
    _tensor_mask(loss, mask)
    if mask.shape != rows:
        raise ShapeError(f"{loss}: mask {tuple(mask.shape)} does not match the inputs' rows "
                         f"{tuple(rows)}; expected {expected}")


def token_mask(loss: str, mask: torch.Tensor | None, batch: int, length: int) -> None:
    """A token mask must be [B, L] for inputs of batch ``batch`` and length ``length``."""
    if mask is None:
        return
    _tensor_mask(loss, mask)
    if tuple(mask.shape) != (batch, length):
        raise ShapeError(f"{loss}: mask {tuple(mask.shape)} does not match the inputs' "
                         f"[B, L] = {(batch, length)}; expected a [B, L] token mask")


def temperature_rows(loss: str, temperature: object, rows: torch.Size) -> None:
    """A temperature is a number, a 0-dim tensor, or one value per row of the logits."""
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0 and temperature.shape != rows:
        raise ShapeError(f"{loss}: temperature {tuple(temperature.shape)} does not match the logits' rows "
                         f"{tuple(rows)}; give a number or one temperature per row")


def same_kind(loss: str, student: object, teacher: object, expected: str) -> None:
    """Both sides are maps, or both are (Q, K) pairs."""
    if is_pair(student) != is_pair(teacher):
        kinds = ["a (Q, K) pair" if is_pair(x) else _describe(x) for x in (student, teacher)]
        raise ShapeError(f"{loss}: got student {kinds[0]} and teacher {kinds[1]}; both sides must be {expected}")


def pair(loss: str, side: str, value: object, expected: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``value`` must be a pair of tensors (two layers, or Q and K)."""
    if not isinstance(value, Sequence) or len(value) != 2 or not all(isinstance(v, torch.Tensor) for v in value):
        got = type(value).__name__ if not isinstance(value, torch.Tensor) else f"a tensor {tuple(value.shape)}"
        raise ShapeError(f"{loss}: the {side} input must be a pair {expected}, got {got}")
    return value[0], value[1]


def is_pair(value: object) -> bool:
    """Whether a loss input is a pair of tensors rather than one tensor."""
    return isinstance(value, Sequence) and not isinstance(value, torch.Tensor)
