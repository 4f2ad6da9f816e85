"""Benchmarks reuse the test fixtures (packaged teacher, bundled data) and add, to the results
JSON, the machine and each group's time ratios measured in the same run."""

from __future__ import annotations

from kd_core.machine import machine_line
from tests.conftest import minilm_path, sst2_dir  # noqa: F401

BASELINES = ("fused", "kd")
"""The implementation each group's ratios divide by: the fused kernel, else kd's own step."""


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    output_json["machine"] = machine_line()
    means: dict[str, dict[str, float]] = {}
    for bench in output_json["benchmarks"]:
        impl = (bench.get("params") or {}).get("impl")
        if impl is not None:
            means.setdefault(bench["group"], {})[impl] = bench["stats"]["mean"]
    ratios = {}
    for group, times in means.items():
        base = next((b for b in BASELINES if b in times), None)
        if base is not None:
            ratios[group] = {f"{impl} / {base}": round(mean / times[base], 2) for impl, mean in times.items()
                             if impl != base}
    output_json["ratios"] = ratios
