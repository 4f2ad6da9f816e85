"""kd-analysis' plugin module: registers ``kd analyze``."""

from __future__ import annotations

import click

from kd_core import hookimpl


@hookimpl
def kd_register_commands(cli: click.Group) -> None:
    """``kd analyze``."""
    from kd_analysis.commands import analyze_command

    cli.add_command(analyze_command)
