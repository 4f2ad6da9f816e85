"""kd-analysis' plugin module: registers ``kd analyze`` and ``kd probe``."""

from __future__ import annotations

import click

from kd_core import hookimpl


@hookimpl
def kd_register_commands(cli: click.Group) -> None:
    """``kd analyze`` and ``kd probe``."""
    from kd_analysis.commands import analyze_command, probe_command

    cli.add_command(analyze_command)
    cli.add_command(probe_command)
