"""kd-core's built-in parts, registered through the same hooks as every plugin.

kd-core's own commands are not among them: :mod:`kd_core.cli` adds them to the ``kd`` group
before any plugin's, so that the plugin machinery never imports the runs those commands drive.
"""

from __future__ import annotations

from kd_core.features import FeaturesAdaptor
from kd_core.hookspecs import Register, hookimpl
from kd_core.loggers import TensorBoardLogger
from kd_core.metrics import BUILTIN_METRICS
from kd_core.schedulers import ConstantScheduler


@hookimpl
def kd_register_schedulers(register: Register) -> None:
    register("constant", ConstantScheduler)


@hookimpl
def kd_register_adaptors(register: Register) -> None:
    register("features", FeaturesAdaptor)


@hookimpl
def kd_register_metrics(register: Register) -> None:
    for name, metric in BUILTIN_METRICS.items():
        register(name, metric)


@hookimpl
def kd_register_loggers(register: Register) -> None:
    register("tensorboard", TensorBoardLogger)
