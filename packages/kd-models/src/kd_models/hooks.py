"""kd-models' plugin module: registers its adaptors and tasks with kd."""

from __future__ import annotations

from kd_core import hookimpl
from kd_core.hookspecs import Register
from kd_models.adaptors import HFAdaptor
from kd_models.tasks import SequenceClassificationTask


@hookimpl
def kd_register_adaptors(register: Register) -> None:
    register("hf", HFAdaptor)


@hookimpl
def kd_register_tasks(register: Register) -> None:
    register("sequence_classification", SequenceClassificationTask())
