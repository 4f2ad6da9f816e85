"""Student builders and presets, registered under ``students``: ``builder(teacher, **overrides) -> model``.

- ``T6``, ``T3``, ``T3-small``, ``T4-tiny``: TextBrewer's Table 3 shapes, built from the teacher's
  config (so the vocabulary, tokenizer and label count stay the teacher's) and of its class;
- ``bilstm``, ``bigru``: Tang et al.'s recurrent students with the teacher's word embeddings.

A recipe's ``student.config`` overrides a preset's fields (``{preset: T4-tiny, config: {num_hidden_layers: 2}}``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from kd_core.errors import ConfigError
from kd_models.layouts import BERT_LAYOUT, LAYOUTS
from kd_models.rnn import BiRNNConfig, BiRNNForSequenceClassification, BiRNNForTokenClassification

TRANSFORMER_PRESETS: dict[str, dict[str, int]] = {
    # TextBrewer, Table 3: layers, hidden size, FFN size, heads
    "T6": {"layers": 6, "hidden": 768, "ffn": 3072, "heads": 12},
    "T3": {"layers": 3, "hidden": 768, "ffn": 3072, "heads": 12},
    "T3-small": {"layers": 3, "hidden": 384, "ffn": 1536, "heads": 12},
    "T4-tiny": {"layers": 4, "hidden": 312, "ffn": 1200, "heads": 12},
}


def transformer_student(teacher: nn.Module, **overrides: Any) -> nn.Module:
    """A randomly initialised model of the teacher's class whose config is the teacher's with
    ``overrides`` (so the vocabulary, tokenizer and labels stay the teacher's)."""
    config = copy.deepcopy(teacher.config)
    unknown = [k for k in overrides if not hasattr(config, k)]
    if unknown:
        raise ConfigError(f"student.config: not fields of the teacher's {type(config).__name__}: "
                          f"{', '.join(unknown)}")
    for key, value in overrides.items():
        setattr(config, key, value)
    _fit_layer_types(config, teacher.config, overrides)
    return type(teacher)(config)


def _fit_layer_types(config: Any, teacher_config: Any, overrides: dict[str, Any]) -> None:
    """Give a shallower student one ``layer_types`` entry per layer (Qwen2, Qwen3 and other configs
    that list each layer's attention kind, which must match the depth to save): the teacher's
    kind where every layer has the same; a teacher that mixes kinds needs them named."""
    kinds = getattr(teacher_config, "layer_types", None)
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(kinds, list) or "layer_types" in overrides or layers is None or len(kinds) == layers:
        return
    if len(set(kinds)) > 1:
        raise ConfigError(f"the teacher's layers mix attention kinds ({', '.join(sorted(set(kinds)))}); give the "
                          f"student's {layers} in student.config.layer_types, or use an initializer that selects "
                          "layers (it takes the kinds of the layers it keeps)")
    config.layer_types = [kinds[0]] * layers


def _preset(name: str):
    shape = TRANSFORMER_PRESETS[name]

    def build(teacher: nn.Module, **overrides: Any) -> nn.Module:
        layout = LAYOUTS.get(teacher.config.model_type, BERT_LAYOUT)
        settings = layout.settings(shape["layers"], shape["hidden"], shape["ffn"], shape["heads"])
        return transformer_student(teacher, **{**settings, **overrides})

    build.__doc__ = f"TextBrewer's {name} student ({shape}) of the teacher's class."
    build.__name__ = f"preset_{name.replace('-', '_')}"
    return build


PRESET_BUILDERS = {name: _preset(name) for name in TRANSFORMER_PRESETS}


def is_token_classifier(model: nn.Module) -> bool:
    """Whether ``model`` predicts one label per token (a ``*ForTokenClassification`` model)."""
    return type(model).__name__.endswith("ForTokenClassification")


def rnn_student(teacher: nn.Module, cell: str, **overrides: Any) -> nn.Module:
    """A BiLSTM/BiGRU student whose word embeddings are copied from the teacher's.

    ``overrides`` set :class:`~kd_models.rnn.BiRNNConfig` fields (``hidden_size``,
    ``freeze_embeddings``, ``pooling``, ...). The head matches the teacher's: token classification
    for a token-classification teacher, sequence classification otherwise.
    """
    embeddings = teacher.get_input_embeddings().weight.detach()
    settings = {"vocab_size": embeddings.shape[0], "embedding_size": embeddings.shape[1], "cell": cell,
                "num_labels": teacher.config.num_labels, "pad_token_id": teacher.config.pad_token_id or 0,
                "id2label": teacher.config.id2label, "label2id": teacher.config.label2id}
    unknown = [k for k in overrides if k not in BiRNNConfig().to_dict() or k in ("vocab_size", "embedding_size")]
    if unknown:
        raise ConfigError(f"student: {', '.join(unknown)} cannot be set on a {cell} student; it takes hidden_size, "
                          "num_layers, pooling, classifier_size, dropout, freeze_embeddings")
    config = BiRNNConfig(**{**settings, **overrides})
    model_class = BiRNNForTokenClassification if is_token_classifier(teacher) else BiRNNForSequenceClassification
    student = model_class(config)
    with torch.no_grad():
        student.encoder.embeddings.weight.copy_(embeddings)
    return student


def bilstm(teacher: nn.Module, **overrides: Any) -> nn.Module:
    """Tang et al.'s BiLSTM student with the teacher's word embeddings."""
    return rnn_student(teacher, "lstm", **overrides)


def bigru(teacher: nn.Module, **overrides: Any) -> nn.Module:
    """A BiGRU student with the teacher's word embeddings."""
    return rnn_student(teacher, "gru", **overrides)
