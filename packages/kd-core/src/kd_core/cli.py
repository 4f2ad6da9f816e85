"""The ``kd`` command: a click group with kd-core's own subcommands, to which plugins add theirs
through ``kd_register_commands``."""

from __future__ import annotations

import sys

import click

from kd_core import __version__
from kd_core.commands import BUILTIN_COMMANDS
from kd_core.errors import KDError
from kd_core.plugins import register_commands


class _Group(click.Group):
    # kd's own errors are for users: print the message, not a traceback.
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KDError as exc:
            raise click.ClickException(str(exc)) from exc


def build_cli() -> click.Group:
    """The ``kd`` group: kd-core's commands, then every plugin's."""

    @click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="kd")
    def cli() -> None:
        """kd: knowledge distillation for NLP models in PyTorch."""

    for command in BUILTIN_COMMANDS:
        cli.add_command(command)
    register_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``kd`` console script."""
    build_cli().main(args=argv if argv is not None else sys.argv[1:], prog_name="kd")
