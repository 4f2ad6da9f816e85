"""The layering of ARCHITECTURE.md, as pyproject.toml's import contracts state it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kd_core

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]


def _private_modules() -> set[str]:
    contract = next(c for c in CONTRACTS if c["name"] == "plugins import only kd-core's public modules")
    return set(contract["forbidden_modules"])


def _public_modules() -> set[str]:
    docstring = kd_core.__doc__.split("Public modules", 1)[1]
    return {name for name in re.findall(r"``(kd_core\.\w+)``", docstring)}


def test_every_kd_core_module_is_public_or_private_and_not_both() -> None:
    modules = {f"kd_core.{p.stem}" for p in Path(kd_core.__file__).parent.glob("*.py") if p.stem != "__init__"}
    public, private = _public_modules(), _private_modules()
    assert not public & private, f"listed as both public and private: {sorted(public & private)}"
    assert public | private == modules, (
        f"unlisted modules: {sorted(modules - public - private)}; listed but absent: "
        f"{sorted((public | private) - modules)}. Add a new module to kd_core/__init__.py's public modules or to "
        "the private list of pyproject.toml's import contracts")


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout
