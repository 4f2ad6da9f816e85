"""Benchmarks reuse the test fixtures (packaged teacher, bundled data) and add, to the results
JSON, the machine and each group's time ratios measured in the same run."""

from __future__ import annotations

import os
import platform

import torch

from tests.conftest import minilm_path, sst2_dir  # noqa: F401


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}){gpu}"


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    output_json["machine"] = _machine()
    ratios: dict[str, dict[str, float]] = {}
    for bench in output_json["benchmarks"]:
        impl = (bench.get("params") or {}).get("impl")
        if impl is not None:
            ratios.setdefault(bench["group"], {})[impl] = bench["stats"]["mean"]
    output_json["ratios"] = {
        group: {f"{impl} / fused": round(mean / times["fused"], 2) for impl, mean in times.items() if impl != "fused"}
        for group, times in ratios.items() if "fused" in times}
