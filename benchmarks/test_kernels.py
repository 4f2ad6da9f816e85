"""The fused kernels against the eager reference and torch.compile of it, side by side in one
run, on the issue's shapes: ``softmax_kl`` forward+backward over fp32 [4096, 30522] at T=4, and
``relation_loss`` as MiniLM's value relation at B=8, H=12, L=512, d=32, with the peak extra
memory of each implementation. Run with ``make bench``; ratios land in the results JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.kernel_cases import (
    RELATION_SHAPE,
    SOFTMAX_TEMPERATURE,
    implementations,
    relation_inputs,
    relation_step,
    softmax_inputs,
    softmax_step,
)

ROOT = Path(__file__).resolve().parents[1]
SOFTMAX = implementations("softmax_kl")
RELATION = implementations("relation_loss")


@pytest.fixture(scope="module")
def logits():
    return softmax_inputs()


@pytest.fixture(scope="module")
def values():
    return relation_inputs()


@pytest.mark.parametrize("impl", list(SOFTMAX))
def test_softmax_kl_forward_backward(benchmark, logits, impl: str) -> None:
    benchmark.group = "softmax_kl fp32 [4096, 30522] T=4, forward+backward"
    if impl == "fused":  # the path training takes: the student needs a gradient, which the forward writes
        student, teacher = logits
        assert "softmax_kl_with_grad" in type(SOFTMAX[impl](student, teacher, SOFTMAX_TEMPERATURE).grad_fn).__name__
    benchmark.pedantic(softmax_step, args=(SOFTMAX[impl], *logits), warmup_rounds=1, rounds=5)


def _peak_extra_mib(impl: str) -> float:
    result = subprocess.run([sys.executable, "-m", "benchmarks.memory_probe", impl], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", list(RELATION))
def test_value_relation_forward_backward(benchmark, values, impl: str) -> None:
    benchmark.group = "relation_loss value relation fp32 B=8 H=12 L=512 d=32, forward+backward"
    batch, heads, length, _ = RELATION_SHAPE
    one_map_mib = batch * heads * length * length * 4 / 2**20
    benchmark.extra_info["peak_extra_mib"] = _peak_extra_mib(impl)
    benchmark.extra_info["one_map_mib"] = one_map_mib
    benchmark.pedantic(relation_step, args=(RELATION[impl], *values), warmup_rounds=1, rounds=5)
