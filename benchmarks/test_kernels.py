"""The fused kernels against the eager reference and torch.compile of it, side by side in one
run, on the issue's shapes: ``softmax_kl`` forward+backward over fp32 [4096, 30522] at T=4,
``relation_loss`` as MiniLM's value relation at B=8, H=12, L=512, d=32, and the token-level
divergences of decoder LMs (kl, reverse_kl, jsd) over fp32 [4096, 49152] at T=2 beside TRL's
loss, and the same from hidden states and LM heads (``fused_linear`` against the logits made
first), with the peak extra memory of each implementation. Run with ``make bench``; ratios land in
the results JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.kernel_cases import (
    RELATION_SHAPE,
    SOFTMAX_TEMPERATURE,
    TOKEN_LOSSES,
    TOKEN_SHAPE,
    implementations,
    linear_implementations,
    linear_inputs,
    linear_step,
    relation_inputs,
    relation_step,
    softmax_inputs,
    softmax_step,
    token_implementations,
    token_inputs,
    token_step,
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


def _peak_extra_mib(*case: str) -> float:
    result = subprocess.run([sys.executable, "-m", "benchmarks.memory_probe", *case], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", list(RELATION))
def test_value_relation_forward_backward(benchmark, values, impl: str) -> None:
    benchmark.group = "relation_loss value relation fp32 B=8 H=12 L=512 d=32, forward+backward"
    batch, heads, length, _ = RELATION_SHAPE
    one_map_mib = batch * heads * length * length * 4 / 2**20
    benchmark.extra_info["peak_extra_mib"] = _peak_extra_mib("relation", impl)
    benchmark.extra_info["one_map_mib"] = one_map_mib
    benchmark.pedantic(relation_step, args=(RELATION[impl], *values), warmup_rounds=1, rounds=5)


@pytest.fixture(scope="module")
def token_logits():
    return token_inputs()


@pytest.mark.parametrize("impl", ["kd", "eager", "compiled", "trl"])
@pytest.mark.parametrize("loss", list(TOKEN_LOSSES))
def test_token_divergence_forward_backward(benchmark, token_logits, loss: str, impl: str) -> None:
    benchmark.group = f"{loss} fp32 [4096, 49152] T=2, forward+backward"
    rows, vocabulary = TOKEN_SHAPE
    benchmark.extra_info["peak_extra_mib"] = _peak_extra_mib("token", loss, impl)
    benchmark.extra_info["one_logits_mib"] = rows * vocabulary * 4 / 2**20
    benchmark.pedantic(token_step, args=(token_implementations(loss)[impl], *token_logits), warmup_rounds=1,
                       rounds=3)


@pytest.fixture(scope="module")
def heads():
    return linear_inputs()


@pytest.mark.parametrize("impl", ["kd", "eager", "compiled", "trl"])
@pytest.mark.parametrize("loss", list(TOKEN_LOSSES))
def test_fused_linear_divergence_forward_backward(benchmark, heads, loss: str, impl: str) -> None:
    benchmark.group = f"{loss} from hidden [4096, 576] and heads [49152, 576] T=2, forward+backward"
    benchmark.extra_info["peak_extra_mib"] = _peak_extra_mib("linear", loss, impl)
    benchmark.pedantic(linear_step, args=(linear_implementations(loss)[impl], *heads), warmup_rounds=1, rounds=3)
