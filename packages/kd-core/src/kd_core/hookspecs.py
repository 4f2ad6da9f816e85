"""The hooks through which every part of kd is registered.

kd discovers its parts with pluggy (project name ``kd``). A plugin is a module with functions
decorated by :data:`hookimpl`; a distribution announces it with an entry point in the group
``kd``::

    [project.entry-points.kd]
    my_losses = "my_package.hooks"

Each ``kd_register_<kind>`` hook receives ``register``, a callable ``register(name, obj)``. Names
are unique per kind across all plugins: registering a taken name fails and names both providers.
kd-core's own built-ins are registered through these same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click

PROJECT_NAME = "kd"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class Register(Protocol):
    """The callable a registration hook receives: ``register(name, obj)``."""

    def __call__(self, name: str, obj: Any) -> None: ...


@hookspec
def kd_register_losses(register: Register) -> None:
    """Register loss functions ``loss(student, teacher, mask=None, **params) -> 0-dim tensor``."""


@hookspec
def kd_register_projections(register: Register) -> None:
    """Register projection factories ``factory(dim_in, dim_out) -> nn.Module``."""


@hookspec
def kd_register_schedulers(register: Register) -> None:
    """Register temperature and weight schedulers (see :mod:`kd_core.schedulers`)."""


@hookspec
def kd_register_adaptors(register: Register) -> None:
    """Register adaptors that turn a model's outputs into a Features dict."""


@hookspec
def kd_register_students(register: Register) -> None:
    """Register student builders and presets."""


@hookspec
def kd_register_initializers(register: Register) -> None:
    """Register student initializers ``init(teacher, student, **options) -> student``."""


@hookspec
def kd_register_augmenters(register: Register) -> None:
    """Register data augmenters."""


@hookspec
def kd_register_tasks(register: Register) -> None:
    """Register tasks (:class:`kd_core.tasks.Task`): how a recipe loads models and data,
    evaluates and saves, for one kind of problem (``sequence_classification``, ...)."""


@hookspec
def kd_register_metrics(register: Register) -> None:
    """Register evaluation metrics (:class:`kd_core.metrics.Metric`): what a task's ``evaluate``
    computes by name (``accuracy``, ``entity_f1``, ``f1``, ...)."""


@hookspec
def kd_register_loggers(register: Register) -> None:
    """Register experiment trackers (:mod:`kd_core.loggers`): ``factory(log_dir, start_step) ->
    Logger``, named by ``training.report_to``; each receives every metrics.jsonl record."""


@hookspec
def kd_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``kd`` command group (``cli.add_command(...)``). A name that is
    taken (by kd-core's own commands or another plugin) fails, naming both."""
