"""Finding, building and loading the compiled kernels.

A built package (``pip install``, a wheel, ``make .venv``) carries binaries compiled by
``kernels/setup.py``, one CPU binary per vector ISA and a CUDA one where it was built with CUDA,
with their build keys in ``prebuilt.json``; the binary whose key matches this machine (its ISA,
torch, Python, the sources beside it) loads with no compiler. Where none matches (a source
checkout, edited sources, another torch), the kernels are compiled on first use for this machine,
with a visible message, into a cache keyed the same way (``~/.cache/kd_kernels`` or
``$KD_KERNELS_CACHE``); that needs a C++ compiler and ninja (``kd-kernels[jit]``).
``KD_KERNELS_PREBUILT=0`` ignores the packaged binaries. ``python -m kd_kernels.build`` loads
or builds ahead of time and says which.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from kd_kernels import ops, toolchain  # noqa: F401 (ops: the schemas must exist before the implementations load)

PACKAGE = Path(__file__).resolve().parent
RECORD = PACKAGE / toolchain.RECORD_NAME


class KernelWarning(UserWarning):
    """The fused kernels could not be built or loaded; the reference runs instead."""


@dataclass
class Extension:
    """A compiled extension: where it was loaded from and how it got there, or why it could not be."""

    name: str
    path: Path | None = None
    error: str | None = None
    origin: str = ""
    fingerprint: str = ""

    @property
    def loaded(self) -> bool:
        return self.path is not None

    @property
    def state_dir(self) -> Path:
        """A writable folder for what is remembered about this build (the CUDA self-checks): the
        cache folder of its build key, which is where a first-use build lives."""
        return cache_root() / f"{self.name}-{self.fingerprint}"


def cache_root() -> Path:
    """Where first-use builds are cached: ``$KD_KERNELS_CACHE`` or ``~/.cache/kd_kernels``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kd_kernels"
    return Path(os.environ.get("KD_KERNELS_CACHE", default))


def cpu_isa() -> str:
    """The vector ISA the CPU kernels run with (:func:`kd_kernels.toolchain.cpu_isa`)."""
    return toolchain.cpu_isa()


def _has_cuda() -> bool:
    return bool(torch.version.cuda) and torch.cuda.is_available()


def _packaged_records() -> dict[str, dict[str, str]]:
    try:
        records = json.loads(RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _without_archs(key: dict[str, str]) -> dict[str, str]:
    return {field: value for field, value in key.items() if field != "archs"}


def _mismatch(built: dict[str, str], wanted: dict[str, str]) -> str:
    """Why a packaged binary with key ``built`` does not fit a machine that needs ``wanted``."""
    if built.get("torch") != wanted["torch"]:
        return f"they were built for torch {built.get('torch')}, this is torch {wanted['torch']}"
    if built.get("python") != wanted["python"]:
        return f"they were built for Python {built.get('python')}, this is Python {wanted['python']}"
    if built.get("sources") != wanted["sources"]:
        return "the sources changed since they were built"
    if built.get("cuda", "") != wanted.get("cuda", ""):
        return f"they were built for CUDA {built.get('cuda')}, torch has CUDA {wanted.get('cuda')}"
    return "their flags differ from this machine's"


def packaged_binary(kind: str) -> tuple[Path | None, str, dict[str, str]]:
    """The binary built with the package that fits this machine, and how it was built; or None
    and why none fits."""
    if os.environ.get("KD_KERNELS_PREBUILT", "1").strip() == "0":
        return None, "KD_KERNELS_PREBUILT=0", {}
    records = {name: key for name, key in _packaged_records().items() if key.get("kind") == kind}
    if not records:
        return None, f"the package was built without {kind.upper()} binaries", {}
    wanted = toolchain.build_key(kind)
    if kind == "cpu":
        records = {name: key for name, key in records.items() if key.get("isa") == wanted["isa"]}
        if not records:
            return None, f"the package has no binary for this CPU's ISA ({wanted['isa']})", {}
    name, built = next(iter(records.items()))
    if _without_archs(built) != _without_archs(wanted):  # the GPU architectures are the self-check's to judge
        return None, f"the package's binaries do not fit: {_mismatch(built, wanted)}", {}
    if not (PACKAGE / name).exists():
        return None, f"the package's record names {name}, which is missing", {}
    return PACKAGE / name, f"built with the package for {built.get('isa') or built.get('archs')}", built


def _compile(kind: str, name: str, why: str, verbose: bool = False) -> Extension:
    """Compile ``kind``'s kernels for this machine into the cache, or load an earlier such build."""
    from torch.utils import cpp_extension

    key = toolchain.build_key(kind)
    directory = cache_root() / f"{name}-{toolchain.fingerprint(key)}"
    library = directory / f"{name}.so"
    origin = f"compiled for this machine on first use, cached (no packaged binary: {why})"
    if library.exists():
        torch.ops.load_library(str(library))
        return Extension(name, library, origin=origin, fingerprint=toolchain.fingerprint(key))
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return Extension(name, error=f"no packaged binary ({why}) and no C++ compiler found (set CXX or install "
                                     "g++/clang++)")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"kd-kernels: compiling the {kind.upper()} kernels for this machine (first use, about a minute; no packaged "
          f"binary: {why}); cached in {directory}", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(name=name, sources=[str(p) for p in toolchain.sources(kind)],
                           extra_cflags=key["flags"].split(),
                           extra_cuda_cflags=toolchain.CUDA_FLAGS if kind == "cuda" else None,
                           extra_ldflags=["-fopenmp"] if kind == "cpu" else None,
                           build_directory=str(directory), is_python_module=False, verbose=verbose)
    except (RuntimeError, OSError, ImportError) as exc:
        return Extension(name, error=f"the build failed: {str(exc).strip().splitlines()[-1]}")
    return Extension(name, library, origin=origin, fingerprint=toolchain.fingerprint(key))


def _load(kind: str) -> Extension:
    name = f"kd_kernels_{kind}"
    binary, why, key = packaged_binary(kind)
    if binary is not None:
        try:
            torch.ops.load_library(str(binary))
            return Extension(name, binary, origin=why, fingerprint=toolchain.fingerprint(key))
        except OSError as exc:
            why = f"{binary.name} does not load: {str(exc).strip().splitlines()[-1]}"
    return _compile(kind, name, why)


_EXTENSIONS: dict[str, Extension] = {}


def extension(kind: str) -> Extension:
    """The ``cpu`` or ``cuda`` extension: the packaged binary that fits, else built on first use;
    loaded once per process."""
    if kind not in _EXTENSIONS:
        if kind == "cuda" and not _has_cuda():
            _EXTENSIONS[kind] = Extension("kd_kernels_cuda", error="torch has no CUDA device")
        else:
            _EXTENSIONS[kind] = _load(kind)
        if _EXTENSIONS[kind].error and os.environ.get("KD_KERNELS", "auto") != "reference":
            warnings.warn(f"kd-kernels: fused {kind} kernels unavailable ({_EXTENSIONS[kind].error}); "
                          "using the pure-PyTorch reference", KernelWarning, stacklevel=3)
    return _EXTENSIONS[kind]


def main() -> None:
    """Load the CPU kernels (and the CUDA ones where torch has CUDA), building them where no
    packaged binary fits, and say from where."""
    for kind in toolchain.KINDS:
        if kind == "cuda" and not _has_cuda():
            print("kd_kernels_cuda: not built (torch has no CUDA device here)")
            continue
        built = extension(kind)
        print(f"{built.name}: {f'{built.path} ({built.origin})' if built.loaded else built.error}")


if __name__ == "__main__":
    main()
