"""The machine a measurement comes from, for reports and benchmark results."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def describe_machine() -> dict[str, Any]:
    """Processor, cores, torch build and threads, and the GPU when there is one."""
    description = {"processor": _cpu_name(), "architecture": platform.machine(), "cores": os.cpu_count(),
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name()
    return description


def machine_line(description: dict[str, Any] | None = None) -> str:
    """:func:`describe_machine` on one line."""
    d = description or describe_machine()
    gpu = f", {d['gpu']}" if "gpu" in d else ""
    return f"{d['processor']}, {d['cores']} cores, torch {d['torch']} ({d['cpu_capability']}){gpu}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
