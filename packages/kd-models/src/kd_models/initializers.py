"""Student initializers, registered under ``initializers``:
``init(teacher, student, data=None, **options) -> student``.

The ``student`` passed in gives the target shape (depth, width, FFN width; for encoders the head
count must be the teacher's, for decoders of the Llama layout the number of key/value groups may
shrink); the initializer returns a model of that shape whose weights come from the teacher:

- ``layer_copy``: the teacher's layers at full width (DistilBERT's initialisation), for
  encoders and causal LMs;
- ``etd_rand``: ETD with randomly chosen dimensions;
- ``etd_impt``: ETD with the most important dimensions by first-order Taylor importance, measured
  on ``num_batches`` batches of ``data`` (the recipe passes its training data).

Both ETD initializers extract encoders (:mod:`kd_models.extraction`) and Llama, Mistral, Qwen2
and Qwen3 decoders (:mod:`kd_models.decoder_extraction`: hidden consistency required, whole
key/value groups, SwiGLU neurons).

``options``: ``layer_selection`` (``uniform``, ``top``, ``bottom`` or a list of indices),
``hidden_consistency`` (False for the paper's ablation), ``seed`` (``etd_rand``), ``num_batches``
(``etd_impt``, default 16).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from kd_core.errors import ConfigError
from kd_models.decoder_extraction import DecoderShape, extract_decoder, is_extractable_decoder
from kd_models.extraction import LayerSelection, Method, copy_layers, extract_student, select_layers
from kd_models.layouts import depth_of, shape_of

DEFAULT_IMPORTANCE_BATCHES = 16


def _target_shape(teacher: nn.Module, student: nn.Module, initializer: str) -> tuple[int, int, int]:
    if type(student) is not type(teacher):
        raise ConfigError(f"student.init {initializer!r} copies weights from the teacher, so the student must be a "
                          f"{type(teacher).__name__} like it, not a {type(student).__name__}")
    layers, width, ffn, heads = shape_of(student)
    teacher_heads = shape_of(teacher)[3]
    if heads != teacher_heads:
        raise ConfigError(f"student.init {initializer!r} keeps the teacher's {teacher_heads} attention heads; the "
                          f"student has {heads}. Set the student's head count to {teacher_heads}")
    return layers, width, ffn


def _extract_decoder(teacher: nn.Module, student: nn.Module, name: str, method: Method, data: Iterable[Any] | None,
                     layer_selection: LayerSelection, hidden_consistency: bool, seed: int,
                     num_batches: int | None) -> nn.Module:
    if type(student) is not type(teacher):
        raise ConfigError(f"student.init {name!r} copies weights from the teacher, so the student must be a "
                          f"{type(teacher).__name__} like it, not a {type(student).__name__}")
    if not hidden_consistency:
        raise ConfigError(f"student.init {name!r}: a decoder's blocks all add to one residual stream, so its hidden "
                          "dimensions are chosen once for every stream; leave hidden_consistency on")
    wanted, shape = DecoderShape.of(student), DecoderShape.of(teacher)
    if wanted.head_dim != shape.head_dim or wanted.group != shape.group or wanted.heads % wanted.kv_heads:
        raise ConfigError(f"student.init {name!r} keeps whole key/value groups of the teacher ({shape.group} query "
                          f"heads of {shape.head_dim} dimensions each); the student has {wanted.heads} heads, "
                          f"{wanted.kv_heads} key/value heads and head_dim {wanted.head_dim}. Set "
                          f"num_key_value_heads: G, num_attention_heads: {shape.group} x G and head_dim: "
                          f"{shape.head_dim} (where the config has no head_dim, hidden_size: {shape.group} x G x "
                          f"{shape.head_dim})")
    return extract_decoder(teacher, wanted.layers, wanted.hidden, wanted.ffn, wanted.kv_heads, method=method,
                           layer_selection=layer_selection, dataloader=data, num_batches=num_batches, seed=seed)


def _extract(teacher: nn.Module, student: nn.Module, name: str, method: Method, data: Iterable[Any] | None,
             layer_selection: LayerSelection, hidden_consistency: bool, seed: int,
             num_batches: int | None) -> nn.Module:
    if is_extractable_decoder(teacher):
        return _extract_decoder(teacher, student, name, method, data, layer_selection, hidden_consistency, seed,
                                num_batches)
    layers, width, ffn = _target_shape(teacher, student, name)
    return extract_student(teacher, layers, width, ffn, method=method, layer_selection=layer_selection,
                           dataloader=data, num_batches=num_batches, hidden_consistency=hidden_consistency,
                           seed=seed)


def layer_copy(teacher: nn.Module, student: nn.Module, data: Iterable[Any] | None = None,
               layer_selection: LayerSelection = "uniform") -> nn.Module:
    """Copy a selection of the teacher's layers at full width (DistilBERT, Sanh et al. 2019), for
    encoders and causal LMs (:data:`~kd_models.layouts.DECODER_STACKS`)."""
    return copy_layers(teacher, student, select_layers(depth_of(teacher), depth_of(student), layer_selection))


def etd_rand(teacher: nn.Module, student: nn.Module, data: Iterable[Any] | None = None,
             layer_selection: LayerSelection = "uniform", hidden_consistency: bool = True,
             seed: int = 0) -> nn.Module:
    """ETD-Rand: randomly chosen hidden, head and FFN dimensions of the teacher (seeded)."""
    return _extract(teacher, student, "etd_rand", "rand", None, layer_selection, hidden_consistency, seed, None)


def etd_impt(teacher: nn.Module, student: nn.Module, data: Iterable[Any] | None = None,
             layer_selection: LayerSelection = "uniform", hidden_consistency: bool = True,
             num_batches: int = DEFAULT_IMPORTANCE_BATCHES) -> nn.Module:
    """ETD-Impt: the teacher's most important dimensions by Taylor importance over ``data``."""
    if data is None:
        raise ConfigError("student.init 'etd_impt' needs batches of the training data to measure importance; in "
                          "Python pass data=a DataLoader (kd distill passes the recipe's training data)")
    return _extract(teacher, student, "etd_impt", "impt", data, layer_selection, hidden_consistency, 0, num_batches)
