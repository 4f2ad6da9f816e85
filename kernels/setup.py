"""Builds kd-kernels with its compiled ops, as pytorch/extension-cpp does: torch's BuildExtension
compiles ``csrc/cpu`` once per vector ISA (DEFAULT, AVX2, AVX512 on x86-64; the one matching the
CPU loads at run time, as torch chooses its own kernels) and ``csrc/cuda`` where torch has CUDA
and a CUDA toolkit is found (``KD_KERNELS_BUILD_CUDA=0`` skips it, ``1`` requires it). Each
binary's build key goes to ``kd_kernels/prebuilt.json``, so an installed wheel loads its binary
with no compiler and no ninja, and a binary whose key no longer matches (another torch, edited
sources) is left for the first-use build of :mod:`kd_kernels.build`.

The ops link against torch, so build against the torch you run: ``pip install
--no-build-isolation ./kernels`` (``make .venv`` does), or ``pip wheel --no-build-isolation``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from setuptools import Extension, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("kd_kernels_toolchain", HERE / "src" / "kd_kernels" / "toolchain.py")
toolchain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toolchain)


def _relative(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(HERE)) for path in paths]


def _build_cuda() -> bool:
    wanted = os.environ.get("KD_KERNELS_BUILD_CUDA", "auto")
    possible = bool(torch.version.cuda) and CUDA_HOME is not None
    if wanted == "1" and not possible:
        raise RuntimeError("KD_KERNELS_BUILD_CUDA=1, but torch has no CUDA or no CUDA toolkit was found (CUDA_HOME)")
    return possible and wanted != "0"


def extensions() -> list[Extension]:
    """One CPU extension per ISA, and the CUDA one where it can be built; each carries its key."""
    built = []
    for isa in toolchain.buildable_isas():
        extension = CppExtension(f"kd_kernels._cpu_{isa.lower()}", _relative(toolchain.sources("cpu")),
                                 extra_compile_args=toolchain.cpu_flags(isa), extra_link_args=["-fopenmp"])
        extension.kd_key = toolchain.build_key("cpu", isa)
        built.append(extension)
    if _build_cuda():
        extension = CUDAExtension("kd_kernels._cuda", _relative(toolchain.sources("cuda")),
                                  extra_compile_args={"cxx": toolchain.CUDA_FLAGS, "nvcc": toolchain.CUDA_FLAGS})
        extension.kd_key = toolchain.build_key("cuda", archs=toolchain.cuda_archs())
        built.append(extension)
    return built


class BuildKernels(BuildExtension):
    """BuildExtension that compiles each extension in a temporary folder of its own (the CPU
    variants share their sources, and must not share object files) and writes the record of
    what it built beside the binaries."""

    def get_ext_filename(self, fullname: str) -> str:
        """``kd_kernels/_cpu_avx2.kernel``: shared libraries that Python's import system does not
        take for modules (see ``kd_kernels.toolchain.BINARY_SUFFIX``)."""
        return os.path.join(*fullname.split(".")) + toolchain.BINARY_SUFFIX

    def build_extension(self, ext) -> None:
        shared = self.build_temp
        self.build_temp = os.path.join(shared, ext.name)
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = shared

    def run(self) -> None:
        super().run()
        binaries = {Path(self.get_ext_fullpath(ext.name)).name: ext.kd_key for ext in self.extensions}
        record = Path(self.get_ext_fullpath(self.extensions[0].name)).parent / toolchain.RECORD_NAME
        record.write_text(json.dumps(binaries, indent=2, sort_keys=True) + "\n", encoding="utf-8")


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildKernels})
