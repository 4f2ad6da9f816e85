"""What the compiled kernels are built from and with: sources, flags and the fingerprint of a build.

The one source of truth for both ways the kernels are compiled: ahead of time when the package is
built (``kernels/setup.py`` reads this file by its path, without importing the package) and on
first use in a source checkout (:mod:`kd_kernels.build`). Imports nothing of kd_kernels.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
KINDS = ("cpu", "cuda")
ISA_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}
CUDA_FLAGS = ["-O3", "-std=c++17"]
RECORD_NAME = "prebuilt.json"
"""The file beside the packaged binaries that holds each one's build key."""
BINARY_SUFFIX = ".kernel"
"""The packaged binaries' suffix: not an extension-module suffix, so that no tool that imports
every module of the package (documentation generators, module walkers) loads them; the AVX512
one would stop a CPU without AVX512 with an illegal instruction. torch.ops.load_library opens them."""


def cpu_isa() -> str:
    """The vector ISA the CPU kernels run with: the one torch uses on this machine
    (``ATEN_CPU_CAPABILITY`` lowers it), or ``DEFAULT`` for none kd compiles for."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in ISA_FLAGS else "DEFAULT"


def buildable_isas() -> list[str]:
    """The ISAs a package build compiles a CPU binary for, so that one wheel runs on any x86-64
    machine as torch's own kernels do: every ISA kd has flags for on x86-64, else ``DEFAULT``."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return ["DEFAULT", *ISA_FLAGS]
    return ["DEFAULT"]


def cpu_flags(isa: str) -> list[str]:
    """The compiler flags of the CPU kernels for ``isa``."""
    # -ffp-contract=off: z/T - max must round exactly as the max was rounded (a fused multiply-
    # subtract would not), or the largest probability of a row comes out as exp(rounding error).
    return ["-O3", "-fopenmp", "-ffp-contract=off", "-std=c++17", *ISA_FLAGS.get(isa, [])]


def flags(kind: str, isa: str | None = None) -> list[str]:
    """The compiler flags of ``kind``'s kernels: the CPU ones for ``isa`` (this machine's by
    default), or the host flags of the CUDA ones."""
    return cpu_flags(isa or cpu_isa()) if kind == "cpu" else CUDA_FLAGS


def sources(kind: str) -> list[Path]:
    """The translation units of ``kind``'s kernels."""
    return sorted((CSRC / kind).glob("*.cpp")) + sorted((CSRC / kind).glob("*.cu"))


def sources_digest(kind: str) -> str:
    """A digest of every file under ``csrc/<kind>`` (headers included): a changed source is a
    different build."""
    digest = hashlib.sha256()
    for path in sorted((CSRC / kind).iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cuda_archs() -> str:
    """The GPU architectures a CUDA build targets, as torch's extension builder chooses them:
    ``$TORCH_CUDA_ARCH_LIST`` where set, else the compute capabilities of the visible devices
    (``torch default`` when there are none: the builder then picks its own list)."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if listed:
        return listed
    if not torch.cuda.is_available():
        return "torch default"
    return ";".join(sorted({"{}.{}".format(*torch.cuda.get_device_capability(i))
                            for i in range(torch.cuda.device_count())}))


def build_key(kind: str, isa: str | None = None, archs: str | None = None) -> dict[str, str]:
    """Everything a binary of ``kind`` depends on: the sources, the flags, the torch and the
    Python minor version it is built against (the C++ ABI of torch changes between versions; a
    CPython ABI holds for a minor version) and, for CUDA, the CUDA version and the GPU
    architectures (``archs``, this machine's by default)."""
    key = {"kind": kind, "sources": sources_digest(kind), "flags": " ".join(flags(kind, isa)),
           "torch": torch.__version__, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    if kind == "cpu":
        key["isa"] = isa or cpu_isa()
    else:
        key["cuda"] = str(torch.version.cuda)
        key["archs"] = archs if archs is not None else cuda_archs()
    return key


def fingerprint(key: dict[str, str]) -> str:
    """A short name of a build key: the folder of a cached build, the tag of a packaged binary."""
    return hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
