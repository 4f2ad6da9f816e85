"""Temperature and weight schedulers: ``flsw`` and ``cwsm`` (dynamic temperature, Wen et al.
2019, arXiv:1911.07471), ``linear_decay`` and ``linear_growth`` (loss weights over training).

A config names them as TextBrewer does: ``temperature_scheduler: [flsw, beta, gamma]``,
``kd_loss_weight_scheduler: linear_decay``. Dynamic temperatures are per row ([B] or [B, L]);
the batch mean they are centred on is taken over real rows only, padded rows keep the base
temperature, and no row goes below ``min_temperature``.
"""

from __future__ import annotations

import torch


def _centred(weights: torch.Tensor, base: float, beta: float, mask: torch.Tensor | None,
             min_temperature: float) -> torch.Tensor:
    """``tau = base + beta * (mean_real(w) - w)``, the rule both of Wen et al.'s schedulers share."""
    real = torch.ones_like(weights, dtype=torch.bool) if mask is None else mask.bool()
    mean = weights[real].mean() if real.any() else weights.new_zeros(())
    tau = base + beta * (mean - weights)
    return torch.where(real, tau, torch.full_like(tau, base)).clamp(min=min_temperature)


class FLSW:
    """Focal-loss-style weights: rows where student and teacher logits point in different
    directions get a lower temperature (a sharper target).

    ``w = (1 - cos(z_S, z_T))^gamma``, ``tau = T + beta * (mean(w) - w)``.
    """

    def __init__(self, beta: float, gamma: float, eps: float = 1e-4, min_temperature: float = 0.1) -> None:
        self.beta, self.gamma, self.eps, self.min_temperature = beta, gamma, eps, min_temperature

    def temperature(self, logits_S: torch.Tensor, logits_T: torch.Tensor, base_temperature: float,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            s = logits_S.detach().float()
            t = logits_T.detach().float()
            s = s / (s.norm(dim=-1, keepdim=True) + self.eps)
            t = t / (t.norm(dim=-1, keepdim=True) + self.eps)
            weights = (1 - (s * t).sum(-1)).pow(self.gamma)
            return _centred(weights, base_temperature, self.beta, mask, self.min_temperature)


class CWSM:
    """Confidence-weighted temperatures: rows where the student is unsure (low top
    probability) get a lower temperature.

    ``w = 1 / (max softmax(z_S) + 1e-3)``, ``tau = T + beta * (mean(w) - w)``.
    """

    def __init__(self, beta: float, min_temperature: float = 0.1) -> None:
        self.beta, self.min_temperature = beta, min_temperature

    def temperature(self, logits_S: torch.Tensor, logits_T: torch.Tensor, base_temperature: float,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            top = torch.softmax(logits_S.detach().float(), dim=-1).max(dim=-1).values
            return _centred(1 / (top + 1e-3), base_temperature, self.beta, mask, self.min_temperature)


class LinearDecay:
    """A weight that falls linearly from its configured value to 0 over training."""

    def weight(self, base_weight: float, progress: float) -> float:
        return base_weight * (1.0 - progress)


class LinearGrowth:
    """A weight that grows linearly from 0 to its configured value over training."""

    def weight(self, base_weight: float, progress: float) -> float:
        return base_weight * progress


SCHEDULERS = {"flsw": FLSW, "cwsm": CWSM, "linear_decay": LinearDecay, "linear_growth": LinearGrowth}
