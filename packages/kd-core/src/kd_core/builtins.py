"""kd-core's built-in parts, registered through the same hooks as every plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kd_core.features import FeaturesAdaptor
from kd_core.hookspecs import Register, hookimpl
from kd_core.schedulers import ConstantScheduler

if TYPE_CHECKING:
    import click


@hookimpl
def kd_register_schedulers(register: Register) -> None:
    register("constant", ConstantScheduler)


@hookimpl
def kd_register_adaptors(register: Register) -> None:
    register("features", FeaturesAdaptor)


@hookimpl
def kd_register_commands(cli: click.Group) -> None:
    from kd_core import commands

    for command in commands.BUILTIN_COMMANDS:
        cli.add_command(command)
