"""Building and loading: without a compiler kd-kernels warns once and runs the reference; the
build is cached by source, ISA and torch version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import warnings, torch, kd_kernels
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    s, t = torch.randn(4, 9, requires_grad=True), torch.randn(4, 9)
    for _ in range(3):
        kd_kernels.softmax_kl(s, t, 2.0).backward()
    kd_kernels.relation_loss(*(torch.randn(1, 2, 5, 3) for _ in range(4)))
print(kd_kernels.backend("softmax_kl", "cpu"))
print(len([w for w in caught if "kd-kernels" in str(w.message)]), [str(w.message) for w in caught])
"""


def _run(env_changes: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_changes}
    env.pop("KD_KERNELS", None)
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)


def test_without_a_compiler_the_reference_runs_after_one_warning(tmp_path: Path) -> None:
    result = _run({"CXX": str(tmp_path / "no-such-compiler"), "KD_KERNELS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    backend_line, warning_line = result.stdout.strip().splitlines()
    assert "name='reference'" in backend_line and "no C++ compiler found" in backend_line
    assert warning_line.startswith("1 "), warning_line
    assert "using the pure-PyTorch reference" in warning_line


def test_a_cached_build_loads_without_compiling_again() -> None:
    from kd_kernels import build

    first = build.extension("cpu")
    assert first.loaded
    result = _run({})  # the same cache: no compile message
    assert result.returncode == 0, result.stderr
    assert "compiling" not in result.stderr and "name='fused'" in result.stdout


def test_the_build_command_runs_without_warnings() -> None:
    """``python -m kd_kernels.build`` (``make .venv``): no runpy RuntimeWarning about the module
    being imported by its package, and on a machine without CUDA a plain line, no warning."""
    import torch

    env = {**os.environ}
    env.pop("KD_KERNELS", None)
    result = subprocess.run([sys.executable, "-W", "error", "-m", "kd_kernels.build"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert result.stdout.startswith("kd_kernels_cpu: /"), result.stdout
    if not torch.cuda.is_available():
        assert "kd_kernels_cuda: not built (torch has no CUDA device here)" in result.stdout


def test_a_cuda_build_is_keyed_by_the_gpu_architectures(monkeypatch) -> None:
    """A shared cache must never load a CUDA build made for another GPU."""
    from kd_kernels import build

    flags = ["-O3", "-std=c++17"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    ampere, cpu = build._fingerprint("cuda", flags), build._fingerprint("cpu", flags)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert build.cuda_archs() == "9.0"
    assert build._fingerprint("cuda", flags) != ampere
    assert build._fingerprint("cpu", flags) == cpu
