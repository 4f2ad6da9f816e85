"""Logit losses: ``ce``, ``kl`` and ``mse``.

Shapes: logits [B, C] (sequence level) or [B, L, C] (token level) on both sides; ``mask`` over
rows ([B] or [B, L], 1 = the row counts). ``temperature`` is a float or a per-row tensor.
"""

from __future__ import annotations

import torch

from kd_kernels import reference
from kd_losses.checks import rank, row_mask, same_shape

_LOGITS = "[B, C] or [B, L, C] logits"
_MASK = "[B] or [B, L] row mask"


def _check(name: str, logits_S: torch.Tensor, logits_T: torch.Tensor, mask: torch.Tensor | None) -> None:
    rank(name, "student", logits_S, (2, 3), _LOGITS)
    same_shape(name, logits_S, logits_T, _LOGITS)
    row_mask(name, mask, logits_S.shape[:-1], _MASK)


def ce(logits_S: torch.Tensor, logits_T: torch.Tensor, mask: torch.Tensor | None = None,
       temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """TextBrewer's soft cross-entropy: ``mean_rows -sum_c p_T log p_S``, ``p = softmax(z / T)``,
    no T^2 factor (TextBrewer, Yang et al. 2020)."""
    _check("ce", logits_S, logits_T, mask)
    return reference.softmax_kl(logits_S, logits_T, temperature, mask, mode="ce")


def kl(logits_S: torch.Tensor, logits_T: torch.Tensor, mask: torch.Tensor | None = None,
       temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Hinton et al. 2015: ``T^2 * mean_rows KL(p_T || p_S)``; the T^2 keeps gradient magnitudes
    comparable across temperatures."""
    _check("kl", logits_S, logits_T, mask)
    return reference.softmax_kl(logits_S, logits_T, temperature, mask, mode="kl")


def mse(logits_S: torch.Tensor, logits_T: torch.Tensor, mask: torch.Tensor | None = None,
        temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """TextBrewer's ``mse``: mean squared error of ``z / T`` over the entries of real rows
    (Ba & Caruana 2014 match logits directly)."""
    _check("mse", logits_S, logits_T, mask)
    return reference.logit_mse(logits_S, logits_T, temperature, mask)
