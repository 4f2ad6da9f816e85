"""Checkpoints in safetensors, written atomically, that resume training exactly.

A checkpoint is a directory ``step-NNNNNNNN`` holding ``model.safetensors`` (the student),
``state.safetensors`` (every tensor of the training state: optimizer moments, RNG states, ...)
and ``state.json`` (everything else, with placeholders where tensors were). It is written under a
temporary name and renamed into place, so a run killed mid-write leaves no half checkpoint behind.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kd_core.errors import KDError

CHECKPOINT_PREFIX = "step-"
MODEL_FILE = "model.safetensors"
STATE_TENSORS_FILE = "state.safetensors"
STATE_JSON_FILE = "state.json"

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_INT_KEYS = "__int_keys__"


def flatten_state(obj: Any, prefix: str = "s") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, tensors, scalars) into JSON and tensors.

    Tensors are replaced by ``{"__tensor__": key}``; tuples and dicts with integer keys (as in
    optimizer state dicts) are marked so :func:`unflatten_state` restores them exactly.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {_TENSOR: key}
        if isinstance(value, dict):
            int_keys = bool(value) and all(isinstance(k, int) for k in value)
            if not int_keys and not all(isinstance(k, str) for k in value):
                raise KDError(f"cannot checkpoint a dict with mixed key types at {key}")
            out = {str(k): walk(v, f"{key}.{k}") for k, v in value.items()}
            return {_INT_KEYS: out} if int_keys else out
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{key}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise KDError(f"cannot checkpoint a value of type {type(value).__name__} at {key}")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        if set(skeleton) == {_TUPLE}:
            return tuple(unflatten_state(v, tensors) for v in skeleton[_TUPLE])
        if set(skeleton) == {_INT_KEYS}:
            return {int(k): unflatten_state(v, tensors) for k, v in skeleton[_INT_KEYS].items()}
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copies (tied weights no longer share memory, as safetensors needs)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def save_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Write ``weights`` to one safetensors file under a temporary name, fsync it, rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(cpu_copy(weights), tmp, metadata={"format": "pt"})
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_dir(root: Path, step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` lives under ``root``."""
    return root / f"{CHECKPOINT_PREFIX}{step:08d}"


def save_checkpoint(root: Path, step: int, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write one checkpoint atomically and return its directory."""
    final = checkpoint_dir(root, step)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        skeleton, tensors = flatten_state(state)
        save_file(cpu_copy(model_state), str(staging / MODEL_FILE), metadata={"format": "pt"})
        save_file(tensors, str(staging / STATE_TENSORS_FILE))
        (staging / STATE_JSON_FILE).write_text(json.dumps(skeleton), encoding="utf-8")
        for name in (MODEL_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE):
            _fsync(str(staging / name))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


class CorruptCheckpointError(KDError):
    """A checkpoint's files are missing or cannot be read (a disk filled up, a copy cut short)."""

    def __init__(self, directory: Path, reason: str) -> None:
        self.directory = directory
        self.reason = reason
        super().__init__(f"checkpoint {directory} cannot be read: {reason}")


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: (model state, training state).

    Raises :class:`CorruptCheckpointError` naming the file when one is missing or unreadable.
    """
    missing = [n for n in (MODEL_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE) if not (directory / n).is_file()]
    if missing:
        raise CorruptCheckpointError(directory, f"missing {', '.join(missing)}")
    parts: dict[str, Any] = {}
    for name, read in ((MODEL_FILE, load_file), (STATE_TENSORS_FILE, load_file),
                       (STATE_JSON_FILE, lambda p: json.loads(Path(p).read_text(encoding="utf-8")))):
        try:
            parts[name] = read(str(directory / name))
        except Exception as exc:  # safetensors, JSON and decoding errors alike: the file is damaged
            raise CorruptCheckpointError(directory, f"{name} is damaged ({type(exc).__name__}: {exc})") from None
    try:
        state = unflatten_state(parts[STATE_JSON_FILE], parts[STATE_TENSORS_FILE])
    except (KeyError, TypeError, AttributeError) as exc:
        raise CorruptCheckpointError(directory, f"{STATE_JSON_FILE} does not match {STATE_TENSORS_FILE} "
                                                f"({type(exc).__name__}: {exc})") from None
    return parts[MODEL_FILE], state


def set_aside(directory: Path) -> Path:
    """Rename a corrupt checkpoint so that it is kept for inspection but never read again
    (``step-00000040.corrupt``); returns its new path."""
    target = directory.with_name(f"{directory.name}.corrupt")
    number = 1
    while target.exists():
        number += 1
        target = directory.with_name(f"{directory.name}.corrupt-{number}")
    os.replace(directory, target)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def rng_state() -> dict[str, Any]:
    """The state of every random generator training draws from: Python, NumPy, torch (and CUDA)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
