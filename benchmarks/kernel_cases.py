"""The kernel benchmark cases, shared by the timing suite and the memory probe: the issue's
shapes, and the three implementations compared (the fused op, the eager reference the tests
check it against, and torch.compile of that same reference)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import kd_kernels
from kd_kernels import reference

SOFTMAX_SHAPE = (4096, 30522)  # rows x BERT vocabulary
SOFTMAX_TEMPERATURE = 4.0
RELATION_SHAPE = (8, 12, 512, 32)  # value relation: B, H, L, d on both sides


def softmax_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(SOFTMAX_SHAPE, generator=g) * 3).requires_grad_()
    return student, torch.randn(SOFTMAX_SHAPE, generator=g) * 3


def relation_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v_s = torch.randn(RELATION_SHAPE, generator=g).requires_grad_()
    v_t = torch.randn(RELATION_SHAPE, generator=g)
    return v_s, v_t, torch.ones(RELATION_SHAPE[0], RELATION_SHAPE[2])


def implementations(name: str) -> dict[str, Callable]:
    """``fused`` / ``eager`` / ``compiled`` versions of ``softmax_kl`` or ``relation_loss``."""
    fused, eager = getattr(kd_kernels, name), getattr(reference, name)
    return {"fused": fused, "eager": eager, "compiled": torch.compile(eager)}


def softmax_step(function: Callable, student: torch.Tensor, teacher: torch.Tensor) -> None:
    student.grad = None
    function(student, teacher, SOFTMAX_TEMPERATURE).backward()


def relation_step(function: Callable, v_s: torch.Tensor, v_t: torch.Tensor, mask: torch.Tensor) -> None:
    v_s.grad = None
    function(v_s, v_s, v_t, v_t, mask).backward()
