"""kd-losses' plugin module: registers its losses and projections with kd."""

from __future__ import annotations

from kd_core import hookimpl
from kd_core.hookspecs import Register
from kd_losses.hidden import cos, hidden_mse
from kd_losses.logits import ce, kl, mse
from kd_losses.projections import PROJECTIONS


@hookimpl
def kd_register_losses(register: Register) -> None:
    for loss in (ce, kl, mse, hidden_mse, cos):
        register(loss.__name__, loss)


@hookimpl
def kd_register_projections(register: Register) -> None:
    for name, factory in PROJECTIONS.items():
        register(name, factory)
