"""Teacher caching: the teacher's features stored per example, so later epochs (and later runs)
skip the teacher's forward pass.

An entry is keyed by the example's content (its model inputs at its real tokens) and the
teacher's identity (a hash of its class, parameters and buffers), and holds the features a loss
plan reads from the teacher (logits and per-layer hidden states, attention, Q/K/V), cut to the
example's real tokens. A batch is served from the cache when every example is in it with every
feature the plan needs; otherwise the teacher runs on the batch and its entries are written. The
batch is then assembled from the entries in both cases, so every epoch sees the same values.
Padded positions come back as zeros, which kd's losses ignore (their mask excludes padding);
logits whose last dimension runs over the tokens (a span head's, :attr:`Adaptor.logits_over_tokens
<kd_core.features.Adaptor.logits_over_tokens>`) keep their real tokens on that dimension and come
back with :data:`~kd_core.features.MASKED_LOGIT` at padding, so the padding gets no probability.

Backends: in memory (TextBrewer's ``is_caching_logits``) or a directory of safetensors files
(``teacher_cache_dir``) that later runs reuse. Each file carries its key, the teacher's identity
and a checksum of its tensors; an entry that does not match or does not load is recomputed and
counted, never used. ``top_k`` keeps only the k largest logits of each row plus the log of the
remaining probability mass, spread evenly over the other classes when the logits are rebuilt.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from kd_core.features import MASKED_LOGIT, TEACHER_LOGITS, FeatureNeeds, Features

PER_LAYER = ("hidden", "attention", "attention_scores", "q", "k", "v")
SEQUENCE_DIMS = {"hidden": (1,), "attention": (2, 3), "attention_scores": (2, 3), "q": (2,), "k": (2,), "v": (2,)}
"""Which dimensions of a [B, ...] per-layer feature run over tokens."""
EXCLUDED_INPUTS = ("labels", TEACHER_LOGITS)


class CacheWarning(UserWarning):
    """A cache entry was corrupt or did not match, and was recomputed."""


def teacher_identity(model: nn.Module) -> str:
    """A hash of the model's class, parameter and buffer names, shapes, dtypes and values."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def _hash_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes())


@dataclass
class CacheStats:
    """Counts since the cache was created."""

    hits: int = 0
    misses: int = 0
    recomputed: int = 0
    teacher_forwards: int = 0


@dataclass
class _Entry:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _real_positions(batch: Mapping[str, Any], size: int) -> list[torch.Tensor]:
    mask = batch.get("attention_mask")
    if mask is None:
        return [None] * size
    return [row.bool().cpu() for row in mask]


def _example_inputs(batch: Mapping[str, Any], index: int, real: torch.Tensor | None) -> dict[str, torch.Tensor]:
    inputs = {}
    for name, value in sorted(batch.items()):
        if name in EXCLUDED_INPUTS or not isinstance(value, torch.Tensor):
            continue
        row = value[index].detach().cpu()
        if real is not None and row.dim() >= 1 and row.shape[0] == real.shape[0]:
            row = row[real]
        inputs[name] = row.contiguous()
    return inputs


def example_key(inputs: Mapping[str, torch.Tensor]) -> str:
    """The content hash of one example's model inputs (real tokens only)."""
    digest = hashlib.sha256()
    for name, tensor in inputs.items():
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def _take_real(tensor: torch.Tensor, dims: tuple[int, ...], real: torch.Tensor | None) -> torch.Tensor:
    """One example's feature (batch dimension removed) cut to its real tokens."""
    if real is None:
        return tensor
    for dim in dims:
        tensor = tensor.index_select(dim - 1, real.nonzero().squeeze(-1).to(tensor.device))
    return tensor


def _put_real(values: torch.Tensor, dims: tuple[int, ...], real: torch.Tensor | None, length: int,
              fill: float = 0.0) -> torch.Tensor:
    """The inverse of :func:`_take_real`: ``fill`` at padded positions."""
    if real is None:
        return values
    index = real.nonzero().squeeze(-1).to(values.device)
    for dim in dims:
        shape = list(values.shape)
        shape[dim - 1] = length
        padded = values.new_full(shape, fill)
        values = padded.index_copy(dim - 1, index, values)
    return values


def _logit_token_dims(logits: torch.Tensor, over_tokens: bool) -> tuple[int, ...]:
    """The dimensions of one example's logits (batch dimension removed, numbered as in a batch)
    that run over tokens: none for [C], the first of [L, C], the last of [R, L] ``over_tokens``."""
    if over_tokens:
        return (logits.dim(),)
    return (1,) if logits.dim() == 2 else ()


def _cut_logits(logits: torch.Tensor, real: torch.Tensor | None, over_tokens: bool = False) -> torch.Tensor:
    """One example's logits cut to its real tokens (see :func:`_logit_token_dims`)."""
    return _take_real(logits, _logit_token_dims(logits, over_tokens), real)


def compress_logits(logits: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The top ``k`` logits of each row, their indices and the log of the rest's mass
    (``logsumexp`` of the other logits, which with the row's own logsumexp gives the probability
    the top k leave for the other classes)."""
    k = min(k, logits.shape[-1])
    values, indices = logits.float().topk(k, dim=-1)
    rest = logits.float().scatter(-1, indices, -math.inf)
    return {"topk_values": values, "topk_indices": indices.to(torch.int32),
            "rest_logsumexp": torch.logsumexp(rest, -1), "vocab": torch.tensor(logits.shape[-1])}


def expand_logits(parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits rebuilt from :func:`compress_logits`: the top k as stored, every other class at the
    value that spreads the remaining mass evenly over them."""
    values, indices, rest = parts["topk_values"], parts["topk_indices"].long(), parts["rest_logsumexp"]
    vocab = int(parts["vocab"])
    others = vocab - values.shape[-1]
    fill = rest - math.log(others) if others else rest
    logits = fill.unsqueeze(-1).expand(*values.shape[:-1], vocab).clone()
    return logits.scatter(-1, indices, values)


def logits_from_parts(parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One example's logits from what was stored: ``{"logits": tensor}`` as is, or the parts of
    :func:`compress_logits` expanded."""
    return parts["logits"] if "logits" in parts else expand_logits(parts)


def stack_logits(rows: list[torch.Tensor], reals: list[torch.Tensor | None], length: int | None,
                 over_tokens: bool = False) -> torch.Tensor:
    """A batch of per-example logits: [C] rows stacked; token-level [n_real, C] rows put back at
    their real positions of ``length`` tokens (``reals``: each example's real-token mask), with
    zeros at padding; with ``over_tokens``, [R, n_real] rows put back on their last dimension,
    with :data:`~kd_core.features.MASKED_LOGIT` at padding."""
    if rows:
        dims = _logit_token_dims(rows[0], over_tokens)
        fill = MASKED_LOGIT if over_tokens else 0.0
        rows = [r if real is None else _put_real(r, dims, real, length, fill) for r, real in zip(rows, reals,
                                                                                                  strict=True)]
    return torch.stack(rows)


class TeacherCache:
    """Per-example teacher features in memory (``directory=None``) or on disk.

    ``features(batch, needs, compute)`` returns the batch's teacher features, running
    ``compute()`` (the teacher forward) only when some example or feature is missing.
    """

    def __init__(self, teacher: nn.Module, directory: str | Path | None = None, top_k: int | None = None,
                 logits_over_tokens: bool = False) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"teacher cache top_k must be at least 1, got {top_k}")
        self.identity = teacher_identity(teacher)
        self.directory = None if directory is None else Path(directory) / self.identity[:32]
        self.top_k = top_k
        self.logits_over_tokens = logits_over_tokens
        """The teacher adaptor's :attr:`~kd_core.features.Adaptor.logits_over_tokens`."""
        self.stats = CacheStats()
        self._memory: dict[str, _Entry] = {}
        self._warned = False

    # -- entries -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> _Entry | None:
        if self.directory is None:
            return self._memory.get(key)
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (OSError, ValueError, SafetensorError) as exc:
            return self._reject(path, f"unreadable ({type(exc).__name__}: {exc})")
        if metadata.get("key") != key or metadata.get("teacher") != self.identity:
            return self._reject(path, "written for another example or teacher")
        if metadata.get("checksum") != _checksum(tensors):
            return self._reject(path, "its checksum does not match its tensors")
        return _Entry(tensors)

    def _reject(self, path: Path, why: str) -> None:
        self.stats.recomputed += 1
        if not self._warned:
            warnings.warn(f"teacher cache entry {path} is {why}; recomputing it (further such entries are counted "
                          "in the cache statistics, not warned about)", CacheWarning, stacklevel=4)
            self._warned = True
        return None

    def _store(self, key: str, entry: _Entry) -> None:
        if self.directory is None:
            self._memory[key] = entry
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"key": key, "teacher": self.identity, "checksum": _checksum(entry.tensors)}
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        save_file(entry.tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)

    # -- batches -------------------------------------------------------------------------------

    def features(self, batch: Mapping[str, Any], needs: FeatureNeeds, compute: Callable[[], Features]) -> Features:
        """The teacher's features for ``batch``: from the cache where every example has every
        feature in ``needs``, else from ``compute()`` (stored for next time)."""
        entries, reals = self._entries(batch, needs, compute)
        length = reals[0].shape[0] if reals[0] is not None else None
        return self._assemble(entries, needs, reals, length, _device(batch))

    def stored_logits(self, batch: Mapping[str, Any], compute: Callable[[], Features]) -> list[dict[str, torch.Tensor]]:
        """Each example's logits as the cache stores them, cut to its real tokens: ``{"logits": ...}``,
        or with ``top_k`` the parts of :func:`compress_logits` (:func:`logits_from_parts` rebuilds
        them). ``compute()`` must return at least the teacher's logits."""
        entries, _ = self._entries(batch, FeatureNeeds({"logits": set()}), compute)
        return [_logit_parts(e) for e in entries]

    def _entries(self, batch: Mapping[str, Any], needs: FeatureNeeds,
                 compute: Callable[[], Features]) -> tuple[list[_Entry], list[torch.Tensor | None]]:
        size = _batch_size(batch)
        reals = _real_positions(batch, size)
        keys = [example_key(_example_inputs(batch, i, reals[i])) for i in range(size)]
        entries = [self._load(key) for key in keys]
        if all(_covers(e, needs) for e in entries):
            self.stats.hits += size
        else:
            self.stats.misses += size
            self.stats.teacher_forwards += 1
            computed = compute()
            entries = [self._entry(computed, needs, i, reals[i]) for i in range(size)]
            for key, entry in zip(keys, entries, strict=True):
                self._store(key, entry)
        return entries, reals

    def _entry(self, features: Features, needs: FeatureNeeds, index: int, real: torch.Tensor | None) -> _Entry:
        entry = _Entry()
        if "logits" in needs:
            logits = _cut_logits(features["logits"][index].detach(), real, self.logits_over_tokens)
            if self.top_k is None:
                entry.tensors["logits"] = logits.cpu().contiguous()
            else:
                for name, value in compress_logits(logits, self.top_k).items():
                    entry.tensors[f"logits.{name}"] = value.cpu().contiguous()
        for feature in PER_LAYER:
            if feature not in needs:
                continue
            layers = features[feature]
            entry.tensors[f"{feature}.layers"] = torch.tensor(len(layers))
            for layer in _layer_indices(needs, feature, len(layers)):
                value = layers[layer][index].detach()
                entry.tensors[f"{feature}.{layer}"] = _take_real(value, SEQUENCE_DIMS[feature], real).cpu().contiguous()
        return entry

    def _assemble(self, entries: list[_Entry], needs: FeatureNeeds, reals: list[torch.Tensor | None],
                  length: int | None, device: torch.device) -> Features:
        features: Features = {}
        if "logits" in needs:
            rows = [logits_from_parts(_logit_parts(e)) for e in entries]
            features["logits"] = stack_logits(rows, reals, length, self.logits_over_tokens).to(device)
        for feature in PER_LAYER:
            if feature not in needs:
                continue
            count = int(entries[0].tensors[f"{feature}.layers"])
            layers: list[Any] = [None] * count
            for layer in _layer_indices(needs, feature, count):
                name = f"{feature}.{layer}"
                layers[layer] = torch.stack([_put_real(e.tensors[name], SEQUENCE_DIMS[feature], real, length)
                                             for e, real in zip(entries, reals, strict=True)]).to(device)
            features[feature] = layers
        return features


def _logit_parts(entry: _Entry) -> dict[str, torch.Tensor]:
    """An entry's logits as stored: ``{"logits": ...}`` or the top-k parts without their prefix."""
    return {k.split(".", 1)[-1]: v for k, v in entry.tensors.items() if k.split(".")[0] == "logits"}


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _hash_tensor(digest, name, tensors[name])
    return digest.hexdigest()


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise TypeError("a cached teacher needs dict batches with tensors (input_ids, attention_mask, ...)")


def _device(batch: Mapping[str, Any]) -> torch.device:
    return next(v.device for v in batch.values() if isinstance(v, torch.Tensor))


def _layer_indices(needs: FeatureNeeds, feature: str, count: int) -> list[int]:
    return sorted({layer % count for layer in needs.layers[feature]})


def _covers(entry: _Entry | None, needs: FeatureNeeds) -> bool:
    """Whether an entry holds every feature and layer of ``needs``."""
    if entry is None:
        return False
    tensors = entry.tensors
    if "logits" in needs and "logits" not in tensors and "logits.topk_values" not in tensors:
        return False
    for feature in PER_LAYER:
        if feature in needs:
            if f"{feature}.layers" not in tensors:
                return False
            count = int(tensors[f"{feature}.layers"])
            if any(f"{feature}.{layer}" not in tensors for layer in _layer_indices(needs, feature, count)):
                return False
    return True
