"""Hidden-state losses: ``hidden_mse``, ``cos``, ``pkd``, ``fsp`` (alias ``gram``) and ``nst``
(alias ``mmd``).

Shapes: states [B, L, D] with a [B, L] mask, or pooled [B, D] vectors with a [B] mask (``hidden_mse``,
``cos``, ``pkd``); ``fsp`` and ``nst`` take a pair of layers [X0, X1] on each side, as in TextBrewer.
Masks mark real tokens with 1. Project the student first when a loss needs equal widths
(``hidden_mse``, ``cos``, ``pkd``, ``fsp``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import kd_kernels
from kd_core.normalization import averages_over
from kd_kernels import reference
from kd_losses.checks import pair, rank, ranks, row_mask, same_shape, same_shape_but_width, token_mask

_STATES = "[B, L, D] hidden states"
_STATES_OR_VECTORS = "[B, L, D] hidden states or [B, D] vectors"
_MASK = "[B, L] token mask (or [B] for [B, D] vectors)"
_PAIR = "[X0, X1] of [B, L, D] hidden states (a layer pair such as layer_T: [0, 6])"
States = torch.Tensor
StatePair = Sequence[torch.Tensor]


def _check(name: str, state_S: torch.Tensor, state_T: torch.Tensor, mask: torch.Tensor | None) -> None:
    ranks(name, state_S, state_T, (2, 3), _STATES_OR_VECTORS)
    same_shape(name, state_S, state_T, _STATES_OR_VECTORS)
    row_mask(name, mask, state_S.shape[:-1], _MASK)


@averages_over("rows")
def hidden_mse(state_S: States, state_T: States, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the entries of real tokens, ``mean_{real t} mean_d (h_S - h_T)^2``
    (TextBrewer's ``hidden_mse``; TinyBERT's hidden-state and embedding losses, Jiao et al. 2020,
    with a learnable ``linear`` projection of the student). States [B, L, D] with a [B, L] mask,
    or [B, D] with a [B] mask."""
    _check("hidden_mse", state_S, state_T, mask)
    return reference.hidden_mse(state_S, state_T, mask)


@averages_over("rows")
def cos(state_S: States, state_T: States, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over real tokens of ``1 - cos(h_S, h_T)`` (TextBrewer's ``cos``; DistilBERT's
    cosine embedding loss on the last hidden states, Sanh et al. 2019). States [B, L, D] with a
    [B, L] mask, or [B, D] with a [B] mask."""
    _check("cos", state_S, state_T, mask)
    return reference.cosine_distance(state_S, state_T, mask)


@averages_over("sequences")
def pkd(state_S: States, state_T: States, mask: torch.Tensor | None = None) -> torch.Tensor:
    """BERT-PKD (Sun et al. 2019): ``mean_b |c_S / |c_S| - c_T / |c_T| |^2`` of the first token's
    state ``c`` ([CLS]) of [B, L, D] inputs, or of [B, D] vectors directly. Examples whose first
    token is padding do not count: all-padding examples, and every example of a left-padded batch
    (pool the [CLS] states yourself and pass [B, D] vectors for those)."""
    ranks("pkd", state_S, state_T, (2, 3), _STATES_OR_VECTORS)
    same_shape("pkd", state_S, state_T, _STATES_OR_VECTORS)
    if state_S.dim() == 3:
        row_mask("pkd", mask, state_S.shape[:-1], _MASK)
        state_S, state_T = state_S[:, 0], state_T[:, 0]
        mask = None if mask is None else mask[:, 0]
    else:
        row_mask("pkd", mask, state_S.shape[:-1], "[B] row mask")
    return reference.normalized_mse(state_S, state_T, mask)


def _pair_of_states(name: str, side: str, value: StatePair) -> tuple[torch.Tensor, torch.Tensor]:
    x0, x1 = pair(name, side, value, _PAIR)
    rank(name, side, x0, (3,), _PAIR)
    same_shape_but_width(name, x0, x1, _STATES)
    return x0, x1


@averages_over("sequences")
def fsp(state_S: StatePair, state_T: StatePair, mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``fsp`` (alias ``gram``), a variant of the FSP matrix of Yim et al. 2017: per
    example ``G = X0^T X1 / n`` [D0, D1] over its n real tokens, then ``mean (G_S - G_T)^2`` over
    entries and examples. Takes layer pairs [X0, X1] of [B, L, D0] and [B, L, D1] states; each
    layer's width must be the same on both sides (project the student's)."""
    s0, s1 = _pair_of_states("fsp", "student", state_S)
    t0, t1 = _pair_of_states("fsp", "teacher", state_T)
    same_shape("fsp", s0, t0, _STATES)
    same_shape("fsp", s1, t1, _STATES)
    token_mask("fsp", mask, *s0.shape[:2])
    return reference.gram_mse((s0, s1), (t0, t1), mask)


@averages_over("pairs")
def nst(state_S: StatePair, state_T: StatePair, mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``nst`` (alias ``mmd``), a variant of Neuron Selectivity Transfer (Huang &
    Wang 2017): the token-similarity matrix ``S = X0 X1^T / D`` [L, L] of each side and
    ``mean (S_S - S_T)^2`` over pairs of real tokens. Layer pairs [X0, X1] of [B, L, D] states;
    the two sides' widths D may differ."""
    s0, s1 = _pair_of_states("nst", "student", state_S)
    t0, t1 = _pair_of_states("nst", "teacher", state_T)
    same_shape("nst", s0, s1, _STATES, names=("the student's X0", "X1"))
    same_shape("nst", t0, t1, _STATES, names=("the teacher's X0", "X1"))
    same_shape_but_width("nst", s0, t0, _STATES)
    token_mask("nst", mask, *s0.shape[:2])
    return kd_kernels.relation_loss(s0[:, None], s1[:, None], t0[:, None], t1[:, None], mask, kind="mse",
                                   scale_s=1.0 / s0.shape[-1], scale_t=1.0 / t0.shape[-1])


HIDDEN_LOSSES = {"hidden_mse": hidden_mse, "cos": cos, "pkd": pkd, "fsp": fsp, "nst": nst}
ALIASES = {"gram": "fsp", "mmd": "nst"}
