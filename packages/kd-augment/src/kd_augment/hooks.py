"""kd-augment's plugin module: registers its augmenters and the ``kd augment`` command group."""

from __future__ import annotations

import click

from kd_augment.generate import CausalLMGenerator
from kd_augment.mlm import MaskedLMReplace
from kd_augment.tang import TangRules
from kd_augment.token_edits import EDITS, token_edit_factory
from kd_core import hookimpl
from kd_core.hookspecs import Register


@hookimpl
def kd_register_augmenters(register: Register) -> None:
    """TextBrewer's five token edits, ``tang``, ``mlm_replace`` and ``generate``."""
    for edit in EDITS:
        register(edit, token_edit_factory(edit))
    register("tang", TangRules)
    register("mlm_replace", MaskedLMReplace)
    register("generate", CausalLMGenerator)


@hookimpl
def kd_register_commands(cli: click.Group) -> None:
    """``kd augment`` (rules, mlm, generate, label)."""
    from kd_augment.commands import augment_group

    cli.add_command(augment_group)
