"""Temperature and weight schedulers: the protocols, and the constant scheduler kd-core ships
(a recipe's spec becomes a scheduler in :func:`kd_core.loss_plan.build_scheduler`).

A registered scheduler is a factory called with the arguments of its config spec (TextBrewer's
``["flsw", beta, gamma]`` calls ``factory(beta, gamma)``) returning an object with either or both
of:

- ``temperature(logits_S, logits_T, base_temperature, mask=None) -> float | Tensor`` (a per-row
  tensor for dynamic temperatures; ``mask`` marks the rows that count, as the logit loss's);
- ``weight(base_weight, progress) -> float`` with ``progress = step / total_steps`` in [0, 1].
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TemperatureScheduler(Protocol):
    """Chooses the distillation temperature from the logits of both sides."""

    def temperature(self, logits_S: torch.Tensor, logits_T: torch.Tensor, base_temperature: float,
                    mask: torch.Tensor | None = None) -> float | torch.Tensor: ...


@runtime_checkable
class WeightScheduler(Protocol):
    """Scales a loss weight with training progress."""

    def weight(self, base_weight: float, progress: float) -> float: ...


class ConstantScheduler:
    """Keeps the configured temperature or weight (TextBrewer's ``"none"``)."""

    def temperature(self, logits_S: torch.Tensor, logits_T: torch.Tensor, base_temperature: float,
                    mask: torch.Tensor | None = None) -> float:
        return base_temperature

    def weight(self, base_weight: float, progress: float) -> float:
        return base_weight
