"""Hidden-state losses: ``hidden_mse`` and ``cos``.

Shapes: states [B, L, D] on both sides (project the student first if widths differ); ``mask``
[B, L] marks real tokens with 1.
"""

from __future__ import annotations

import torch

from kd_kernels import reference
from kd_losses.checks import rank, row_mask, same_shape

_STATES = "[B, L, D] hidden states"
_MASK = "[B, L] token mask"


def _check(name: str, state_S: torch.Tensor, state_T: torch.Tensor, mask: torch.Tensor | None) -> None:
    rank(name, "student", state_S, (3,), _STATES)
    same_shape(name, state_S, state_T, _STATES)
    row_mask(name, mask, state_S.shape[:-1], _MASK)


def hidden_mse(state_S: torch.Tensor, state_T: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the entries of real tokens (TextBrewer's ``hidden_mse``; the
    hidden-state loss of TinyBERT, Jiao et al. 2020, with a learnable projection)."""
    _check("hidden_mse", state_S, state_T, mask)
    return reference.hidden_mse(state_S, state_T, mask)


def cos(state_S: torch.Tensor, state_T: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over real tokens of ``1 - cos(h_S, h_T)`` (TextBrewer's ``cos``; DistilBERT's
    cosine embedding loss, Sanh et al. 2019)."""
    _check("cos", state_S, state_T, mask)
    return reference.cosine_distance(state_S, state_T, mask)
