"""Building and loading the compiled kernels.

The CPU extension is compiled from ``csrc/cpu`` with OpenMP on and the vector ISA of this
machine set explicitly (AVX512, AVX2 or none, as torch itself detects), the CUDA extension from
``csrc/cuda`` where torch has CUDA. Builds go to a cache directory keyed by the sources, the ISA
(for CUDA, the GPU architectures compiled for) and the torch version, so the first use compiles
(with a visible message) and later uses load.
``python -m kd_kernels.build`` builds ahead of time; ``make .venv`` runs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from kd_kernels import ops  # noqa: F401 (the schemas must exist before the implementations load)

CSRC = Path(__file__).resolve().parent / "csrc"
ISA_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}


class KernelWarning(UserWarning):
    """The fused kernels could not be built or loaded; the reference runs instead."""


@dataclass
class Extension:
    """A compiled extension: where it lives, or why it could not be loaded."""

    name: str
    path: Path | None = None
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.path is not None


def cache_root() -> Path:
    """Where builds are cached: ``$KD_KERNELS_CACHE`` or ``~/.cache/kd_kernels``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kd_kernels"
    return Path(os.environ.get("KD_KERNELS_CACHE", default))


def cpu_isa() -> str:
    """The vector ISA the CPU kernels are compiled for: what torch uses on this machine."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in ISA_FLAGS else "DEFAULT"


def _sources(kind: str) -> list[Path]:
    return sorted((CSRC / kind).glob("*.cpp")) + sorted((CSRC / kind).glob("*.cu"))


def _has_cuda() -> bool:
    return bool(torch.version.cuda) and torch.cuda.is_available()


def cuda_archs() -> str:
    """The GPU architectures a CUDA build targets, as torch's extension builder chooses them:
    ``$TORCH_CUDA_ARCH_LIST`` where set, else the compute capabilities of the visible devices."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if listed:
        return listed
    if not torch.cuda.is_available():
        return "none"
    return ";".join(sorted({"{}.{}".format(*torch.cuda.get_device_capability(i))
                            for i in range(torch.cuda.device_count())}))


def _fingerprint(kind: str, flags: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted((CSRC / kind).iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(flags).encode() + torch.__version__.encode() + sys.version.encode())
    if kind == "cuda":  # a shared cache must never load a build made for another GPU
        digest.update(f"CUDA {torch.version.cuda}, archs {cuda_archs()}".encode())
    return digest.hexdigest()[:16]


def _cpu_flags() -> list[str]:
    # -ffp-contract=off: z/T - max must round exactly as the max was rounded (a fused multiply-
    # subtract would not), or the largest probability of a row comes out as exp(rounding error).
    return ["-O3", "-fopenmp", "-ffp-contract=off", "-std=c++17", *ISA_FLAGS.get(cpu_isa(), [])]


def _build(kind: str, cflags: list[str], cuda_flags: list[str] | None = None, verbose: bool = False) -> Extension:
    from torch.utils import cpp_extension

    name = f"kd_kernels_{kind}"
    fingerprint = _fingerprint(kind, cflags + (cuda_flags or []))
    directory = cache_root() / f"{name}-{fingerprint}"
    library = directory / f"{name}.so"
    if library.exists():
        torch.ops.load_library(str(library))
        return Extension(name, library)
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return Extension(name, error="no C++ compiler found (set CXX or install g++/clang++)")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"kd-kernels: compiling the {kind.upper()} kernels for this machine (first use, about a minute); "
          f"cached in {directory}", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(name=name, sources=[str(p) for p in _sources(kind)], extra_cflags=cflags,
                           extra_cuda_cflags=cuda_flags, extra_ldflags=["-fopenmp"] if kind == "cpu" else None,
                           build_directory=str(directory), is_python_module=False, verbose=verbose)
    except (RuntimeError, OSError, ImportError) as exc:
        return Extension(name, error=f"the build failed: {str(exc).strip().splitlines()[-1]}")
    return Extension(name, library)


_EXTENSIONS: dict[str, Extension] = {}


def extension(kind: str) -> Extension:
    """The ``cpu`` or ``cuda`` extension, built on first use and loaded once per process."""
    if kind not in _EXTENSIONS:
        if kind == "cuda" and not _has_cuda():
            _EXTENSIONS[kind] = Extension("kd_kernels_cuda", error="torch has no CUDA device")
        else:
            cflags = _cpu_flags() if kind == "cpu" else ["-O3", "-std=c++17"]
            cuda_flags = ["-O3", "-std=c++17"] if kind == "cuda" else None
            _EXTENSIONS[kind] = _build(kind, cflags, cuda_flags)
        if _EXTENSIONS[kind].error and os.environ.get("KD_KERNELS", "auto") != "reference":
            warnings.warn(f"kd-kernels: fused {kind} kernels unavailable ({_EXTENSIONS[kind].error}); "
                          "using the pure-PyTorch reference", KernelWarning, stacklevel=3)
    return _EXTENSIONS[kind]


def main() -> None:
    """Build the CPU kernels (and the CUDA ones where torch has CUDA) ahead of time."""
    for kind in ("cpu", "cuda"):
        if kind == "cuda" and not _has_cuda():
            print("kd_kernels_cuda: not built (torch has no CUDA device here)")
            continue
        built = extension(kind)
        print(f"{built.name}: {built.path if built.loaded else built.error}")


if __name__ == "__main__":
    main()
