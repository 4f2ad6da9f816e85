"""Building and loading: a built package loads the binary that fits this machine with no
compiler; where none fits (a source checkout, edited sources, another torch) the kernels are
compiled on first use and cached by build key; without a compiler kd-kernels warns once and runs
the reference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_kernels import build, toolchain

KERNELS = Path(__file__).resolve().parents[2] / "kernels"

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


def test_the_development_install_loads_the_binary_built_with_the_package() -> None:
    """``make .venv`` builds kd-kernels ahead of time (setup.py): the binary of this CPU's ISA
    loads from the package, with no first-use build."""
    loaded = build.extension("cpu")
    assert loaded.loaded, loaded
    assert loaded.path.parent == build.PACKAGE and loaded.path.name.startswith(f"_cpu_{toolchain.cpu_isa().lower()}.")
    assert loaded.origin == f"built with the package for {toolchain.cpu_isa()}"


@pytest.mark.parametrize(("change", "reason"), [
    ("sources", "the sources changed since they were built"),
    ("torch", "they were built for torch {built}, this is torch 9.9.9"),
])
def test_a_packaged_binary_that_no_longer_fits_is_not_loaded(monkeypatch: pytest.MonkeyPatch, change: str,
                                                              reason: str) -> None:
    built = torch.__version__
    if change == "sources":
        monkeypatch.setattr(toolchain, "sources_digest", lambda kind: "edited")
    else:
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    binary, why, key = build.packaged_binary("cpu")
    assert binary is None and key == {}
    assert why == "the package's binaries do not fit: " + reason.format(built=built)


def test_without_a_compiler_the_reference_runs_after_one_warning(tmp_path: Path) -> None:
    result = _run({"CXX": str(tmp_path / "no-such-compiler"), "KD_KERNELS_CACHE": str(tmp_path / "cache"),
                   "KD_KERNELS_PREBUILT": "0"})
    assert result.returncode == 0, result.stderr
    backend_line, warning_line = result.stdout.strip().splitlines()
    assert "name='reference'" in backend_line
    assert "no packaged binary (KD_KERNELS_PREBUILT=0) and no C++ compiler found" in backend_line
    assert warning_line.startswith("1 "), warning_line
    assert "using the pure-PyTorch reference" in warning_line


def test_the_first_use_build_is_cached_and_loads_without_compiling_again(tmp_path: Path) -> None:
    cache = {"KD_KERNELS_CACHE": str(tmp_path / "cache"), "KD_KERNELS_PREBUILT": "0"}
    first = _run(cache)
    assert first.returncode == 0, first.stderr
    assert "kd-kernels: compiling the CPU kernels for this machine" in first.stderr
    again = _run(cache)
    assert again.returncode == 0, again.stderr
    assert "compiling" not in again.stderr and "name='fused'" in again.stdout
    assert "compiled for this machine on first use, cached (no packaged binary: KD_KERNELS_PREBUILT=0)" in again.stdout


def test_the_build_command_runs_without_warnings() -> None:
    """``python -m kd_kernels.build``: no runpy RuntimeWarning about the module being imported by
    its package; the binary and where it comes from; on a machine without CUDA a plain line."""
    env = {**os.environ}
    env.pop("KD_KERNELS", None)
    result = subprocess.run([sys.executable, "-W", "error", "-m", "kd_kernels.build"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert result.stdout.startswith(f"kd_kernels_cpu: {build.PACKAGE}/_cpu_"), result.stdout
    assert "(built with the package for " in result.stdout
    if not torch.cuda.is_available():
        assert "kd_kernels_cuda: not built (torch has no CUDA device here)" in result.stdout


def test_a_cuda_build_is_keyed_by_the_gpu_architectures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared cache must never load a CUDA build made for another GPU."""
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    ampere, cpu = toolchain.build_key("cuda"), toolchain.build_key("cpu")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert toolchain.cuda_archs() == "9.0"
    assert toolchain.fingerprint(toolchain.build_key("cuda")) != toolchain.fingerprint(ampere)
    assert toolchain.fingerprint(toolchain.build_key("cpu")) == toolchain.fingerprint(cpu)


WHEEL_SCRIPT = """
import os, sys, torch, kd_kernels
from kd_kernels import build, reference
assert kd_kernels.__file__.startswith(sys.argv[1]), kd_kernels.__file__
import shutil
assert shutil.which("ninja") is None and shutil.which("c++") is None
s, t = torch.randn(37, 1001, requires_grad=True), torch.randn(37, 1001)
fused = kd_kernels.softmax_kl(s, t, 2.0)
(grad,) = torch.autograd.grad(fused, s)
expected = reference.softmax_kl(s, t, 2.0)
torch.testing.assert_close(fused, expected)
torch.testing.assert_close(grad, torch.autograd.grad(expected, s)[0])
q = [torch.randn(2, 3, 7, 5) for _ in range(4)]
torch.testing.assert_close(kd_kernels.relation_loss(*q), reference.relation_loss(*q))
print(build.extension("cpu").path)
"""


@pytest.mark.slow
def test_a_built_wheel_runs_the_fused_ops_with_no_compiler_and_no_ninja(tmp_path: Path) -> None:
    """``pip wheel`` builds the binaries into the wheel; installed elsewhere, with the compiler,
    ninja and every other program off PATH and an empty build cache, the fused ops load from it
    (``KD_KERNELS=fused``: a missing kernel would be an error), agree with the reference, and
    ``python -m kd_kernels.info`` names the binary."""
    source = tmp_path / "kernels"
    shutil.copytree(KERNELS, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "*.so", "prebuilt.json",
                                                                   "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "--no-deps",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, timeout=1200)
    (wheel,) = (tmp_path / "dist").glob("kd_kernels-*.whl")
    assert "-none-any" not in wheel.name, "a wheel with compiled binaries is platform-specific"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    nothing = tmp_path / "empty-path"
    nothing.mkdir()
    env = {"PATH": str(nothing), "PYTHONPATH": str(site), "HOME": str(tmp_path), "KD_KERNELS": "fused",
           "KD_KERNELS_CACHE": str(tmp_path / "cache")}
    ran = subprocess.run([sys.executable, "-c", WHEEL_SCRIPT, str(site)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr
    binary = Path(ran.stdout.strip())
    assert binary.parent == site / "kd_kernels" and binary.name.startswith(f"_cpu_{toolchain.cpu_isa().lower()}.")
    info = subprocess.run([sys.executable, "-m", "kd_kernels.info"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert info.returncode == 0, info.stderr
    assert f"softmax_kl on cpu: fused - kd_kernels_cpu ({binary}; built with the package for " in info.stdout
    assert "compilers: c++ missing" in info.stdout
    assert not (tmp_path / "cache").exists(), "nothing was compiled"


def test_no_packaged_binary_is_taken_for_a_python_module() -> None:
    """Tools that import every module of a package (mkdocstrings, pkgutil walkers) must never
    load a binary: the AVX512 one stops a CPU without AVX512 with an illegal instruction."""
    import importlib.machinery
    import pkgutil

    import kd_kernels

    binaries = list(json.loads(build.RECORD.read_text(encoding="utf-8")))
    assert binaries and all(name.endswith(toolchain.BINARY_SUFFIX) for name in binaries)
    assert not any(name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) for name in binaries)
    modules = {m.name.rpartition(".")[2] for m in pkgutil.walk_packages(kd_kernels.__path__)}
    assert not {name.split(".")[0] for name in binaries} & modules
