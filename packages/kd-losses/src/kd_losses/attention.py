"""Attention losses: TextBrewer's ``attention_mse``, ``attention_mse_sum``, ``attention_ce`` and
``attention_ce_mean``, and MiniLM's ``attention_kl``.

Inputs on each side are either attention maps [B, H, L, L] (probabilities, feature
``attention``, or pre-softmax scores, feature ``attention_scores``; [B, L, L] also works) or a
pair (Q, K) of per-head states [B, H, L, d] (feature ``[q, k]``), from which the scores
``Q K^T / sqrt(d)`` are formed by the relation kernel without a [B, H, L, L] tensor in the
fused backends. Student and teacher need the same number of heads; from (Q, K) their head
sizes may differ. ``mask`` [B, L] marks real tokens; it applies to queries and keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import kd_kernels
from kd_core.errors import ShapeError
from kd_core.normalization import averages_over
from kd_kernels import reference
from kd_losses.checks import is_pair, pair, rank, ranks, same_kind, same_shape, same_shape_but_width, token_mask

_MAPS = "[B, H, L, L] attention maps (or [B, L, L])"
_QK = "(Q, K) of [B, H, L, d] per-head states"
AttentionInput = torch.Tensor | Sequence[torch.Tensor]


def _maps(name: str, maps_S: torch.Tensor, maps_T: torch.Tensor, mask: torch.Tensor | None) -> None:
    ranks(name, maps_S, maps_T, (3, 4), _MAPS)
    same_shape(name, maps_S, maps_T, _MAPS)
    if maps_S.shape[-1] != maps_S.shape[-2]:
        raise ShapeError(f"{name}: maps {tuple(maps_S.shape)} are not square in their last two "
                         f"dimensions; expected {_MAPS}")
    token_mask(name, mask, maps_S.shape[0], maps_S.shape[-1])


def qk_pairs(name: str, input_S: AttentionInput, input_T: AttentionInput,
             mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check and unpack (Q, K) pairs of both sides: [B, H, L, d_s] and [B, H, L, d_t]."""
    q_s, k_s = pair(name, "student", input_S, _QK)
    q_t, k_t = pair(name, "teacher", input_T, _QK)
    rank(name, "student", q_s, (4,), _QK)
    same_shape(name, q_s, k_s, _QK, names=("the student's Q", "K"))
    same_shape(name, q_t, k_t, _QK, names=("the teacher's Q", "K"))
    same_shape_but_width(name, q_s, q_t, _QK)
    token_mask(name, mask, q_s.shape[0], q_s.shape[2])
    return q_s, k_s, q_t, k_t


@averages_over("pairs")
def attention_mse(attention_S: AttentionInput, attention_T: AttentionInput,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_{h, real i, real j} (A_S - A_T)^2`` (TextBrewer's ``attention_mse``). On
    pre-softmax scores, or on (Q, K) pairs, this is TinyBERT's attention loss (Jiao et al. 2020).
    Maps [B, H, L, L] (or [B, L, L]) or (Q, K) pairs of [B, H, L, d]; mask [B, L]."""
    same_kind("attention_mse", attention_S, attention_T, f"{_MAPS} or {_QK}")
    if is_pair(attention_S):
        return kd_kernels.relation_loss(*qk_pairs("attention_mse", attention_S, attention_T, mask),
                                       mask, kind="mse")
    _maps("attention_mse", attention_S, attention_T, mask)
    return reference.map_mse(attention_S, attention_T, mask)


@averages_over("pairs")
def attention_mse_sum(attention_S: torch.Tensor, attention_T: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``attention_mse_sum``: the maps summed over heads, then
    ``mean_{real i, real j} (sum_h A_S - sum_h A_T)^2``; the head counts may then differ.
    Maps [B, H, L, L] (or [B, L, L]); mask [B, L]."""
    ranks("attention_mse_sum", attention_S, attention_T, (3, 4), _MAPS)
    summed_S = reference.upcast(attention_S).sum(1) if attention_S.dim() == 4 else attention_S
    summed_T = reference.upcast(attention_T).sum(1) if attention_T.dim() == 4 else attention_T
    _maps("attention_mse_sum", summed_S, summed_T, mask)
    return reference.map_mse(summed_S, summed_T, mask)


@averages_over("rows")
def attention_ce(attention_S: AttentionInput, attention_T: AttentionInput,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``attention_ce`` on pre-softmax scores: ``mean_{h, real i} -sum_{real j}
    softmax(A_T)_ij log softmax(A_S)_ij``, each softmax over the real keys. Scores [B, H, L, L]
    (or [B, L, L]) or (Q, K) pairs of [B, H, L, d]; mask [B, L]."""
    same_kind("attention_ce", attention_S, attention_T, f"{_MAPS} or {_QK}")
    if is_pair(attention_S):
        return kd_kernels.relation_loss(*qk_pairs("attention_ce", attention_S, attention_T, mask),
                                       mask, kind="ce")
    _maps("attention_ce", attention_S, attention_T, mask)
    return reference.map_softmax_kl(attention_S, attention_T, mask, mode="ce")


@averages_over("rows")
def attention_ce_mean(attention_S: torch.Tensor, attention_T: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``attention_ce_mean``: the scores averaged over heads, then ``attention_ce``
    of the [B, L, L] means; the head counts may then differ. Scores [B, H, L, L] (or [B, L, L]);
    mask [B, L]."""
    ranks("attention_ce_mean", attention_S, attention_T, (3, 4), _MAPS)
    mean_S = reference.upcast(attention_S).mean(1) if attention_S.dim() == 4 else attention_S
    mean_T = reference.upcast(attention_T).mean(1) if attention_T.dim() == 4 else attention_T
    _maps("attention_ce_mean", mean_S, mean_T, mask)
    return reference.map_softmax_kl(mean_S, mean_T, mask, mode="ce")


@averages_over("rows")
def attention_kl(attention_S: AttentionInput, attention_T: AttentionInput,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM's self-attention distribution transfer (Wang et al. 2020, equation 6):
    ``mean_{h, real i} KL(A_T,h,i || A_S,h,i)`` over the real keys. Takes attention probabilities
    [B, H, L, L] (renormalised over the real keys) or (Q, K) pairs, from which
    ``A = softmax(Q K^T / sqrt(d))`` with each side's own head size d."""
    same_kind("attention_kl", attention_S, attention_T, f"{_MAPS} or {_QK}")
    if is_pair(attention_S):
        return kd_kernels.relation_loss(*qk_pairs("attention_kl", attention_S, attention_T, mask),
                                       mask, kind="kl")
    _maps("attention_kl", attention_S, attention_T, mask)
    return reference.map_softmax_kl(_log(attention_S), _log(attention_T), mask, mode="kl")


def _log(probabilities: torch.Tensor) -> torch.Tensor:
    probabilities = reference.upcast(probabilities)
    return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


ATTENTION_LOSSES = {"attention_mse": attention_mse, "attention_mse_sum": attention_mse_sum,
                    "attention_ce": attention_ce, "attention_ce_mean": attention_ce_mean,
                    "attention_kl": attention_kl}
