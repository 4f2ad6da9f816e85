"""Extract-Then-Distill for decoder LMs of the Llama layout (Llama, Mistral, Qwen2, Qwen3): a
narrower, shallower student initialised with a subset of the teacher's weights.

What is kept, and why so:

- hidden (residual stream): one index set for every stream, the embeddings, every RMSNorm weight
  and the LM head (*hidden consistency*). In a pre-norm decoder every block adds to the one
  residual stream, so the streams cannot have index sets of their own: consistency is required.
  The tied LM head is the embedding matrix, so it stays tied.
- attention: whole key/value groups. Grouped-query attention shares each key/value head among
  ``num_attention_heads / num_key_value_heads`` query heads, and rotary embeddings rotate pairs of
  dimensions at fixed frequencies inside a head; keeping whole groups (their query heads and their
  key/value head, every dimension) keeps both exact. The student has ``num_key_value_heads``
  groups, the teacher's ``head_dim`` and the teacher's query heads per group.
- FFN: ``intermediate_size`` of each block's SwiGLU neurons (rows of ``gate_proj`` and ``up_proj``,
  columns of ``down_proj``).

Importance is random (``rand``), first-order Taylor ``|h * dL/dh|`` of the teacher's own language
modelling loss over batches of the data (``impt``: hidden scores summed over every stream, a
group's the sum over its query, key and value dimensions, a neuron's at the input of
``down_proj``), or the leading dimensions (``first``). Kept indices stay in the teacher's order,
so extraction at full shape returns the teacher itself.

Streams: ``2l`` is the input of block ``l`` (0: the embeddings' output), ``2l + 1`` the stream
after block ``l``'s attention, ``2L`` the input of the final norm.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kd_core.errors import ConfigError
from kd_models.extraction import (
    METHODS,
    Importance,
    LayerSelection,
    Method,
    _Chooser,
    _load_every_parameter,
    _slice,
    select_layers,
    taylor_importance,
)
from kd_models.students import transformer_student

DECODER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
"""model_type of the decoder families whose width ETD can extract (they share Llama's module names)."""

_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class DecoderShape:
    """The sizes extraction reads from a decoder's config."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    @classmethod
    def of(cls, model: nn.Module) -> DecoderShape:
        """The shape of ``model`` (a ConfigError for a family decoder extraction does not know);
        ``head_dim`` from the config, or ``hidden_size / num_attention_heads`` where it has none."""
        config = model.config
        if getattr(config, "model_type", None) not in DECODER_FAMILIES:
            raise ConfigError(f"cannot extract the width of {type(model).__name__} (model_type "
                              f"{getattr(config, 'model_type', None)!r}); decoder extraction knows "
                              f"{', '.join(DECODER_FAMILIES)}")
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(int(config.num_hidden_layers), int(config.hidden_size), int(config.intermediate_size), heads,
                   kv_heads, head_dim)


def is_extractable_decoder(model: nn.Module) -> bool:
    """Whether ``model`` is a decoder whose width this module extracts."""
    return getattr(getattr(model, "config", None), "model_type", None) in DECODER_FAMILIES


@contextmanager
def record_decoder_activations(model: nn.Module, sink: list[tuple[tuple[str, int], torch.Tensor]]) -> Iterator[None]:
    """Record, in ``sink``, the activations whose Taylor scores rank each role (see the module's
    docstring): every stream at the input of its norm, each block's q/k/v outputs and the input of
    its ``down_proj``."""
    def before(role: tuple[str, int]) -> Callable[..., None]:
        return lambda module, inputs: sink.append((role, inputs[0]))

    def after(role: tuple[str, int]) -> Callable[..., None]:
        return lambda module, inputs, output: sink.append((role, output))

    blocks = model.model.layers
    handles = []
    for layer, block in enumerate(blocks):
        handles.append(block.input_layernorm.register_forward_pre_hook(before(("hidden", 2 * layer))))
        handles.append(block.post_attention_layernorm.register_forward_pre_hook(before(("hidden", 2 * layer + 1))))
        handles += [getattr(block.self_attn, name).register_forward_hook(after((name, layer)))
                    for name in ("q_proj", "k_proj", "v_proj")]
        handles.append(block.mlp.down_proj.register_forward_pre_hook(before(("ffn", layer))))
    handles.append(model.model.norm.register_forward_pre_hook(before(("hidden", 2 * len(blocks)))))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _group_scores(importance: Importance, layer: int, shape: DecoderShape) -> torch.Tensor:
    """Each key/value group's score: its query heads' dimensions, and its key and value head's."""
    queries = importance.scores[("q_proj", layer)].view(shape.kv_heads, shape.group * shape.head_dim).sum(-1)
    keys, values = (importance.scores[(name, layer)].view(shape.kv_heads, shape.head_dim).sum(-1)
                    for name in ("k_proj", "v_proj"))
    return queries + keys + values


@dataclass
class DecoderSelection:
    """The teacher's kept layers, hidden dimensions, key/value groups per layer and FFN neurons per layer."""

    layers: list[int]
    hidden: torch.Tensor
    groups: dict[int, torch.Tensor]
    ffn: dict[int, torch.Tensor]

    def query_rows(self, layer: int, shape: DecoderShape) -> torch.Tensor:
        """The rows of ``q_proj`` (columns of ``o_proj``) of the kept groups' query heads."""
        per_group = shape.group * shape.head_dim
        return torch.cat([torch.arange(g * per_group, (g + 1) * per_group) for g in self.groups[layer].tolist()])

    def kv_rows(self, layer: int, shape: DecoderShape) -> torch.Tensor:
        """The rows of ``k_proj`` and ``v_proj`` of the kept groups."""
        return torch.cat([torch.arange(g * shape.head_dim, (g + 1) * shape.head_dim)
                          for g in self.groups[layer].tolist()])


def plan_decoder_selection(shape: DecoderShape, layers: list[int], hidden_size: int, intermediate_size: int,
                           kv_heads: int, method: Method, importance: Importance | None,
                           seed: int) -> DecoderSelection:
    """Choose the kept dimensions, groups and neurons."""
    chooser = _Chooser(method, importance, seed)
    hidden = chooser.pick(shape.hidden, hidden_size, chooser.score(("hidden", -1)))
    groups, ffn = {}, {}
    for layer in layers:
        groups[layer] = chooser.pick(shape.kv_heads, kv_heads,
                                     None if importance is None else _group_scores(importance, layer, shape))
        ffn[layer] = chooser.pick(shape.ffn, intermediate_size, chooser.score(("ffn", layer)))
    return DecoderSelection(layers, hidden, groups, ffn)


def _slices(selection: DecoderSelection, shape: DecoderShape, layer: int,
            inner: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rows, columns) kept of the parameter ``inner`` of block ``layer`` (``self_attn.q_proj.weight``, ...)."""
    module, _, kind = inner.rpartition(".")
    hidden = selection.hidden
    rows_and_columns: dict[str, Callable[[], tuple[torch.Tensor | None, torch.Tensor | None]]] = {
        "self_attn.q_proj": lambda: (selection.query_rows(layer, shape), hidden),
        "self_attn.k_proj": lambda: (selection.kv_rows(layer, shape), hidden),
        "self_attn.v_proj": lambda: (selection.kv_rows(layer, shape), hidden),
        "self_attn.o_proj": lambda: (hidden, selection.query_rows(layer, shape)),
        "self_attn.q_norm": lambda: (None, None),  # Qwen3's per-head norms run over head_dim, kept whole
        "self_attn.k_norm": lambda: (None, None),
        "mlp.gate_proj": lambda: (selection.ffn[layer], hidden),
        "mlp.up_proj": lambda: (selection.ffn[layer], hidden),
        "mlp.down_proj": lambda: (hidden, selection.ffn[layer]),
        "input_layernorm": lambda: (hidden, None),
        "post_attention_layernorm": lambda: (hidden, None),
    }
    if module not in rows_and_columns:
        raise ConfigError(f"cannot extract model.layers.{layer}.{inner}: it is not a part of the Llama layout that "
                          "decoder extraction knows how to slice")
    rows, columns = rows_and_columns[module]()
    return rows, (columns if kind == "weight" else None)


def build_extracted_decoder(teacher: nn.Module, selection: DecoderSelection, hidden_size: int,
                            intermediate_size: int, kv_heads: int) -> nn.Module:
    """A decoder of the teacher's class with the selected layers, groups and dimensions of its weights."""
    shape = DecoderShape.of(teacher)
    heads = kv_heads * shape.group
    settings = {"num_hidden_layers": len(selection.layers), "hidden_size": hidden_size,
                "intermediate_size": intermediate_size, "num_attention_heads": heads, "num_key_value_heads": kv_heads}
    if getattr(teacher.config, "head_dim", None) is not None:
        settings["head_dim"] = shape.head_dim
    elif hidden_size != heads * shape.head_dim:
        raise ConfigError(f"{type(teacher.config).__name__} derives head_dim from hidden_size / num_attention_heads, "
                          f"so a student keeping {kv_heads} key/value groups of {shape.group} heads of "
                          f"{shape.head_dim} dimensions has hidden_size {heads * shape.head_dim}, not {hidden_size}")
    if isinstance(getattr(teacher.config, "layer_types", None), list):
        settings["layer_types"] = [teacher.config.layer_types[layer] for layer in selection.layers]
    student = transformer_student(teacher, **settings)
    student.to(next(teacher.parameters()).device)
    renumber = {teacher_layer: i for i, teacher_layer in enumerate(selection.layers)}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in teacher.state_dict().items():
        block = _BLOCK.match(name)
        if block is not None:
            layer, inner = int(block.group(1)), block.group(2)
            if layer not in renumber:
                continue
            rows, columns = _slices(selection, shape, layer, inner)
            state[f"model.layers.{renumber[layer]}.{inner}"] = _slice(tensor, rows, columns)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            state[name] = _slice(tensor, None, selection.hidden)
        elif name == "model.norm.weight":
            state[name] = _slice(tensor, selection.hidden, None)
        elif name.startswith("model.rotary_emb."):
            continue  # buffers the student computes from its config (the head_dim is the teacher's)
        else:
            raise ConfigError(f"cannot extract {type(teacher).__name__}: {name} is not a part of the Llama layout "
                              "that decoder extraction knows how to slice")
    return _load_every_parameter(student, state, "decoder extraction")


def extract_decoder(teacher: nn.Module, num_layers: int, hidden_size: int | None = None,
                    intermediate_size: int | None = None, kv_heads: int | None = None, method: Method = "rand",
                    layer_selection: LayerSelection = "uniform", dataloader: Iterable[Any] | None = None,
                    num_batches: int | None = None, seed: int = 0, progress: bool = True) -> nn.Module:
    """A decoder student of the teacher's class initialised from the teacher's weights (ETD for
    the Llama layout; see the module's docstring). Sizes default to the teacher's; ``kv_heads``
    is the number of key/value groups kept. ``method``: ``rand`` (seeded), ``impt`` (Taylor
    importance of the teacher's language-modelling loss over ``num_batches`` of ``dataloader``,
    batches with ``labels``) or ``first``."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    shape = DecoderShape.of(teacher)
    hidden_size = shape.hidden if hidden_size is None else int(hidden_size)
    intermediate_size = shape.ffn if intermediate_size is None else int(intermediate_size)
    kv_heads = shape.kv_heads if kv_heads is None else int(kv_heads)
    for what, value, most in (("hidden_size", hidden_size, shape.hidden), ("intermediate_size", intermediate_size,
                              shape.ffn), ("num_key_value_heads", kv_heads, shape.kv_heads)):
        if not 0 < value <= most:
            raise ConfigError(f"{what} {value} must be between 1 and the teacher's {most}")
    layers = select_layers(shape.layers, num_layers, layer_selection)
    importance = None
    if method == "impt":
        if dataloader is None:
            raise ConfigError("method 'impt' needs a dataloader of batches for the Taylor importance")
        importance = taylor_importance(teacher, dataloader, num_batches, progress=progress,
                                       record=record_decoder_activations)
    selection = plan_decoder_selection(shape, layers, hidden_size, intermediate_size, kv_heads, method, importance,
                                       seed)
    return build_extracted_decoder(teacher, selection, hidden_size, intermediate_size, kv_heads)
