"""kd-losses: distillation losses and projections, registered through kd's plugin hooks."""

from kd_losses.hidden import cos, hidden_mse
from kd_losses.logits import ce, kl, mse
from kd_losses.projections import PROJECTIONS

__version__ = "0.1.0"

__all__ = ["PROJECTIONS", "__version__", "ce", "cos", "hidden_mse", "kl", "mse"]
