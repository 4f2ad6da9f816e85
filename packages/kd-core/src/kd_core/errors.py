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


class UntrainedHeadError(ConfigError):
    """A model's task head is not in its checkpoint, so it would start random: every score it gave
    would be chance, and a student distilled from it would learn nothing."""

    def __init__(self, model: str, weights: list[str], where: str = "teacher") -> None:
        self.model = model
        self.weights = weights
        shown = ", ".join(weights[:4]) + (f" and {len(weights) - 4} more" if len(weights) > 4 else "")
        super().__init__(
            f"{where} {model!r} has no trained task head: its checkpoint lacks {shown}, so these weights would be "
            f"random and every prediction chance. Fine-tune it first with `kd train RECIPE -o DIR` and use DIR/model; "
            f"in a kd distill recipe, a finetune section does that as the first stage (teacher: {{model: ..., "
            f"num_labels: N, finetune: {{num_epochs: 2}}}}, trained under OUTPUT/teacher/). To test mechanics only "
            f"(resume, speed), a recipe may set teacher.allow_untrained_head: true")
