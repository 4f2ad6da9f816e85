"""Pure-PyTorch references: the one definition of every formula kd's losses compute.

Every function reduces over *real* rows or tokens only (mask: 1 = real), so adding padding does
not change the result, whatever the padding holds (inf and NaN included: padded entries are
replaced before any arithmetic, so they reach neither the value nor a gradient), and returns
exactly 0 with zero gradient when nothing is real. Inputs in bf16/fp16 are computed in fp32;
float64 stays float64 (for gradcheck). The functions run with autocast off, so a loss computed
inside ``torch.autocast`` (as kd's training engine does) is the same loss, not a bf16 one.

Shapes: logits [..., V] with a row mask [...]; hidden states [B, L, D] with a token mask [B, L];
relation maps (attention probabilities or scores) [B, H, L, L] and per-head states (Q, K, V)
[B, H, L, d], both with a token mask [B, L] that applies to queries and keys alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

Temperature = float | torch.Tensor
Function = TypeVar("Function", bound=Callable[..., Any])


def _device_type(args: tuple) -> str | None:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device.type
        if isinstance(arg, (tuple, list)):
            found = _device_type(tuple(arg))
            if found is not None:
                return found
    return None


def without_autocast(function: Function) -> Function:
    """Run ``function`` with autocast disabled on the device of its first tensor argument, so
    that its matmuls and reductions run in the dtype it chooses (fp32, or float64), not in
    autocast's bf16/fp16."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        device = _device_type(args)
        if device is None or not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
            return function(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return function(*args, **kwargs)

    return run  # type: ignore[return-value]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype kd computes losses in: float64 stays, everything else becomes float32."""
    return x.to(_compute_dtype(x))


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (all positions if mask is None).

    ``mask`` broadcasts against ``values``. With no real position the result is 0 and its
    gradient is 0.
    """
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    weights = mask.to(values.dtype).expand_as(values)
    kept = torch.where(weights != 0, values, 0.0)  # not values * weights: inf * 0 would be NaN
    return (kept * weights).sum() / weights.sum().clamp(min=1)


def _real(x: torch.Tensor, keep: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """``x`` with ``fill`` wherever ``keep`` (broadcast against ``x``) is false: what padding
    holds then reaches neither a value nor, through 0 * inf, a gradient."""
    return x if keep is None else torch.where(keep, x, fill)


def _rows(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A row/token mask [...] as a boolean [..., 1] that broadcasts over the last dimension."""
    return None if mask is None else mask.bool().unsqueeze(-1)


def _temperature(temperature: Temperature, like: torch.Tensor) -> Temperature:
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        return temperature.to(like.dtype).unsqueeze(-1)
    return float(temperature)


def _tempered_log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: Temperature,
                        mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """``log softmax(z / T)`` of both sides in the compute dtype, and ``T^2`` per row; padded rows
    are computed as rows of zeros at T = 1 (a padded row of -inf would give NaN)."""
    dtype = _compute_dtype(student_logits)
    rows = _rows(mask)
    s = _real(student_logits.to(dtype), rows)
    temp = _temperature(temperature, s)
    if isinstance(temp, torch.Tensor):
        temp = _real(temp, rows, 1.0)
    log_p_s = F.log_softmax(s / temp, dim=-1)
    log_p_t = F.log_softmax(_real(teacher_logits.to(dtype), rows) / temp, dim=-1)
    t_squared = temp.squeeze(-1) ** 2 if isinstance(temp, torch.Tensor) else temp**2
    return log_p_s, log_p_t, t_squared


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row; entries where ``p`` is 0 contribute exactly 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


@without_autocast
def softmax_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: Temperature = 1.0, mask: torch.Tensor | None = None,
               mode: str = "kl") -> torch.Tensor:
    """Temperature-softmax distillation of logits [..., V] (rows [...], mask [...]).

    - ``mode="kl"`` (Hinton et al. 2015): ``T^2 * mean_rows KL(p_T || p_S)``;
    - ``mode="ce"`` (TextBrewer's ``ce``): ``mean_rows -sum_v p_T log p_S``, no T^2 factor;

    with ``p = softmax(logits / T)``. ``temperature`` is a float or a per-row tensor [...].
    Teacher entries of -inf have probability 0 and contribute nothing.
    """
    if mode not in ("kl", "ce"):
        raise ValueError(f"softmax_kl mode must be 'kl' or 'ce', got {mode!r}")
    log_p_s, log_p_t, t_squared = _tempered_log_probs(student_logits, teacher_logits, temperature, mask)
    if mode == "ce":
        p_t = log_p_t.exp()
        per_row = -torch.where(p_t > 0, p_t * log_p_s, torch.zeros_like(p_t)).sum(-1)
        return masked_mean(per_row, mask)
    return masked_mean(_kl_rows(log_p_t, log_p_s) * t_squared, mask)


@without_autocast
def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: Temperature = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse KL, ``T^2 * mean_rows KL(p_S || p_T)``: mode-seeking, the student concentrates on
    the teacher's main modes instead of covering its tail (MiniLLM, Gu et al. 2024)."""
    log_p_s, log_p_t, t_squared = _tempered_log_probs(student_logits, teacher_logits, temperature, mask)
    return masked_mean(_kl_rows(log_p_s, log_p_t) * t_squared, mask)


@without_autocast
def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: Temperature = 1.0,
        mask: torch.Tensor | None = None, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024):
    ``T^2 * mean_rows [beta KL(p_T || m) + (1 - beta) KL(p_S || m)]`` with
    ``m = beta p_T + (1 - beta) p_S``; ``beta = 0.5`` is the symmetric JSD, bounded by ``log 2``.
    ``beta`` must lie strictly between 0 and 1 (at either end the divergence is identically 0).
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}; use 'kl' or 'reverse_kl' for the end points")
    log_p_s, log_p_t, t_squared = _tempered_log_probs(student_logits, teacher_logits, temperature, mask)
    log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log(1.0 - beta))
    per_row = beta * _kl_rows(log_p_t, log_m) + (1.0 - beta) * _kl_rows(log_p_s, log_m)
    return masked_mean(per_row * t_squared, mask)


@without_autocast
def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              temperature: Temperature = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``mse`` logit loss: mean squared error of ``logits / T`` over real rows'
    entries."""
    dtype = _compute_dtype(student_logits)
    rows = _rows(mask)
    s, t = _real(student_logits.to(dtype), rows), _real(teacher_logits.to(dtype), rows)
    temp = _temperature(temperature, s)
    if isinstance(temp, torch.Tensor):
        temp = _real(temp, rows, 1.0)
    per_row = ((s / temp - t / temp) ** 2).mean(-1)
    return masked_mean(per_row, mask)


@without_autocast
def hidden_mse(student: torch.Tensor, teacher: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the entries of real tokens; ``student``/``teacher`` [B, L, D],
    ``mask`` [B, L]."""
    dtype = _compute_dtype(student)
    tokens = _rows(mask)
    per_token = ((_real(student.to(dtype), tokens) - _real(teacher.to(dtype), tokens)) ** 2).mean(-1)
    return masked_mean(per_token, mask)


@without_autocast
def cosine_distance(student: torch.Tensor, teacher: torch.Tensor,
                    mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Mean over real rows of ``1 - cos(h_S, h_T)``; ``student``/``teacher`` [..., D],
    ``mask`` [...]."""
    dtype = _compute_dtype(student)
    rows = _rows(mask)
    cosine = F.cosine_similarity(_real(student.to(dtype), rows, 1.0), _real(teacher.to(dtype), rows, 1.0), dim=-1,
                                 eps=eps)
    return masked_mean(1 - cosine, mask)


@without_autocast
def normalized_mse(student: torch.Tensor, teacher: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over real rows of ``|h_S / |h_S| - h_T / |h_T| |^2`` (BERT-PKD's loss, Sun et al.
    2019); ``student``/``teacher`` [..., D], ``mask`` [...]."""
    dtype = _compute_dtype(student)
    rows = _rows(mask)
    unit_s = F.normalize(_real(student.to(dtype), rows, 1.0), dim=-1, eps=1e-12)
    unit_t = F.normalize(_real(teacher.to(dtype), rows, 1.0), dim=-1, eps=1e-12)
    return masked_mean(((unit_s - unit_t) ** 2).sum(-1), mask)


@without_autocast
def gram_mse(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``fsp`` (a variant of the FSP matrix, Yim et al. 2017): per example the
    feature Gram matrix ``G = X0^T X1 / n`` [D, D] over its ``n`` real tokens, then the mean
    squared error of ``G_S - G_T`` over entries and over examples that have a real token.

    ``student``/``teacher``: pairs of [B, L, D] states (two layers of one side), ``mask`` [B, L].
    """
    dtype = _compute_dtype(student[0])
    if mask is None:
        mask = torch.ones(student[0].shape[:2], device=student[0].device)
    weights = mask.to(dtype).unsqueeze(-1)
    lengths = weights.sum(1, keepdim=True).clamp(min=1)

    def gram(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x0, x1 = (_real(x.to(dtype), weights != 0) * weights for x in pair)
        return x0.transpose(1, 2) @ x1 / lengths

    per_example = ((gram(student) - gram(teacher)) ** 2).flatten(1).mean(-1)
    return masked_mean(per_example, mask.any(-1))


def _as_heads(maps: torch.Tensor) -> torch.Tensor:
    return maps.unsqueeze(1) if maps.dim() == 3 else maps


@without_autocast
def map_mse(maps_S: torch.Tensor, maps_T: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of relation maps [B, H, L, L] (or [B, L, L]) over heads and the
    (query, key) pairs where both tokens are real (TextBrewer's ``attention_mse``; TinyBERT's
    attention loss when the maps are pre-softmax scores)."""
    dtype = _compute_dtype(maps_S)
    s, t = _as_heads(maps_S).to(dtype), _as_heads(maps_T).to(dtype)
    if mask is None:
        return masked_mean((s - t) ** 2, None)
    real = mask.bool()
    pairs = real[:, None, :, None] & real[:, None, None, :]
    return masked_mean((_real(s, pairs) - _real(t, pairs)) ** 2, pairs)


@without_autocast
def map_softmax_kl(scores_S: torch.Tensor, scores_T: torch.Tensor, mask: torch.Tensor | None = None,
                   mode: str = "kl") -> torch.Tensor:
    """Row-softmax divergence of relation scores [B, H, L, L] (or [B, L, L]): each query row's
    softmax over the real keys, then ``softmax_kl``'s ``mode`` ("kl" or "ce") averaged over heads
    and real query rows. Padded keys take no probability; padded queries do not count."""
    s, t = _as_heads(scores_S), _as_heads(scores_T)
    rows = None
    if mask is not None:
        real = mask.bool()
        keys, queries = real[:, None, None, :], real[:, None, :, None]
        s = _real(s.masked_fill(~keys, -math.inf), queries)  # padded query rows: zeros, not all -inf
        t = _real(t.masked_fill(~keys, -math.inf), queries)
        rows = real[:, None, :].expand(s.shape[:-1])
    return softmax_kl(s, t, 1.0, rows, mode)


@without_autocast
def relation_loss(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
                  mask: torch.Tensor | None = None, kind: str = "kl",
                  scale_s: float | None = None, scale_t: float | None = None) -> torch.Tensor:
    """Distance between per-head relation matrices ``R = scale * X Y^T`` of student and teacher.

    ``xs``/``ys`` [B, H, L, d_s], ``xt``/``yt`` [B, H, L, d_t] (head sizes may differ); ``scale``
    defaults to ``1/sqrt(d)`` on each side; ``mask`` [B, L]. ``kind``: "kl" (MiniLM's
    ``KL(softmax R_T || softmax R_S)`` over real keys, averaged over heads and real query rows),
    "ce" (the same with cross-entropy) or "mse" (mean over heads and real pairs). MiniLM's
    attention (X=Q, Y=K) and value relation (X=Y=V), MiniLMv2's relation heads, TinyBERT's
    attention MSE and NST are all this one formula.
    """
    if kind not in ("kl", "ce", "mse"):
        raise ValueError(f"relation_loss kind must be 'kl', 'ce' or 'mse', got {kind!r}")
    dtype = _compute_dtype(xs)
    scale_s = xs.shape[-1] ** -0.5 if scale_s is None else scale_s
    scale_t = xt.shape[-1] ** -0.5 if scale_t is None else scale_t
    tokens = None if mask is None else mask.bool()[:, None, :, None]
    xs, ys, xt, yt = (_real(x.to(dtype), tokens) for x in (xs, ys, xt, yt))  # padded tokens: zero vectors
    r_s = (xs @ ys.transpose(-1, -2)) * scale_s
    r_t = (xt @ yt.transpose(-1, -2)) * scale_t
    if kind == "mse":
        return map_mse(r_s, r_t, mask)
    return map_softmax_kl(r_s, r_t, mask, kind)
