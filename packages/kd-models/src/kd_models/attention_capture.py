"""Per-layer queries, keys and values of Hugging Face encoders, captured with forward hooks.

The hooks sit on each self-attention block's Q/K/V linear projections, so they see the same
tensors whichever attention implementation (eager, SDPA, flash) the model runs. Only the layers
a loss plan reads get hooks, and the hooks live for one forward pass.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from kd_core.errors import ConfigError

PROJECTION_NAMES = (
    ("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, MiniLM
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ("q", "k", "v"),  # MPNet
    ("query_proj", "key_proj", "value_proj"),  # DeBERTa-v2
)
QKV = ("q", "k", "v")


@dataclass
class SelfAttention:
    """One self-attention block: its Q, K, V projections and head count."""

    projections: tuple[nn.Linear, nn.Linear, nn.Linear]
    num_heads: int


_BLOCKS: weakref.WeakKeyDictionary[nn.Module, list[SelfAttention]] = weakref.WeakKeyDictionary()


def self_attention_blocks(model: nn.Module) -> list[SelfAttention]:
    """The model's self-attention blocks in layer order, found by their projection names (once
    per model: the search walks every module, which would cost each forward pass milliseconds).

    Raises ConfigError naming the projection names it looked for when there are none.
    """
    if model not in _BLOCKS:
        _BLOCKS[model] = _find_blocks(model)
    return _BLOCKS[model]


def _find_blocks(model: nn.Module) -> list[SelfAttention]:
    config = getattr(model, "config", None)
    default_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None)
    blocks = []
    for module in model.modules():
        for names in PROJECTION_NAMES:
            layers = [getattr(module, name, None) for name in names]
            if all(isinstance(layer, nn.Linear) for layer in layers):
                heads = (getattr(module, "num_attention_heads", None) or getattr(module, "n_heads", None)
                         or default_heads)
                blocks.append(SelfAttention(tuple(layers), int(heads)))
                break
    if not blocks:
        looked_for = "; ".join("/".join(names) for names in PROJECTION_NAMES)
        raise ConfigError(
            f"{type(model).__name__} has no self-attention block with linear projections named "
            f"{looked_for}, so q, k, v and attention cannot be captured; write a custom adaptor "
            "(a kd_core.Adaptor whose run() returns these features) and register it with kd_register_adaptors")
    return blocks


@contextmanager
def capture_qkv(model: nn.Module, layers: dict[str, Iterable[int]]) -> Iterator[dict[str, list[torch.Tensor | None]]]:
    """Hook the Q/K/V projections of the requested layers for the duration of the block.

    ``layers`` maps "q", "k" or "v" to layer indices (negative ones count from the end). Yields a
    dict feature -> list over all layers, filled with [B, H, L, d] tensors where captured and None
    elsewhere, once the model has run inside the block.
    """
    blocks = self_attention_blocks(model)
    captured: dict[str, list[torch.Tensor | None]] = {}
    handles = []
    try:
        for feature, indices in layers.items():
            slots: list[torch.Tensor | None] = [None] * len(blocks)
            captured[feature] = slots
            for index in indices:
                if not -len(blocks) <= index < len(blocks):
                    raise ConfigError(f"layer {index} of {feature!r} does not exist; "
                                      f"{type(model).__name__} has {len(blocks)} attention layers")
                position = index % len(blocks)
                block = blocks[position]
                projection = block.projections[QKV.index(feature)]
                handles.append(projection.register_forward_hook(_store(slots, position, block.num_heads)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _store(slots: list[torch.Tensor | None], position: int, heads: int):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        batch, length, width = output.shape
        slots[position] = output.view(batch, length, heads, width // heads).transpose(1, 2)

    return hook


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Pre-softmax scores ``Q K^T / sqrt(d)`` [B, H, L, L], with no padding mask applied."""
    return (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention distributions ``softmax(Q K^T / sqrt(d))`` over the real keys [B, H, L, L]."""
    scores = attention_scores(q, k)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
    return scores.softmax(-1)
