"""Registries: one per kind of part, each mapping a unique name to an object and its provider."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kd_core.errors import DuplicateNameError, PluginError, UnknownNameError

KINDS: tuple[str, ...] = (
    "losses",
    "projections",
    "schedulers",
    "adaptors",
    "students",
    "initializers",
    "augmenters",
    "tasks",
    "metrics",
    "loggers",
)
"""Every kind of registered part; ``kd_register_<kind>`` is the hook that fills each one."""


@dataclass(frozen=True)
class Provider:
    """Who registered an entry: the distribution (when installed as one) and the plugin module."""

    distribution: str | None
    module: str

    def __str__(self) -> str:
        if self.distribution:
            return f"{self.distribution} ({self.module})"
        return self.module


@dataclass(frozen=True)
class Entry:
    """One registered object with its name, kind and provider."""

    kind: str
    name: str
    obj: Any
    provider: Provider


class Registry:
    """Names of one kind, unique across all plugins.

    Registering a name twice raises :class:`DuplicateNameError` naming both providers; looking
    up an unknown name raises :class:`UnknownNameError` with the registered names and the
    closest match.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, obj: Any, provider: Provider) -> None:
        """Register ``obj`` under ``name``; fails if the name is taken."""
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"{provider} registered a {_singular(self.kind)} with an invalid name {name!r}: "
                "names must be non-empty strings"
            )
        if name in self._entries:
            first = self._entries[name].provider
            raise DuplicateNameError(
                f"{self.kind} name {name!r} is registered twice: by {first} and by {provider}. "
                f"Uninstall one of them, or block one with KD_DISABLE_PLUGINS."
            )
        self._entries[name] = Entry(self.kind, name, obj, provider)

    def entry(self, name: str) -> Entry:
        """The entry registered under ``name``, or a helpful :class:`UnknownNameError`."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def get(self, name: str) -> Any:
        """The object registered under ``name``."""
        return self.entry(name).obj

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Registered entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        if not names:
            return (
                f"unknown {_singular(self.kind)} {name!r}: "
                f"no {self.kind} are registered at all. Install a plugin that provides them "
                f"(for example kd-losses or kd-models), then check `kd plugins`."
            )
        message = f"unknown {_singular(self.kind)} {name!r}. Registered {self.kind}: {', '.join(names)}."
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        if close:
            message += f" Did you mean {close[0]!r}?"
        return message


def _singular(kind: str) -> str:
    return {"losses": "loss", "augmenters": "augmenter"}.get(kind, kind[:-1])
