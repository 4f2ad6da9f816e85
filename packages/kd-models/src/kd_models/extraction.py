"""Students born from the teacher: width-wise extraction and layer selection (Extract-Then-Distill).

ETD (Chen et al. 2021, "Extract then Distill: Efficient and Effective Task-Agnostic BERT
Distillation") initialises a narrower, shallower student with a subset of the teacher's weights:

- FFN: keep ``intermediate_size`` of each layer's FFN neurons (rows of the FFN input projection,
  columns of its output projection);
- attention: keep the head count and ``hidden_size / heads`` of the neurons inside every head, one
  index set per head shared by Q, K and V (so the kept Q and K dimensions still form dot products);
- hidden (residual stream): under *hidden consistency* one index set of ``hidden_size`` dimensions
  for the embeddings, every LayerNorm, every residual stream, the pooler and the task head.

Importance is random (``rand``), first-order Taylor ``|h * dL/dh|`` accumulated over batches of the
task's data (``impt``; hidden importance summed over every stream), or the leading dimensions
(``first``). The loss L is the teacher's own: its task loss on labelled batches, its masked-LM
loss on masked ones (the paper's pre-training loss), and on unlabelled text for an encoder
without such a head the unsupervised contrastive loss of its sentence embeddings (see
:func:`contrastive_loss`). Layers are then selected uniformly, from the top or bottom, or by index. Kept indices
stay in the teacher's order, so extraction at full width and depth returns the teacher itself.

Streams are numbered as they appear in the teacher: 0 = the embeddings' LayerNorm, ``2l + 1`` =
layer ``l``'s attention LayerNorm, ``2l + 2`` = layer ``l``'s output LayerNorm. Turning hidden
consistency off (the paper's ablation) gives each stream its own index set.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from kd_core.errors import ConfigError
from kd_core.features import to_device
from kd_models.layouts import Layout, encoder_blocks, layout_of, shape_of, stack_of
from kd_models.students import transformer_student

Method = Literal["rand", "impt", "first"]
LayerSelection = Literal["uniform", "top", "bottom"] | Sequence[int]
Role = tuple[str, int] | None  # ("hidden", stream) | ("heads", layer) | ("ffn", layer) | None (kept whole)
METHODS = ("rand", "impt", "first")


def select_layers(num_teacher_layers: int, num_layers: int, how: LayerSelection = "uniform") -> list[int]:
    """Which teacher layers (0-based) a ``num_layers`` student keeps.

    ``uniform`` takes every (T/S)-th layer ending with the last (6 -> 3 gives [1, 3, 5]), ``top`` the
    last ``num_layers``, ``bottom`` the first ones; a list of strictly increasing indices is used as is.
    """
    if not 1 <= num_layers <= num_teacher_layers:
        raise ConfigError(f"num_layers must be between 1 and the teacher's {num_teacher_layers} layers, "
                          f"got {num_layers}")
    if isinstance(how, str):
        if how == "uniform":
            return [math.floor((i + 1) * num_teacher_layers / num_layers + 0.5) - 1 for i in range(num_layers)]
        if how == "top":
            return list(range(num_teacher_layers - num_layers, num_teacher_layers))
        if how == "bottom":
            return list(range(num_layers))
        raise ConfigError(f"layer_selection must be 'uniform', 'top', 'bottom' or a list of layer indices, "
                          f"got {how!r}")
    layers = [int(i) for i in how]
    if (len(layers) != num_layers or any(b <= a for a, b in itertools.pairwise(layers))
            or not all(0 <= i < num_teacher_layers for i in layers)):
        raise ConfigError(f"layer_selection {layers} must list {num_layers} strictly increasing indices "
                          f"in 0..{num_teacher_layers - 1}")
    return layers


@dataclass
class Importance:
    """Accumulated Taylor scores ``sum |h * dL/dh|`` per dimension of each role."""

    scores: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    batches: int = 0

    def add(self, role: tuple[str, int], activation: torch.Tensor, grad: torch.Tensor) -> None:
        score = (activation.detach() * grad).abs().flatten(0, -2).sum(0).double()
        self.scores[role] = self.scores[role] + score if role in self.scores else score

    def hidden_total(self) -> torch.Tensor:
        """Hidden importance summed over every stream (the score under hidden consistency)."""
        return sum(v for (kind, _), v in self.scores.items() if kind == "hidden")


@contextmanager
def _trainable(model: nn.Module) -> Iterator[None]:
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


CONTRASTIVE_TEMPERATURE = 0.05
"""SimCSE's temperature for the cosine similarities of the contrastive importance loss."""


def contrastive_loss(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """Unsupervised SimCSE (Gao et al. 2021) on a batch of unlabelled text: each sequence's
    mean-pooled last hidden state in two forward passes with dropout on must be closer to its other
    view than to the other sequences' (cross-entropy over cosine similarities at
    :data:`CONTRASTIVE_TEMPERATURE`).

    It is the importance loss for an encoder with no task or masked-LM head, such as a
    sentence-embedding model (all-MiniLM-L6-v2 was trained with this kind of contrastive loss on
    sentence pairs): ETD scores neurons by their effect on the teacher's own pre-training loss, and
    this is that loss without the pairs.
    """
    if inputs["input_ids"].shape[0] < 2:
        raise ConfigError("the contrastive importance loss compares the sequences of a batch: give batches of at "
                          "least 2 (training.batch_size)")
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(inputs["input_ids"]) if mask is None else mask
    was_training = model.training
    model.train()  # dropout makes the two views
    try:
        views = []
        for _ in range(2):
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
            views.append(torch.nn.functional.normalize(pooled, dim=-1))
    finally:
        model.train(was_training)
    similarity = views[0] @ views[1].T / CONTRASTIVE_TEMPERATURE
    return torch.nn.functional.cross_entropy(similarity, torch.arange(similarity.shape[0], device=similarity.device))


def importance_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The loss Taylor importance differentiates: the model's own (task or masked-LM) loss when the
    batch has ``labels``, else :func:`contrastive_loss`."""
    inputs = _forward_inputs(model, batch)
    if batch.get("labels") is not None:
        loss = getattr(model(**inputs), "loss", None)
        if loss is None:
            raise ConfigError(f"{type(model).__name__} computes no loss from the batch's labels; Taylor importance "
                              "needs the teacher's own loss")
        return loss
    return contrastive_loss(model, {k: v for k, v in inputs.items() if k != "labels"})


Recorder = Callable[[nn.Module, list[tuple[tuple[str, int], torch.Tensor]]], AbstractContextManager[None]]
"""Registers hooks that append ``(role, activation)`` to a list while its context is open."""


def record_encoder_activations(model: nn.Module,
                               sink: list[tuple[tuple[str, int], torch.Tensor]]) -> AbstractContextManager[None]:
    """The encoder layout's recorder: every stream after its LayerNorm, Q/K/V outputs, FFN neurons."""
    return _record_activations(model, layout_of(model), sink)


def taylor_importance(model: nn.Module, dataloader: Iterable[Any], num_batches: int | None = None,
                      progress: bool = True, record: Recorder = record_encoder_activations) -> Importance:
    """First-order Taylor importance of every dimension ``record`` captures in ``model`` (by default
    an encoder's hidden, attention and FFN dimensions).

    Each batch (a dict of model inputs) runs forward in eval mode; :func:`importance_loss` is
    differentiated with respect to the activations only (no parameter ``.grad`` is written), and
    ``|h * dL/dh|`` is summed over examples and tokens (over both views of the contrastive loss).
    """
    device = next(model.parameters()).device
    importance = Importance()
    length = _length(dataloader)
    total = length if num_batches is None else min(num_batches, length or num_batches)
    with _trainable(model):
        batches = dataloader if num_batches is None else itertools.islice(dataloader, num_batches)
        for batch in tqdm(batches, total=total, desc="ETD importance", disable=not progress):
            if not isinstance(batch, dict) or "input_ids" not in batch:
                raise ConfigError("Taylor importance (method 'impt') reads dict batches of model inputs (input_ids, "
                                  f"attention_mask, and labels for the task loss); got {type(batch).__name__}")
            activations: list[tuple[tuple[str, int], torch.Tensor]] = []
            with record(model, activations):
                loss = importance_loss(model, to_device(batch, device))
            grads = torch.autograd.grad(loss, [a for _, a in activations])
            for (role, activation), grad in zip(activations, grads, strict=True):
                importance.add(role, activation, grad)
            importance.batches += 1
    if importance.batches == 0:
        raise ConfigError("Taylor importance needs at least one batch; the dataloader was empty")
    return importance


def _forward_inputs(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``batch`` that ``model.forward`` takes (a span head's ``start_positions`` and
    ``end_positions`` give its loss; kd's own keys, such as ``context_mask``, stay out)."""
    accepted = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in accepted}


def _length(dataloader: Iterable[Any]) -> int | None:
    try:
        return len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        return None


@contextmanager
def _record_activations(model: nn.Module, layout: Layout,
                        sink: list[tuple[tuple[str, int], torch.Tensor]]) -> Iterator[None]:
    def output_hook(role: tuple[str, int]):
        return lambda module, inputs, output: sink.append((role, output))

    def input_hook(role: tuple[str, int]):
        return lambda module, inputs: sink.append((role, inputs[0]))

    base = model.base_model
    handles = [base.get_submodule(layout.embedding_norm).register_forward_hook(output_hook(("hidden", 0)))]
    for layer, block in enumerate(encoder_blocks(model)):
        handles += [block.get_submodule(name).register_forward_hook(output_hook(("heads", layer)))
                    for name in (layout.query, layout.key, layout.value)]
        handles.append(block.get_submodule(layout.ffn_output).register_forward_pre_hook(input_hook(("ffn", layer))))
        handles.append(block.get_submodule(layout.attention_norm).register_forward_hook(
            output_hook(("hidden", 2 * layer + 1))))
        handles.append(block.get_submodule(layout.output_norm).register_forward_hook(
            output_hook(("hidden", 2 * layer + 2))))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Chooser:
    """Picks ``k`` of ``n`` dimensions by the extraction method, in increasing order."""

    def __init__(self, method: Method, importance: Importance | None, seed: int) -> None:
        self.method = method
        self.importance = importance
        self.generator = torch.Generator().manual_seed(seed)

    def pick(self, n: int, k: int, scores: torch.Tensor | None) -> torch.Tensor:
        if self.method == "first" or k == n:
            return torch.arange(k)
        if self.method == "rand":
            return torch.randperm(n, generator=self.generator)[:k].sort().values
        return scores.topk(k).indices.sort().values

    def score(self, role: tuple[str, int]) -> torch.Tensor | None:
        if self.method != "impt":
            return None
        if role == ("hidden", -1):
            return self.importance.hidden_total()
        return self.importance.scores[role]


@dataclass
class Selection:
    """The teacher dimensions a student keeps: per role, sorted indices into the teacher's dimension."""

    layers: list[int]
    indices: dict[tuple[str, int], torch.Tensor]
    hidden_consistency: bool

    def of(self, role: Role) -> torch.Tensor | None:
        if role is None:
            return None
        if role[0] == "hidden" and self.hidden_consistency:
            return self.indices[("hidden", -1)]
        return self.indices[role]


def plan_selection(teacher: nn.Module, layers: list[int], hidden_size: int, intermediate_size: int,
                   method: Method, importance: Importance | None, hidden_consistency: bool,
                   seed: int) -> Selection:
    """Choose the kept dimensions of every role the student needs."""
    _, width, ffn_width, heads = shape_of(teacher)
    chooser = _Chooser(method, importance, seed)
    indices: dict[tuple[str, int], torch.Tensor] = {}
    streams = [0] + [s for layer in layers for s in (2 * layer + 1, 2 * layer + 2)]
    for stream in [-1] if hidden_consistency else streams:
        indices[("hidden", stream)] = chooser.pick(width, hidden_size, chooser.score(("hidden", stream)))
    teacher_head, student_head = width // heads, hidden_size // heads
    for layer in layers:
        indices[("ffn", layer)] = chooser.pick(ffn_width, intermediate_size, chooser.score(("ffn", layer)))
        scores = chooser.score(("heads", layer))
        per_head = [chooser.pick(teacher_head, student_head, None if scores is None else
                                 scores[h * teacher_head:(h + 1) * teacher_head]) + h * teacher_head
                    for h in range(heads)]
        indices[("heads", layer)] = torch.cat(per_head)
    return Selection(layers, indices, hidden_consistency)


def _roles(teacher: nn.Module, layout: Layout, layers: list[int]) -> dict[str, tuple[Role, Role]]:
    """(output role, input role) of every module with weights in the kept ``layers`` and outside the
    blocks, by its name under the base model. Embeddings: (None, hidden); LayerNorms: (hidden, None);
    linears: (out, in). A kept layer reads the stream of the kept layer before it.
    """
    base = teacher.base_model
    width = shape_of(teacher)[1]
    roles: dict[str, tuple[Role, Role]] = {}
    stream_out = 0
    for layer in layers:
        prefix = f"{layout.layers}.{layer}."
        stream_in, stream_mid, stream_out = stream_out, 2 * layer + 1, 2 * layer + 2
        for name in (layout.query, layout.key, layout.value):
            roles[prefix + name] = (("heads", layer), ("hidden", stream_in))
        roles[prefix + layout.attention_output] = (("hidden", stream_mid), ("heads", layer))
        roles[prefix + layout.attention_norm] = (("hidden", stream_mid), None)
        roles[prefix + layout.ffn_input] = (("ffn", layer), ("hidden", stream_mid))
        roles[prefix + layout.ffn_output] = (("hidden", stream_out), ("ffn", layer))
        roles[prefix + layout.output_norm] = (("hidden", stream_out), None)
    roles[layout.embedding_norm] = (("hidden", 0), None)
    for name, module in base.named_modules():
        if name in roles or name.startswith(layout.layers + ".") or not _has_own_parameters(module):
            continue
        if isinstance(module, nn.Embedding):
            if module.embedding_dim != width:
                raise ConfigError(f"cannot extract {name}: its width {module.embedding_dim} differs from the hidden "
                                  f"size {width} (factorised embeddings are not supported)")
            roles[name] = (None, ("hidden", 0))
        elif isinstance(module, nn.Linear):  # the pooler
            roles[name] = _linear_roles(module, width, stream_out)
        else:
            raise ConfigError(f"cannot extract {type(teacher).__name__}: it has a {type(module).__name__} at "
                              f"{name} that extraction does not know how to slice")
    return roles


def _linear_roles(module: nn.Linear, width: int, stream: int) -> tuple[Role, Role]:
    hidden = ("hidden", stream)
    return (hidden if module.out_features == width else None, hidden if module.in_features == width else None)


def _head_roles(teacher: nn.Module, name: str, module: nn.Module, width: int, stream: int) -> tuple[Role, Role]:
    """(output role, input role) of a module of the head, which reads the last stream: a Linear's
    hidden-sized sides, a LayerNorm of the hidden size (a masked-LM head's transform), or kept whole
    when none of its weights runs over the hidden size (a masked-LM head's vocabulary bias)."""
    if isinstance(module, nn.Linear):
        return _linear_roles(module, width, stream)
    if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (width,):
        return ("hidden", stream), None
    if all(width not in p.shape for p in module.parameters(recurse=False)):
        return None, None
    raise ConfigError(f"cannot extract the head of {type(teacher).__name__}: {name} is a {type(module).__name__} "
                      "with weights of the hidden size that extraction does not know how to slice")


def _has_own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _slice(tensor: torch.Tensor, out_index: torch.Tensor | None, in_index: torch.Tensor | None) -> torch.Tensor:
    if out_index is not None:
        tensor = tensor.index_select(0, out_index.to(tensor.device))
    if in_index is not None and tensor.dim() > 1:
        tensor = tensor.index_select(1, in_index.to(tensor.device))
    return tensor


def build_extracted(teacher: nn.Module, selection: Selection, hidden_size: int, intermediate_size: int) -> nn.Module:
    """A model of the teacher's class with the selected layers and dimensions of its weights."""
    layout = layout_of(teacher)
    student = transformer_student(teacher, **layout.settings(len(selection.layers), hidden_size, intermediate_size))
    student.to(next(teacher.parameters()).device)
    width = shape_of(teacher)[1]
    last_stream = 2 * selection.layers[-1] + 2
    roles = _roles(teacher, layout, selection.layers)
    renumber = {teacher_layer: i for i, teacher_layer in enumerate(selection.layers)}
    # a bare encoder (AutoModel) is its own base model: its names carry no prefix
    base_prefix = "" if teacher.base_model is teacher else teacher.base_model_prefix + "."
    state: dict[str, torch.Tensor] = {}
    for name, module in teacher.named_modules():
        if not _has_own_parameters(module):
            continue
        if name.startswith(base_prefix):
            local = name[len(base_prefix):]
            target = name
            if local.startswith(layout.layers + "."):
                layer, _, inner = local[len(layout.layers) + 1:].partition(".")
                if int(layer) not in renumber:
                    continue
                target = f"{base_prefix}{layout.layers}.{renumber[int(layer)]}.{inner}"
            if local not in roles:
                raise ConfigError(f"cannot extract {type(teacher).__name__}: {name} is not a part of the "
                                  f"{teacher.config.model_type} layout that extraction knows how to slice")
            out_role, in_role = roles[local]
        else:  # the task or masked-LM head
            target = name
            out_role, in_role = _head_roles(teacher, name, module, width, last_stream)
        for param_name, param in module.named_parameters(recurse=False):
            state[f"{target}.{param_name}"] = _slice(param.detach(), selection.of(out_role), selection.of(in_role))
    return _load_every_parameter(student, state, "extraction")


def _load_every_parameter(student: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """``student`` with ``state`` loaded, which must give every parameter and nothing else (buffers
    a model builds itself, such as position ids, may be left out)."""
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing_parameters = sorted({n for n, _ in student.named_parameters()} & set(missing))
    if unexpected or missing_parameters:
        raise RuntimeError(f"{what} produced a mismatched state dict: missing {missing_parameters}, "
                           f"unexpected {unexpected}")
    return student


def extract_student(teacher: nn.Module, num_layers: int, hidden_size: int | None = None,
                    intermediate_size: int | None = None, method: Method = "rand",
                    layer_selection: LayerSelection = "uniform", dataloader: Iterable[Any] | None = None,
                    num_batches: int | None = None, hidden_consistency: bool = True, seed: int = 0,
                    progress: bool = True) -> nn.Module:
    """A student of the teacher's class, initialised from the teacher's weights (ETD).

    ``hidden_size`` and ``intermediate_size`` default to the teacher's (layer selection only);
    the head count is the teacher's, so ``hidden_size`` must be a multiple of it. ``method`` chooses
    the kept dimensions: ``rand`` (seeded), ``impt`` (Taylor importance over ``num_batches`` of
    ``dataloader``; see :func:`importance_loss`) or ``first``. ``hidden_consistency=False`` is the paper's
    ablation: every residual stream gets its own index set.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    teacher_layers, width, ffn_width, heads = shape_of(teacher)
    hidden_size = width if hidden_size is None else int(hidden_size)
    intermediate_size = ffn_width if intermediate_size is None else int(intermediate_size)
    if not 0 < hidden_size <= width or hidden_size % heads:
        raise ConfigError(f"hidden_size {hidden_size} must be at most the teacher's {width} and a multiple of its "
                          f"{heads} attention heads (ETD keeps the head count)")
    if not 0 < intermediate_size <= ffn_width:
        raise ConfigError(f"intermediate_size {intermediate_size} must be between 1 and the teacher's {ffn_width}")
    layers = select_layers(teacher_layers, num_layers, layer_selection)
    importance = None
    if method == "impt":
        if dataloader is None:
            raise ConfigError("method 'impt' needs a dataloader of batches for the Taylor importance")
        importance = taylor_importance(teacher, dataloader, num_batches, progress=progress)
    selection = plan_selection(teacher, layers, hidden_size, intermediate_size, method, importance,
                               hidden_consistency, seed)
    return build_extracted(teacher, selection, hidden_size, intermediate_size)


def copy_layers(teacher: nn.Module, student: nn.Module, layers: list[int]) -> nn.Module:
    """``student`` (of the teacher's class and width, ``len(layers)`` blocks deep) with the teacher's
    weights: its blocks ``layers``, renumbered from 0, and everything outside the blocks
    (embeddings, final norm, heads) as it is. Any family whose blocks kd knows
    (:func:`~kd_models.layouts.stack_of`): encoders and causal LMs alike."""
    if type(student) is not type(teacher):
        raise ConfigError(f"copying layers needs a student of the teacher's class {type(teacher).__name__}, not "
                          f"{type(student).__name__}")
    base_prefix = "" if teacher.base_model is teacher else teacher.base_model_prefix + "."
    blocks = f"{base_prefix}{stack_of(teacher).layers}."
    renumber = {teacher_layer: i for i, teacher_layer in enumerate(layers)}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in teacher.state_dict().items():
        if name.startswith(blocks):
            layer, _, inner = name[len(blocks):].partition(".")
            if int(layer) not in renumber:
                continue
            name = f"{blocks}{renumber[int(layer)]}.{inner}"
        state[name] = tensor
    kinds = getattr(teacher.config, "layer_types", None)
    if isinstance(kinds, list) and list(student.config.layer_types) != [kinds[layer] for layer in layers]:
        raise ConfigError(f"student.init 'layer_copy' keeps the teacher's layers {layers}, whose attention kinds are "
                          f"{[kinds[layer] for layer in layers]}; the student's config has "
                          f"{list(student.config.layer_types)}: set student.config.layer_types to match")
    expected = student.state_dict()
    wrong = [f"{name} {tuple(tensor.shape)} (student {tuple(expected[name].shape)})" for name, tensor in state.items()
             if name in expected and expected[name].shape != tensor.shape]
    if wrong:
        raise ConfigError(f"student.init 'layer_copy' keeps the teacher's width, but the student's weights have other "
                          f"shapes: {'; '.join(wrong[:3])}. Use etd_rand or etd_impt to shrink the width")
    return _load_every_parameter(student, state, "layer copy")
