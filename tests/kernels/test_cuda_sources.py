"""The CUDA device code compiles with nvcc for sm_80 and sm_90. The .cu files include no torch
headers, so this runs on machines whose torch has no CUDA (CI); it skips only without nvcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import kd_kernels

CUDA_SOURCES = Path(kd_kernels.__file__).resolve().parent / "csrc" / "cuda"


@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("source", sorted(p.name for p in CUDA_SOURCES.glob("*.cu")))
def test_device_code_compiles(source: str, arch: str, tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    command = [nvcc, "-std=c++17", "-O3", "-Werror", "all-warnings", f"-gencode=arch=compute_{arch},code=sm_{arch}",
               "-c", str(CUDA_SOURCES / source), "-o", str(tmp_path / f"{source}.o")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_device_code_includes_no_torch_headers() -> None:
    for path in [*CUDA_SOURCES.glob("*.cu"), *CUDA_SOURCES.glob("*.cuh")]:
        text = path.read_text()
        assert "<torch/" not in text and "<ATen/" not in text and "<c10/" not in text, path.name
