"""``python -m kd_kernels.info``: which implementation of each op runs on each device, and why."""

from __future__ import annotations

import os
import shutil

import torch

from kd_kernels import build
from kd_kernels.dispatch import OPS, backend


def report() -> str:
    """A plain-text report of the kernel backends on this machine."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines = [
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), CPU ISA {build.cpu_isa()}, "
        f"{torch.get_num_threads()} threads",
        f"KD_KERNELS={os.environ.get('KD_KERNELS', 'auto')}; build cache {build.cache_root()}",
        f"compilers: c++ {shutil.which(os.environ.get('CXX', 'c++')) or 'missing'}, "
        f"nvcc {shutil.which('nvcc') or 'missing'}",
    ]
    for op in OPS:
        for device in devices:
            choice = backend(op, device)
            lines.append(f"{op} on {device}: {choice.name} - {choice.reason}")
    if not torch.cuda.is_available():
        lines.append("cuda: no CUDA device, so the CUDA kernels are not built here")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
