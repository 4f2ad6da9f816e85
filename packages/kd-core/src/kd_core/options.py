"""Command-line option types shared by kd's commands and plugins' commands."""

from __future__ import annotations

from typing import Any

import click


class ManyValues(click.Option):
    """An option that takes every value up to the next option: ``--models A B C``."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        option = next(o for opts in (parser._long_opt, parser._short_opt) for name, o in opts.items()
                      if name in self.opts)
        original = option.process

        def process(value: Any, state: Any) -> None:
            values = [value]
            while state.rargs and not state.rargs[0].startswith("-"):
                values.append(state.rargs.pop(0))
            original(tuple(values), state)

        option.process = process

    def type_cast_value(self, ctx: click.Context, value: Any) -> Any:
        if value is None:
            return ()
        return tuple(str(v) for group in value for v in (group if isinstance(group, tuple) else (group,)))
