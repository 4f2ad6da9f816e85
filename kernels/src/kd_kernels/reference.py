"""Pure-PyTorch references: the one definition of every formula kd's losses compute.

Every function reduces over *real* rows or tokens only (mask: 1 = real), so adding padding does
not change the result, and returns exactly 0 with zero gradient when nothing is real. Inputs in
bf16/fp16 are computed in fp32; float64 stays float64 (for gradcheck).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (all positions if mask is None).

    With no real position the result is 0 and its gradient is 0.
    """
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)


def _temperature(temperature: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(temperature, torch.Tensor) and temperature.dim() > 0:
        return temperature.to(like.dtype).unsqueeze(-1)
    return float(temperature)


def softmax_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float | torch.Tensor = 1.0, mask: torch.Tensor | None = None,
               mode: str = "kl") -> torch.Tensor:
    """Temperature-softmax distillation of logits [..., V] (rows [...], mask [...]).

    - ``mode="kl"`` (Hinton et al. 2015): ``T^2 * mean_rows KL(p_T || p_S)``;
    - ``mode="ce"`` (TextBrewer's ``ce``): ``mean_rows -sum_v p_T log p_S``, no T^2 factor;

    with ``p = softmax(logits / T)``. ``temperature`` is a float or a per-row tensor [...].
    Teacher entries of -inf have probability 0 and contribute nothing.
    """
    if mode not in ("kl", "ce"):
        raise ValueError(f"softmax_kl mode must be 'kl' or 'ce', got {mode!r}")
    dtype = _compute_dtype(student_logits)
    s = student_logits.to(dtype)
    t = teacher_logits.to(dtype)
    temp = _temperature(temperature, s)
    log_p_s = F.log_softmax(s / temp, dim=-1)
    log_p_t = F.log_softmax(t / temp, dim=-1)
    p_t = log_p_t.exp()
    real = p_t > 0
    if mode == "ce":
        per_row = -torch.where(real, p_t * log_p_s, torch.zeros_like(p_t)).sum(-1)
        return masked_mean(per_row, mask)
    per_row = torch.where(real, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t)).sum(-1)
    scale = temp.squeeze(-1) ** 2 if isinstance(temp, torch.Tensor) else temp**2
    return masked_mean(per_row * scale, mask)


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              temperature: float | torch.Tensor = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``mse`` logit loss: mean squared error of ``logits / T`` over real rows'
    entries."""
    dtype = _compute_dtype(student_logits)
    temp = _temperature(temperature, student_logits.to(dtype))
    per_row = ((student_logits.to(dtype) / temp - teacher_logits.to(dtype) / temp) ** 2).mean(-1)
    return masked_mean(per_row, mask)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """TextBrewer's ``hidden_mse``: mean squared error over the entries of real tokens.

    ``student``/``teacher`` [B, L, D], ``mask`` [B, L].
    """
    dtype = _compute_dtype(student)
    per_token = ((student.to(dtype) - teacher.to(dtype)) ** 2).mean(-1)
    return masked_mean(per_token, mask)


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor,
                    mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """TextBrewer's ``cos`` (DistilBERT's cosine loss): mean over real tokens of
    ``1 - cos(h_S, h_T)``; ``student``/``teacher`` [..., D], ``mask`` [...]."""
    dtype = _compute_dtype(student)
    cosine = F.cosine_similarity(student.to(dtype), teacher.to(dtype), dim=-1, eps=eps)
    return masked_mean(1 - cosine, mask)
