"""Where the parts of a Transformer live, per Hugging Face model family.

Layer selection needs only where a family keeps its blocks (a :class:`Stack`: every family here,
encoders and decoders). Extraction (:mod:`kd_models.extraction`) slices a teacher's weights along three kinds of
dimension: the hidden (residual-stream) dimension, the neurons inside the attention heads of a
layer, and the FFN neurons of a layer. A :class:`Layout` says which modules carry which of them,
so one extraction routine serves every family listed in :data:`LAYOUTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from kd_core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Stack:
    """Where a model family keeps its Transformer blocks: ``layers``, the ModuleList of blocks
    relative to the model's base model, and ``layers_key``, the config field of its depth. Enough
    to select whole layers (:func:`kd_models.extraction.copy_layers`) of any family."""

    layers: str
    layers_key: str = "num_hidden_layers"


@dataclass(frozen=True, kw_only=True)
class Layout(Stack):
    """Module paths of one encoder family, relative to the model's base model (``model.bert``, ...).

    ``layers`` is the ModuleList of blocks; the other paths are relative to one block. The
    ``*_key`` fields name the config fields that hold the depth, width, FFN width and head count;
    ``width_keys`` are further config fields that must equal the width (ELECTRA's ``embedding_size``).
    """

    query: str
    key: str
    value: str
    attention_output: str
    attention_norm: str
    ffn_input: str
    ffn_output: str
    output_norm: str
    embedding_norm: str
    hidden_key: str = "hidden_size"
    ffn_key: str = "intermediate_size"
    heads_key: str = "num_attention_heads"
    width_keys: tuple[str, ...] = ()

    def settings(self, layers: int, hidden: int, ffn: int, heads: int | None = None) -> dict[str, int]:
        """Config fields that give a model of this family the shape depth x width (FFN ``ffn``,
        ``heads`` attention heads when given)."""
        fields = {self.layers_key: layers, self.hidden_key: hidden, self.ffn_key: ffn}
        fields.update(dict.fromkeys(self.width_keys, hidden))
        if heads is not None:
            fields[self.heads_key] = heads
        return fields


BERT_LAYOUT = Layout(
    layers="encoder.layer", query="attention.self.query", key="attention.self.key", value="attention.self.value",
    attention_output="attention.output.dense", attention_norm="attention.output.LayerNorm",
    ffn_input="intermediate.dense", ffn_output="output.dense", output_norm="output.LayerNorm",
    embedding_norm="embeddings.LayerNorm",
)
DISTILBERT_LAYOUT = Layout(
    layers="transformer.layer", query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
    attention_output="attention.out_lin", attention_norm="sa_layer_norm", ffn_input="ffn.lin1",
    ffn_output="ffn.lin2", output_norm="output_layer_norm", embedding_norm="embeddings.LayerNorm",
    layers_key="n_layers", hidden_key="dim", ffn_key="hidden_dim", heads_key="n_heads",
)
LAYOUTS: dict[str, Layout] = {
    "bert": BERT_LAYOUT,
    "roberta": BERT_LAYOUT,
    "xlm-roberta": BERT_LAYOUT,
    "camembert": BERT_LAYOUT,
    "electra": replace(BERT_LAYOUT, width_keys=("embedding_size",)),
    "distilbert": DISTILBERT_LAYOUT,
}
"""model_type -> layout, for the families whose weights kd can extract and whose layers it can select."""
DECODER_STACKS: dict[str, Stack] = {
    "llama": Stack(layers="layers"),
    "mistral": Stack(layers="layers"),
    "qwen2": Stack(layers="layers"),
    "qwen3": Stack(layers="layers"),
    "gemma": Stack(layers="layers"),
    "gpt2": Stack(layers="h", layers_key="n_layer"),
}
"""model_type -> stack, for the causal-LM families whose layers kd can select (``layer_copy``)."""


def layout_of(model: nn.Module) -> Layout:
    """The layout of a Hugging Face model, or a ConfigError naming the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise ConfigError(
            f"cannot extract a student from {type(model).__name__} (model_type {model_type!r}); "
            f"extraction knows the encoder layouts of {', '.join(sorted(LAYOUTS))}. For another family, add a "
            "kd_models.layouts.Layout for it to LAYOUTS")
    return LAYOUTS[model_type]


def shape_of(model: nn.Module) -> tuple[int, int, int, int]:
    """``(num_layers, hidden_size, intermediate_size, num_heads)`` from the model's config."""
    layout, config = layout_of(model), model.config
    return tuple(int(getattr(config, key)) for key in  # type: ignore[return-value]
                 (layout.layers_key, layout.hidden_key, layout.ffn_key, layout.heads_key))


def stack_of(model: nn.Module) -> Stack:
    """Where the model keeps its blocks (any family of :data:`LAYOUTS` or :data:`DECODER_STACKS`),
    or a ConfigError naming the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    stack = LAYOUTS.get(model_type) or DECODER_STACKS.get(model_type)
    if stack is None:
        raise ConfigError(f"cannot select layers of {type(model).__name__} (model_type {model_type!r}); kd knows the "
                          f"blocks of {', '.join(sorted({*LAYOUTS, *DECODER_STACKS}))}. For another family, add a "
                          "kd_models.layouts.Stack for it to DECODER_STACKS")
    return stack


def depth_of(model: nn.Module) -> int:
    """The model's number of Transformer blocks, from its config."""
    return int(getattr(model.config, stack_of(model).layers_key))


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's ModuleList of Transformer blocks."""
    return model.base_model.get_submodule(stack_of(model).layers)
