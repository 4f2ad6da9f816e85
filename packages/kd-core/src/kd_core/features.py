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

Where the loss plan asks for :data:`LINEAR_LOGITS` (``distillation.fused_linear``), an adaptor
that can gives ``logits`` as :class:`LinearLogits`: the last hidden states and the LM head that
would make them, so that no ``[N, V]`` logits tensor exists in training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

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


LINEAR_LOGITS = "linear_logits"
"""The need (a :class:`FeatureNeeds` key) for ``logits`` given as :class:`LinearLogits`."""

CROSS_ENTROPY_CHUNK_ELEMENTS = 2**22
"""Logits per chunk of :meth:`LinearLogits.cross_entropy` (16 MiB of fp32; kd_kernels' losses,
which kd-core does not import, use chunks of the same size)."""


@dataclass(frozen=True, eq=False)
class LinearLogits:
    """Logits ``hidden @ weight.T + bias`` that are never made whole: a decoder LM's last hidden
    states ``[..., d]`` and its LM head (``weight`` [V, d], ``bias`` [V] or None).

    Over a vocabulary of 49k to 256k tokens the logits of a batch are its largest tensor, and
    their gradient another as large; kd's token-level losses take this form instead and make each
    chunk of rows' logits themselves (``kd_kernels.fused_linear``; :meth:`cross_entropy` for the
    language-modelling loss), so that a loss holds O(chunk x V) at a time. ``shape`` and ``dim``
    are those of the logits it stands for.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.weight.shape[0]))

    def dim(self) -> int:
        return self.hidden.dim()

    def detach(self) -> LinearLogits:
        """The same logits cut from the graph (a teacher's side)."""
        return LinearLogits(self.hidden.detach(), self.weight.detach(),
                            None if self.bias is None else self.bias.detach())

    def materialize(self) -> torch.Tensor:
        """The whole logits tensor (for evaluation and tests, not for training over a vocabulary)."""
        return F.linear(self.hidden, self.weight, self.bias)

    def cross_entropy(self, labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
        """The mean cross-entropy of the rows whose label (``[...]``, the logits' leading shape) is
        not -100, as ``F.cross_entropy`` of the whole logits gives it, computed ``chunk_rows`` rows
        at a time (default: about :data:`CROSS_ENTROPY_CHUNK_ELEMENTS` logits a chunk); each
        chunk's logits are made again in the backward (activation checkpointing) instead of kept."""
        vocabulary = self.weight.shape[0]
        if labels.shape != self.shape[:-1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(self.shape)}")
        rows = chunk_rows or max(1, CROSS_ENTROPY_CHUNK_ELEMENTS // vocabulary)
        if rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        flat = labels.reshape(-1).long()
        labelled = flat != -100
        hidden, flat = self.hidden.reshape(-1, self.hidden.shape[-1])[labelled], flat[labelled]
        if not len(flat):
            return sum(x.sum() * 0.0 for x in (self.hidden, self.weight, self.bias) if x is not None)
        total = sum(checkpoint(_cross_entropy_sum, piece, self.weight, self.bias, targets, use_reentrant=False,
                               preserve_rng_state=False)
                    for piece, targets in zip(hidden.split(rows), flat.split(rows), strict=True))
        return total / len(flat)


def takes_linear_logits(loss: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a logit loss that computes itself from :class:`LinearLogits` on both sides (without
    making the logits), so ``distillation.fused_linear`` may use it."""
    loss.kd_linear_logits = True  # type: ignore[attr-defined]
    return loss


def accepts_linear_logits(loss: Callable[..., Any]) -> bool:
    """Whether ``loss`` is marked by :func:`takes_linear_logits`."""
    return bool(getattr(loss, "kd_linear_logits", False))


def _cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="sum")


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
