"""Logit losses: ``ce``, ``kl``, ``mse``, ``reverse_kl`` and ``jsd``.

Shapes: logits [B, C] (sequence level) or [B, L, C] (token level) on both sides; ``mask`` over
rows ([B] or [B, L], 1 = the row counts). ``temperature`` is a float or a per-row tensor ([B] or
[B, L], as the dynamic-temperature schedulers return).

Memory over large vocabularies: ``ce`` and ``kl`` run the fused ``softmax_kl`` (on CPU it
writes the student's gradient in its forward and holds nothing else of size [N, V]; where no
fused kernel loads, the eager reference runs instead);
``reverse_kl`` and ``jsd`` are evaluated a chunk of rows at a time (:func:`kd_kernels.chunked`),
so that none of them holds another [N, V] tensor beyond the gradient autograd returns.
Given :class:`~kd_core.features.LinearLogits` on both sides (``distillation.fused_linear``),
``ce``, ``kl``, ``reverse_kl`` and ``jsd`` make each chunk's logits from the hidden states and
heads themselves (:func:`kd_kernels.fused_linear`): no [N, V] tensor at all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

import kd_kernels
from kd_core.errors import ShapeError
from kd_core.features import LinearLogits, takes_linear_logits
from kd_core.normalization import averages_over
from kd_kernels import reference
from kd_losses.checks import ranks, row_mask, same_shape, temperature_rows

_LOGITS = "[B, C] or [B, L, C] logits"
_MASK = "[B] or [B, L] row mask"
Temperature = float | torch.Tensor
Logits = torch.Tensor | LinearLogits


def _check(name: str, logits_S: torch.Tensor, logits_T: torch.Tensor, mask: torch.Tensor | None,
           temperature: Temperature) -> None:
    ranks(name, logits_S, logits_T, (2, 3), _LOGITS)
    same_shape(name, logits_S, logits_T, _LOGITS)
    row_mask(name, mask, logits_S.shape[:-1], _MASK)
    temperature_rows(name, temperature, logits_S.shape[:-1])


def _fused_linear(name: str, loss: Callable[..., torch.Tensor], logits_S: LinearLogits | torch.Tensor,
                  logits_T: LinearLogits | torch.Tensor, mask: torch.Tensor | None, temperature: Temperature,
                  **options: object) -> torch.Tensor:
    """``loss`` (a kd_kernels reference) of :class:`LinearLogits` on both sides, without their logits."""
    if not (isinstance(logits_S, LinearLogits) and isinstance(logits_T, LinearLogits)):
        raise ShapeError(f"{name}: one side is LinearLogits (hidden states and head) and the other whole logits; "
                         "give both sides in the same form")
    if logits_S.dim() not in (2, 3) or logits_S.shape != logits_T.shape:
        raise ShapeError(f"{name}: student logits {tuple(logits_S.shape)} and teacher {tuple(logits_T.shape)} "
                         f"(hidden states and heads) must be the same {_LOGITS}")
    row_mask(name, mask, logits_S.shape[:-1], _MASK)
    temperature_rows(name, temperature, logits_S.shape[:-1])
    return kd_kernels.fused_linear(loss, logits_S.hidden, logits_S.weight, logits_T.hidden, logits_T.weight,
                                   temperature, mask, bias_S=logits_S.bias, bias_T=logits_T.bias, **options)


def _is_linear(*sides: object) -> bool:
    return any(isinstance(side, LinearLogits) for side in sides)


@averages_over("rows")
@takes_linear_logits
def ce(logits_S: Logits, logits_T: Logits, mask: torch.Tensor | None = None,
       temperature: Temperature = 1.0) -> torch.Tensor:
    """Soft cross-entropy ``mean_rows -sum_c p_T log p_S`` with ``p = softmax(z / T)`` and no T^2
    factor (TextBrewer's ``ce``, Yang et al. 2020). Logits [B, C] or [B, L, C], mask [B] or [B, L],
    temperature a number or per row."""
    if _is_linear(logits_S, logits_T):
        return _fused_linear("ce", functools.partial(reference.softmax_kl, mode="ce"), logits_S, logits_T, mask,
                             temperature)
    _check("ce", logits_S, logits_T, mask, temperature)
    return kd_kernels.softmax_kl(logits_S, logits_T, temperature, mask, mode="ce")


@averages_over("rows")
@takes_linear_logits
def kl(logits_S: Logits, logits_T: Logits, mask: torch.Tensor | None = None,
       temperature: Temperature = 1.0) -> torch.Tensor:
    """``T^2 * mean_rows KL(p_T || p_S)`` (Hinton et al. 2015); the T^2 keeps gradient
    magnitudes comparable across temperatures. Equals ``T^2 * (ce - H(p_T))``, so it reaches 0 when
    the student matches the teacher. Logits [B, C] or [B, L, C], mask [B] or [B, L]."""
    if _is_linear(logits_S, logits_T):
        return _fused_linear("kl", functools.partial(reference.softmax_kl, mode="kl"), logits_S, logits_T, mask,
                             temperature)
    _check("kl", logits_S, logits_T, mask, temperature)
    return kd_kernels.softmax_kl(logits_S, logits_T, temperature, mask, mode="kl")


@averages_over("rows")
def mse(logits_S: torch.Tensor, logits_T: torch.Tensor, mask: torch.Tensor | None = None,
        temperature: Temperature = 1.0) -> torch.Tensor:
    """Mean squared error of ``z / T`` over the entries of real rows (TextBrewer's ``mse``; Ba &
    Caruana 2014 regress logits directly). Logits [B, C] or [B, L, C], mask [B] or [B, L]."""
    _check("mse", logits_S, logits_T, mask, temperature)
    return reference.logit_mse(logits_S, logits_T, temperature, mask)


@averages_over("rows")
@takes_linear_logits
def reverse_kl(logits_S: Logits, logits_T: Logits, mask: torch.Tensor | None = None,
               temperature: Temperature = 1.0) -> torch.Tensor:
    """``T^2 * mean_rows KL(p_S || p_T)``, mode-seeking (MiniLLM, Gu et al. 2024): the student
    puts its mass where the teacher is confident rather than covering the teacher's tail.
    Logits [B, C] or [B, L, C], mask [B] or [B, L]."""
    if _is_linear(logits_S, logits_T):
        return _fused_linear("reverse_kl", reference.reverse_kl, logits_S, logits_T, mask, temperature)
    _check("reverse_kl", logits_S, logits_T, mask, temperature)
    return kd_kernels.chunked(reference.reverse_kl, logits_S, logits_T, temperature, mask)


@averages_over("rows")
@takes_linear_logits
def jsd(logits_S: Logits, logits_T: Logits, mask: torch.Tensor | None = None,
        temperature: Temperature = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024):
    ``T^2 * mean_rows [beta KL(p_T || m) + (1 - beta) KL(p_S || m)]``, ``m = beta p_T +
    (1 - beta) p_S``, ``0 < beta < 1`` (set it with ``kd_loss_params: {beta: ...}``). Logits
    [B, C] or [B, L, C], mask [B] or [B, L]."""
    if _is_linear(logits_S, logits_T):
        return _fused_linear("jsd", reference.jsd, logits_S, logits_T, mask, temperature, beta=beta)
    _check("jsd", logits_S, logits_T, mask, temperature)
    return kd_kernels.chunked(reference.jsd, logits_S, logits_T, temperature, mask, beta=beta)


LOGIT_LOSSES = {"ce": ce, "kl": kl, "mse": mse, "reverse_kl": reverse_kl, "jsd": jsd}
