"""The self-check ``KD_KERNELS=auto`` needs before it trusts a CUDA kernel: it passes for the
real kernels (run here on the CPU build, the only one this machine has), fails for a kernel that
is off, is remembered per build and device, and decides the backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kd_kernels import build, dispatch, selfcheck
from kd_kernels.build import Extension, KernelWarning


@pytest.fixture
def cpu_kernels() -> Extension:
    built = build.extension("cpu")
    if not built.loaded:
        pytest.skip(f"the CPU kernels are not built here: {built.error}")
    return built


@pytest.mark.parametrize("op", ["softmax_kl", "relation_loss"])
def test_the_built_kernels_pass_their_self_check(cpu_kernels: Extension, op: str) -> None:
    verdict = selfcheck.run_self_check(op, "cpu")
    assert verdict.passed, verdict.detail
    assert verdict.detail == f"{len(selfcheck.TOLERANCES) * len(selfcheck.CASES[op]('cpu', torch.float32))} cases " \
                             "agree with the reference"


def test_the_check_runs_whatever_mode_the_caller_is_in(cpu_kernels: Extension) -> None:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert selfcheck.run_self_check("relation_loss", "cpu").passed


def test_a_kernel_that_is_slightly_off_fails_with_the_case_and_the_error(cpu_kernels: Extension,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = dispatch.fused_softmax_kl
    monkeypatch.setattr(dispatch, "fused_softmax_kl", lambda *args: real(*args) * (1 + 1e-3))
    verdict = selfcheck.run_self_check("softmax_kl", "cpu")
    assert not verdict.passed
    assert verdict.detail.startswith("softmax_kl mode=kl T=2.0 torch.float32: loss differs by ")
    monkeypatch.setattr(dispatch, "fused_relation_loss", lambda *args: 1 / 0)
    assert "ZeroDivisionError: division by zero" in selfcheck.run_self_check("relation_loss", "cpu").detail


def test_a_verdict_is_remembered_in_the_builds_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(op, device):
        calls.append(op)
        return selfcheck.Verdict(op, str(device), op == "softmax_kl", "fake")

    monkeypatch.setattr(selfcheck, "run_self_check", fake)
    for _ in range(2):
        assert selfcheck.remembered_self_check("softmax_kl", "cpu", tmp_path).passed
        assert not selfcheck.remembered_self_check("relation_loss", "cpu", tmp_path).passed
    assert calls == ["softmax_kl", "relation_loss"], "the second process reads the file"
    assert (tmp_path / "selfcheck-cpu.json").is_file()


def test_an_unreadable_record_counts_as_no_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "selfcheck-cpu.json").write_text('{"softmax_kl": {"op": "softm')  # cut short by a crash
    monkeypatch.setattr(selfcheck, "run_self_check", lambda op, device: selfcheck.Verdict(op, "cpu", True, "rerun"))
    assert selfcheck.remembered_self_check("softmax_kl", "cpu", tmp_path).detail == "rerun"
    assert json.loads((tmp_path / "selfcheck-cpu.json").read_text())["softmax_kl"]["detail"] == "rerun"


@pytest.mark.parametrize("passed", [True, False])
def test_auto_takes_a_cuda_kernel_only_after_its_self_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            passed: bool) -> None:
    library = tmp_path / "kd_kernels_cuda.so"
    monkeypatch.setenv("KD_KERNELS_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "extension", lambda kind: Extension("kd_kernels_cuda", library, fingerprint="f00d"))
    monkeypatch.setattr(selfcheck, "device_key", lambda device: "cuda-Test-GPU-sm90")
    monkeypatch.setattr(selfcheck, "run_self_check",
                        lambda op, device: selfcheck.Verdict(op, "cuda", passed, "14 cases" if passed else "loss off"))
    monkeypatch.setattr(dispatch, "_DECISIONS", {})
    monkeypatch.setenv("KD_KERNELS", "auto")
    if passed:
        choice = dispatch.backend("softmax_kl", "cuda")
        assert choice.fused and "self-check passed on cuda-Test-GPU-sm90: 14 cases" in choice.reason
    else:
        with pytest.warns(KernelWarning, match=r"the fused CUDA softmax_kl failed its self-check on "
                                               r"cuda-Test-GPU-sm90 \(loss off\); using the pure-PyTorch reference"):
            choice = dispatch.backend("softmax_kl", "cuda")
        assert choice.name == "reference" and choice.reason == "self-check failed on cuda-Test-GPU-sm90: loss off"
    assert (tmp_path / "kd_kernels_cuda-f00d" / "selfcheck-cuda-Test-GPU-sm90.json").is_file()
    monkeypatch.setenv("KD_KERNELS", "fused")
    assert dispatch.backend("softmax_kl", "cuda").reason.endswith("KD_KERNELS=fused: no self-check")
