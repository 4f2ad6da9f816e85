"""The self-check a fused kernel passes on a device before ``KD_KERNELS=auto`` uses it there.

Each op runs through its compiled kernels and through :mod:`kd_kernels.reference` on small odd
shapes (rows and heads that fill no tile evenly, padding, per-row temperatures, every mode), in
fp32 and bf16, forward and backward; the op passes when its losses and gradients agree within the
tolerances below. The verdict is remembered beside the build it checked, per device
(``selfcheck-<device>.json``), so a machine checks a build once. The CUDA kernels are checked
this way because the GPU they run on may not be one they were ever tested on; ``python -m
kd_kernels.info`` shows each verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kd_kernels import reference

TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (3e-2, 3e-3)}
"""(relative, absolute) tolerance of losses and gradients per input dtype."""


@dataclass(frozen=True)
class Verdict:
    """Whether an op's kernels agreed with the reference on a device, and the worst case seen."""

    op: str
    device: str
    passed: bool
    detail: str


Case = tuple[str, Callable[..., torch.Tensor], Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]
"""A label, the fused and the reference function of the student's inputs, and those inputs."""


def _softmax_kl_cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
    from kd_kernels.dispatch import fused_softmax_kl

    generator = torch.Generator().manual_seed(0)
    rows, vocab = 37, 1031
    student = (3 * torch.randn(rows, vocab, generator=generator)).to(device, dtype)
    teacher = (3 * torch.randn(rows, vocab, generator=generator)).to(device, dtype)
    mask = (torch.rand(rows, generator=generator) > 0.2).to(device)
    per_row = (1 + 3 * torch.rand(rows, generator=generator)).to(device)
    cases = []
    for mode in ("kl", "ce"):
        for temperature in (2.0, per_row):
            label = f"softmax_kl mode={mode} T={'per-row' if isinstance(temperature, torch.Tensor) else temperature}"
            cases.append((label,
                          lambda x, t=temperature, m=mode: fused_softmax_kl(x, teacher, t, mask, m),
                          lambda x, t=temperature, m=mode: reference.softmax_kl(x, teacher, t, mask, m)))
    return [(label, fused, ref, (student,)) for label, fused, ref in cases]


def _relation_cases(device: torch.device, dtype: torch.dtype) -> list[Case]:
    from kd_kernels.dispatch import fused_relation_loss

    generator = torch.Generator().manual_seed(1)
    batch, heads, length, d_s, d_t = 2, 3, 37, 24, 40

    def tensor(d: int) -> torch.Tensor:
        return torch.randn(batch, heads, length, d, generator=generator).to(device, dtype)

    xs, ys, xt, yt = tensor(d_s), tensor(d_s), tensor(d_t), tensor(d_t)
    mask = torch.ones(batch, length, device=device)
    mask[1, 29:] = 0
    cases = []
    scales = (d_s ** -0.5, d_t ** -0.5)
    for kind in ("kl", "ce", "mse"):
        cases.append((f"relation_loss kind={kind}",
                      lambda a, b, k=kind: fused_relation_loss(a, b, xt, yt, mask, k, *scales),
                      lambda a, b, k=kind: reference.relation_loss(a, b, xt, yt, mask, k, *scales),
                      (xs, ys)))
    return cases


CASES = {"softmax_kl": _softmax_kl_cases, "relation_loss": _relation_cases}
"""The cases of each op, built for a device and dtype."""


@torch.compiler.disable
def run_self_check(op: str, device: torch.device | str) -> Verdict:
    """Compare ``op``'s compiled kernels with the reference on ``device`` (losses and the
    gradients of the student's inputs, fp32 and bf16), whatever grad, inference or autocast
    mode the caller is in."""
    device = torch.device(device)
    checked = 0
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for dtype, (rtol, atol) in TOLERANCES.items():
            for label, fused, ref, inputs in CASES[op](device, dtype):
                failure = _compare(label, dtype, fused, ref, inputs, rtol, atol)
                if failure is not None:
                    return Verdict(op, str(device), False, failure)
                checked += 1
    return Verdict(op, str(device), True, f"{checked} cases agree with the reference")


def _compare(label: str, dtype: torch.dtype, fused: Callable[..., torch.Tensor], ref: Callable[..., torch.Tensor],
             inputs: tuple[torch.Tensor, ...], rtol: float, atol: float) -> str | None:
    """Why the fused function disagrees with the reference on ``inputs``, or None."""
    try:
        outputs = []
        for function in (fused, ref):
            leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
            loss = function(*leaves)
            outputs.append([loss.detach().float(), *(g.float() for g in torch.autograd.grad(loss, leaves))])
    except Exception as exc:  # a kernel that crashes fails its check, with the reason
        return f"{label} {dtype}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    for name, got, want in zip(("loss", *(f"grad{i}" for i in range(len(inputs)))), *outputs, strict=True):
        if not torch.allclose(got, want, rtol=rtol, atol=atol):
            return (f"{label} {dtype}: {name} differs by {float((got - want).abs().max()):.3g} "
                    f"(tolerance rtol {rtol}, atol {atol})")
    return None


def device_key(device: torch.device | str) -> str:
    """A file-name-safe name of the device model (``cuda-NVIDIA-H200-sm90``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(index)).strip("-")
    major, minor = torch.cuda.get_device_capability(index)
    return f"cuda-{name}-sm{major}{minor}"


def remembered_self_check(op: str, device: torch.device | str, state_dir: Path) -> Verdict:
    """``op``'s verdict on ``device`` for the build whose state folder is ``state_dir``
    (:attr:`kd_kernels.build.Extension.state_dir`): read from ``selfcheck-<device>.json`` there,
    or run now and written there."""
    record = state_dir / f"selfcheck-{device_key(device)}.json"
    verdicts = _read_verdicts(record)
    if op in verdicts:
        return Verdict(**verdicts[op])
    verdict = run_self_check(op, device)
    verdicts = {**_read_verdicts(record), op: asdict(verdict)}  # another process may have added one meanwhile
    # an unwritable folder: the check runs again in the next process
    with contextlib.suppress(OSError):
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=state_dir, prefix=f".{record.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(verdicts, indent=2) + "\n")
        os.replace(temporary, record)
    return verdict


def _read_verdicts(record: Path) -> dict[str, dict]:
    """The verdicts a record holds; an unreadable one counts as none (they are checked again)."""
    try:
        verdicts = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdicts if isinstance(verdicts, dict) else {}
