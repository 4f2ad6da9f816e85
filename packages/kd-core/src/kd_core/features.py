"""Features: what an adaptor extracts from a model's forward pass, and how models are run.

Features are a plain dict with TextBrewer's adaptor keys plus kd's:

- ``logits``: [B, C] or [B, L, C] tensor (or a list of them), or [B, R, L] when the adaptor's
  ``logits_over_tokens`` says that the distributions run over the tokens (a span head's start
  and end); ``logits_mask``: [B] / [B, L] / [B, R] rows that count (1 = real);
- ``labels``: gold labels for the hard-label loss; ``losses``: losses the model computed itself;
- ``hidden``: per-layer [B, L, D] states (index 0 = embeddings); ``attention``: per-layer
  [B, H, L, L] probabilities; ``attention_scores``: pre-softmax; ``q``, ``k``, ``v``: per-layer
  [B, H, L, d];
- ``inputs_mask``: [B, L] (1 = real token).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Features = dict[str, Any]

FEATURE_KEYS = ("logits", "logits_mask", "labels", "losses", "hidden", "attention",
                "attention_scores", "q", "k", "v", "inputs_mask")

MASKED_LOGIT = -1e4
"""The logit of a position that a distribution over tokens must not reach (outside a span head's
context, padding): its probability is exactly 0 in float32 at any temperature kd uses, and
unlike -inf it keeps every loss finite."""

TEACHER_LOGITS = "teacher_logits"
"""The batch key of teacher logits stored with the data (a transfer set labelled by
``kd augment label``): distillers use them instead of running the teacher for its logits."""


@dataclass
class FeatureNeeds:
    """What a LossPlan reads from one side: feature name -> layer indices (empty for logits).

    Adaptors use it to compute only what is read (hidden states, hooks on chosen layers).
    """

    layers: dict[str, set[int]] = field(default_factory=dict)

    def add(self, feature: str, layers: int | list[int] | None = None) -> None:
        """Record that ``feature`` is read, at ``layers`` if given."""
        slot = self.layers.setdefault(feature, set())
        if layers is not None:
            slot.update([layers] if isinstance(layers, int) else layers)

    def __contains__(self, feature: object) -> bool:
        return feature in self.layers


class Adaptor:
    """Base class of kd adaptors: run a model on a batch and return its Features.

    Subclasses override :meth:`__call__` (TextBrewer's ``adaptor(batch, model_outputs)``) and,
    when they need to prepare the model (request hidden states, install hooks), :meth:`run`.
    """

    logits_over_tokens: bool = False
    """Whether the last dimension of ``logits`` runs over the batch's tokens ([B, R, L]: the start
    and end distributions of a span head) instead of over classes. Teacher caches and stored
    teacher logits then keep that dimension's real tokens and pad it with :data:`MASKED_LOGIT`."""

    def run(self, model: nn.Module, batch: Any, needs: FeatureNeeds) -> Features:
        """Run ``model`` on ``batch`` and extract the features in ``needs``."""
        return self(batch, call_model(model, batch))

    def masks(self, batch: Any) -> Features:
        """The features of ``batch`` that say which items the losses average over (``inputs_mask``,
        ``logits_mask``, ``labels``), exactly as :meth:`run` will give them, but computed from the
        batch alone, before any model runs. The engine counts a whole optimizer step's items from
        them before its first backward pass (:mod:`kd_core.normalization`). A key left out is not
        known in advance (None means known to be absent); the terms that read it are then weighted
        by the batch's rows. The base class knows none."""
        return {}

    def __call__(self, batch: Any, model_outputs: Any) -> Features:
        raise NotImplementedError


class FunctionAdaptor(Adaptor):
    """A TextBrewer-style function ``adaptor(batch, model_outputs) -> dict`` as an Adaptor."""

    def __init__(self, function: Callable[[Any, Any], Mapping[str, Any]]) -> None:
        self.function = function

    def __call__(self, batch: Any, model_outputs: Any) -> Features:
        features = self.function(batch, model_outputs)
        if not isinstance(features, Mapping):
            raise TypeError(
                f"adaptor {getattr(self.function, '__name__', self.function)!r} returned "
                f"{type(features).__name__}; an adaptor must return a dict of features "
                f"with keys such as {', '.join(FEATURE_KEYS[:5])}"
            )
        return dict(features)


class FeaturesAdaptor(Adaptor):
    """For models whose forward already returns a Features mapping (registered as ``features``)."""

    def __call__(self, batch: Any, model_outputs: Any) -> Features:
        if not isinstance(model_outputs, Mapping):
            raise TypeError(
                f"the 'features' adaptor expects the model to return a dict of features, "
                f"got {type(model_outputs).__name__}; write an adaptor for this model instead"
            )
        return dict(model_outputs)


def as_adaptor(adaptor: Adaptor | Callable[[Any, Any], Mapping[str, Any]]) -> Adaptor:
    """Accept a kd Adaptor or a TextBrewer-style function."""
    return adaptor if isinstance(adaptor, Adaptor) else FunctionAdaptor(adaptor)


def call_model(model: nn.Module, batch: Any) -> Any:
    """TextBrewer's calling convention: ``model(**batch)`` for dicts, ``model(*batch)`` otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor in a nested batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_device(v, device) for v in batch)
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def batch_rows(batch: Any) -> int:
    """The number of examples in a nested batch: the first dimension of its first tensor (0 when
    it holds none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 0
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, tuple | list) else ()
    for value in values:
        rows = batch_rows(value)
        if rows:
            return rows
    return 0


def trim_padding(batch: Any) -> Any:
    """The batch without the padding columns no example uses: batches padded to a fixed length
    (``padding="max_length"``) shrink to their longest example, so every forward pass does less.

    Applies to dict batches (and tuples or lists of them) with an ``attention_mask`` [B, L] that
    pads on one side (right or left): every [B, L, ...] tensor is cut to the used columns
    (stored teacher logits at token level, [B, L, C], and over tokens, [B, R, L], on their
    token dimension). Models that respect the attention
    mask give the same outputs at every real position, so kd's losses, which read real tokens
    only, do not change. Other batches come back as they are.
    """
    if isinstance(batch, (tuple, list)):
        return type(batch)(trim_padding(item) for item in batch)
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return batch
    size, length = mask.shape
    used = mask.bool().any(0)
    width = int(used.sum())
    if width in (0, length):
        return batch
    if bool(used[:width].all()):
        columns = slice(0, width)
    elif bool(used[length - width:].all()):
        columns = slice(length - width, length)
    else:
        return batch
    trimmed = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != size:
            trimmed[key] = value
        elif key == TEACHER_LOGITS and value.dim() == 3 and value.shape[1] != length and value.shape[2] == length:
            trimmed[key] = value[:, :, columns]
        elif value.shape[1] == length and (key != TEACHER_LOGITS or value.dim() >= 3):
            trimmed[key] = value[:, columns]
        else:
            trimmed[key] = value
    return trimmed
