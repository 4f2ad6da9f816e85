"""Relation losses of MiniLM and MiniLMv2: ``value_relation_kl`` and ``relation_kl``.

Both compare, per head, the row-softmax of scaled self-similarity matrices ``X X^T / sqrt(d)``
of student and teacher with KL over the real keys, averaged over heads and real queries; the
head sizes of the two sides may differ. ``mask`` [B, L] marks real tokens.
"""

from __future__ import annotations

import math

import torch

import kd_kernels
from kd_core.normalization import averages_over
from kd_losses.checks import ranks, same_shape_but_width, token_mask

_HEADS = "[B, H, L, d] per-head states"
_STATES = "[B, L, D] states or [B, H, L, d] per-head states"


@averages_over("rows")
def value_relation_kl(v_S: torch.Tensor, v_T: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM's self-attention value-relation transfer (Wang et al. 2020, equations 7-9):
    ``VR = softmax(V V^T / sqrt(d))`` per head and ``mean_{h, real i} KL(VR_T,h,i || VR_S,h,i)``.
    ``v_S`` [B, H, L, d_s], ``v_T`` [B, H, L, d_t] (feature ``v``); same head count H."""
    ranks("value_relation_kl", v_S, v_T, (4,), _HEADS)
    same_shape_but_width("value_relation_kl", v_S, v_T, _HEADS)
    token_mask("value_relation_kl", mask, v_S.shape[0], v_S.shape[2])
    return kd_kernels.relation_loss(v_S, v_S, v_T, v_T, mask, kind="kl")


@averages_over("rows")
def relation_kl(state_S: torch.Tensor, state_T: torch.Tensor, mask: torch.Tensor | None = None,
                num_relation_heads: int | None = None) -> torch.Tensor:
    """MiniLMv2's multi-head self-attention relation distillation (Wang et al. 2021): the
    concatenated queries, keys or values [B, L, D] of one layer on each side are split into
    ``num_relation_heads`` heads of size ``D / num_relation_heads``, and the per-head relations
    ``softmax(A A^T / sqrt(d_r))`` are matched with KL, averaged over relation heads and real
    queries. Inputs [B, H, L, d] (features ``q``, ``k``, ``v``) are first concatenated over heads,
    so teacher and student head counts and widths may differ; ``num_relation_heads`` must divide
    both widths (MiniLMv2 uses 48 for base-size and 64 for large teachers)."""
    ranks("relation_kl", state_S, state_T, (3, 4), _STATES)
    flat_S, flat_T = _concat_heads(state_S), _concat_heads(state_T)
    same_shape_but_width("relation_kl", flat_S, flat_T, "[B, L, D] states")
    token_mask("relation_kl", mask, *flat_S.shape[:2])
    heads = _relation_heads(num_relation_heads, flat_S.shape[-1], flat_T.shape[-1])
    split_S, split_T = _split_heads(flat_S, heads), _split_heads(flat_T, heads)
    return kd_kernels.relation_loss(split_S, split_S, split_T, split_T, mask, kind="kl")


def _concat_heads(states: torch.Tensor) -> torch.Tensor:
    if states.dim() == 3:
        return states
    batch, heads, length, size = states.shape
    return states.transpose(1, 2).reshape(batch, length, heads * size)


def _split_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = states.shape
    return states.reshape(batch, length, heads, width // heads).transpose(1, 2)


def _relation_heads(requested: int | None, width_S: int, width_T: int) -> int:
    common = math.gcd(width_S, width_T)
    choices = [n for n in range(1, common + 1) if common % n == 0]
    if requested is None or requested < 1 or width_S % requested or width_T % requested:
        got = "is not set" if requested is None else f"is {requested}"
        raise ValueError(
            f"relation_kl: num_relation_heads {got}; it must divide both widths ({width_S} student, "
            f"{width_T} teacher): one of {choices}. Set it in the match's params, "
            f"e.g. params: {{num_relation_heads: {max(n for n in choices if n <= 64)}}}")
    return requested


RELATION_LOSSES = {"value_relation_kl": value_relation_kl, "relation_kl": relation_kl}
