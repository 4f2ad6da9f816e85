"""Exceptions raised by kd. Every message says what is wrong, where, and how to fix it."""

from __future__ import annotations


class KDError(Exception):
    """Base class of every error kd raises on purpose."""


class ConfigError(KDError, ValueError):
    """A config or recipe is invalid; the message names the field path and the fix."""


class PluginError(KDError):
    """A plugin could not be loaded or registered something invalid."""


class DuplicateNameError(PluginError):
    """Two providers registered the same name for the same kind."""


class UnknownNameError(KDError, LookupError):
    """A name was looked up that no plugin registered."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class ShapeError(KDError, ValueError):
    """A tensor has the wrong shape for a loss or adaptor; the message names both shapes."""


class NonFiniteLossError(KDError, FloatingPointError):
    """A loss term became NaN or inf; the message names the term and the step."""
