"""kd-losses: the catalogue of distillation losses, projections and schedulers, registered by
name through kd's plugin hooks. Every formula lives once in :mod:`kd_kernels.reference`; these
functions check shapes and choose the formula. Get them by name with
``kd_core.lookup("losses", name)``."""

from kd_losses.attention import attention_ce, attention_ce_mean, attention_kl, attention_mse, attention_mse_sum
from kd_losses.hidden import cos, fsp, hidden_mse, nst, pkd
from kd_losses.logits import ce, jsd, kl, mse, reverse_kl
from kd_losses.projections import PROJECTIONS
from kd_losses.relations import relation_kl, value_relation_kl
from kd_losses.schedulers import CWSM, FLSW, LinearDecay, LinearGrowth

__version__ = "0.1.0"

__all__ = [
    "CWSM",
    "FLSW",
    "PROJECTIONS",
    "LinearDecay",
    "LinearGrowth",
    "__version__",
    "attention_ce",
    "attention_ce_mean",
    "attention_kl",
    "attention_mse",
    "attention_mse_sum",
    "ce",
    "cos",
    "fsp",
    "hidden_mse",
    "jsd",
    "kl",
    "mse",
    "nst",
    "pkd",
    "relation_kl",
    "reverse_kl",
    "value_relation_kl",
]
