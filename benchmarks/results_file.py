"""Where the measurement scripts write their results, and how: one JSON file per machine under
benchmarks/results, named by the script, the architecture and the CPU count (``cores``, the
machine's) or the thread count (``threads``, torch's), the files the README's blocks read."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Literal

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def results_path(name: str, count: Literal["cores", "threads"]) -> Path:
    """benchmarks/results/NAME-cpu-ARCH-Ncores.json (or -Nthreads.json) for this machine."""
    n = os.cpu_count() if count == "cores" else torch.get_num_threads()
    return RESULTS / f"{name}-cpu-{platform.machine()}-{n}{count}.json"


def write_results(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` to ``path`` as indented JSON (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
