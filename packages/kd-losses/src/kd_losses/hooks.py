"""kd-losses' plugin module: registers its losses, projections and schedulers with kd."""

from __future__ import annotations

from kd_core import hookimpl
from kd_core.hookspecs import Register
from kd_losses.attention import ATTENTION_LOSSES
from kd_losses.hidden import ALIASES, HIDDEN_LOSSES
from kd_losses.logits import LOGIT_LOSSES
from kd_losses.projections import PROJECTIONS
from kd_losses.relations import RELATION_LOSSES
from kd_losses.schedulers import SCHEDULERS

LOSSES = {**LOGIT_LOSSES, **HIDDEN_LOSSES, **ATTENTION_LOSSES, **RELATION_LOSSES}


@hookimpl
def kd_register_losses(register: Register) -> None:
    for name, loss in LOSSES.items():
        register(name, loss)
    for alias, name in ALIASES.items():
        register(alias, LOSSES[name])


@hookimpl
def kd_register_projections(register: Register) -> None:
    for name, factory in PROJECTIONS.items():
        register(name, factory)


@hookimpl
def kd_register_schedulers(register: Register) -> None:
    for name, factory in SCHEDULERS.items():
        register(name, factory)
