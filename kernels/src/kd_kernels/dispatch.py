"""The public ops and the choice of implementation behind them.

``KD_KERNELS=auto`` (the default) runs the fused kernel where one is built for the device and
the reference elsewhere, with one warning when a build failed; on CUDA, a fused kernel runs only
once it passed its self-check on that GPU (:mod:`kd_kernels.selfcheck`, remembered per build and
device). ``fused`` makes a missing kernel an error and skips the self-check; ``reference``
always runs :mod:`kd_kernels.reference`. On CUDA, ``relation_loss`` also
runs the reference, after one warning per shape, for head sizes whose shared memory the device
cannot give a block (:func:`cuda_relation_fits`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from kd_kernels import reference
from kd_kernels.ops import compute_dtype

# kd_kernels.build is imported where it is used, not here: ``python -m kd_kernels.build`` would
# otherwise find the module already imported by the package (runpy's RuntimeWarning).

OPS = ("softmax_kl", "relation_loss")
CHOICES = ("auto", "fused", "reference")
Temperature = float | torch.Tensor


@dataclass(frozen=True)
class Backend:
    """Which implementation of an op runs on a device, and why."""

    name: str  # "fused" or "reference"
    reason: str

    @property
    def fused(self) -> bool:
        return self.name == "fused"


def _choice() -> str:
    choice = os.environ.get("KD_KERNELS", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"KD_KERNELS={choice!r} is not one of {', '.join(CHOICES)}")
    return choice


_DECISIONS: dict[tuple[str, str, str], Backend] = {}


def backend(op: str, device: torch.device | str) -> Backend:
    """The implementation ``op`` runs with on ``device`` ("cpu", "cuda", ...), and why."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; kd-kernels has {', '.join(OPS)}")
    kind = torch.device(device).type
    key = (op, kind, _choice())
    if key not in _DECISIONS:
        _DECISIONS[key] = _decide(op, kind, key[2])
    return _DECISIONS[key]


@torch.compiler.assume_constant_result
def _fused_on(op: str, device_type: str) -> bool:
    return backend(op, device_type).fused


def _fused(op: str, x: torch.Tensor) -> bool:
    """Whether ``op`` runs fused for inputs like ``x`` (a constant for torch.compile's tracing).
    The CUDA kernels take fp32, fp16 and bf16; float64 on a GPU runs the reference."""
    if x.device.type == "cuda" and x.dtype == torch.float64:
        return False
    return _fused_on(op, x.device.type)


def _self_checked(op: str, built: Any) -> Backend:
    """``auto`` on CUDA: the fused kernel only once it passed its self-check on this GPU."""
    from kd_kernels.build import KernelWarning
    from kd_kernels.selfcheck import device_key, remembered_self_check

    verdict = remembered_self_check(op, "cuda", built.state_dir)
    if verdict.passed:
        return Backend("fused", f"{built.name} ({built.path}; {built.origin}), self-check passed on "
                                f"{device_key('cuda')}: {verdict.detail}")
    warnings.warn(f"kd-kernels: the fused CUDA {op} failed its self-check on {device_key('cuda')} ({verdict.detail}); "
                  "using the pure-PyTorch reference (KD_KERNELS=fused forces the kernel)", KernelWarning, stacklevel=5)
    return Backend("reference", f"self-check failed on {device_key('cuda')}: {verdict.detail}")


def _decide(op: str, kind: str, choice: str) -> Backend:
    from kd_kernels import build

    if choice == "reference":
        return Backend("reference", "KD_KERNELS=reference")
    if kind not in ("cpu", "cuda"):
        unavailable = f"no fused kernels for {kind} devices"
    else:
        built = build.extension(kind)
        if built.loaded and kind == "cpu":
            return Backend("fused", f"{built.name} ({built.path}; {built.origin})")
        if built.loaded and choice == "fused":
            return Backend("fused", f"{built.name} ({built.path}; {built.origin}), KD_KERNELS=fused: no self-check")
        if built.loaded:
            return _self_checked(op, built)
        unavailable = built.error or "not built"
    if choice == "fused":
        raise RuntimeError(f"KD_KERNELS=fused, but the fused {kind} kernels are unavailable: {unavailable}")
    return Backend("reference", unavailable)


def _same_dtype(dtype: torch.dtype, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs as they are when they share a dtype, else all in the compute ``dtype`` (the
    reference's choice): the kernels read every input in one dtype, and an fp32 teacher must not
    be rounded to a bf16 student's dtype."""
    if len({x.dtype for x in tensors}) == 1:
        return tensors
    return tuple(x.to(dtype) for x in tensors)


# The launch geometry of csrc/cuda/relation_loss.cu (its kRows and kTile).
CUDA_RELATION_ROWS = 64
CUDA_RELATION_TILE = 32
CUDA_MAX_BLOCKS = 2**31 - 1


def cuda_relation_shared_bytes(d_s: int, d_t: int) -> int:
    """Dynamic shared memory per block (bytes) the CUDA ``relation_loss`` kernels need for head
    sizes ``d_s`` and ``d_t``: the largest of the forward and the two backward kernels, as
    ``relation_loss_shared_bytes`` in csrc/cuda/relation_loss.cu computes it."""
    rows, tile = CUDA_RELATION_ROWS, CUDA_RELATION_TILE
    forward = (tile + rows) * (d_s + d_t) + tile
    backward_queries = forward + rows * d_s
    backward_keys = backward_queries + 4 * tile
    return 4 * max(forward, backward_queries, backward_keys)


def cuda_relation_fits(d_s: int, d_t: int, batch_heads: int, length: int, smem_limit: int) -> bool:
    """Whether the CUDA ``relation_loss`` kernels can run heads of sizes ``d_s``/``d_t``,
    ``batch_heads`` = B * H of them, ``length`` tokens long, on a device whose opt-in shared
    memory per block is ``smem_limit`` bytes (``cudaDevAttrMaxSharedMemoryPerBlockOptin``): the
    shared memory must fit, and the one-dimensional grid (a block per 64 rows of each head) must
    have at most 2^31 - 1 blocks."""
    blocks = -(-length // CUDA_RELATION_ROWS) * batch_heads
    return cuda_relation_shared_bytes(d_s, d_t) <= smem_limit and blocks <= CUDA_MAX_BLOCKS


@torch.compiler.assume_constant_result
def _cuda_relation_runs(d_s: int, d_t: int, batch_heads: int, length: int, device_index: int) -> bool:
    limit = torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin
    if cuda_relation_fits(d_s, d_t, batch_heads, length, limit):
        return True
    key = (d_s, d_t, batch_heads, length, device_index)
    if key not in _MISFITS:
        _MISFITS.add(key)
        from kd_kernels.build import KernelWarning

        needed = cuda_relation_shared_bytes(d_s, d_t)
        reason = (f"head sizes d_s={d_s}, d_t={d_t} need {needed} bytes of shared memory per block, "
                  f"cuda:{device_index} allows {limit}" if needed > limit
                  else f"{batch_heads} heads of length {length} need more than 2^31 - 1 blocks")
        warnings.warn(f"kd-kernels: relation_loss does not fit the CUDA kernels ({reason}); "
                      "using the pure-PyTorch reference", KernelWarning, stacklevel=4)
    return False


_MISFITS: set[tuple[int, ...]] = set()


def _relation_fused(xs: torch.Tensor, xt: torch.Tensor) -> bool:
    """Whether ``relation_loss`` runs fused for student ``xs`` and teacher ``xt``."""
    if not _fused("relation_loss", xs):
        return False
    if xs.device.type != "cuda" or xs.dim() != 4 or xt.dim() != 4:
        return True  # (wrong shapes are reported by the op)
    batch, heads, length, d_s = xs.shape
    return _cuda_relation_runs(d_s, xt.shape[-1], batch * heads, length, xs.device.index)  # a tensor's index is set


def _gradient_in_forward(student: torch.Tensor) -> bool:
    """Whether the fused ``softmax_kl`` computes the student's gradient in its forward, while each
    row is in cache (``kd::softmax_kl_with_grad``): on CPU, when the gradient will be needed.
    Otherwise it computes the loss and the statistics its backward needs, and nothing more."""
    return student.device.type == "cpu" and student.requires_grad and torch.is_grad_enabled()


def softmax_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: Temperature = 1.0,
               mask: torch.Tensor | None = None, mode: str = "kl") -> torch.Tensor:
    """Temperature-softmax distillation of logits [..., V] with rows [...] and a row ``mask``.

    ``mode="kl"``: ``T^2 * mean_rows KL(p_T || p_S)``; ``mode="ce"``: ``mean_rows -sum p_T log p_S``;
    ``temperature`` a float or a per-row tensor. The same formula as
    :func:`kd_kernels.reference.softmax_kl`, which runs instead when no fused kernel is available
    or when the teacher requires a gradient (the fused kernels differentiate the student only).
    On CPU, a student that needs a gradient gets it computed in the forward
    (``kd::softmax_kl_with_grad``); otherwise only the loss and its statistics are computed.
    """
    if mode not in ("kl", "ce"):
        raise ValueError(f"softmax_kl mode must be 'kl' or 'ce', got {mode!r}")
    if teacher_logits.requires_grad or not _fused("softmax_kl", student_logits):
        return reference.softmax_kl(student_logits, teacher_logits, temperature, mask, mode)
    return fused_softmax_kl(student_logits, teacher_logits, temperature, mask, mode)


def fused_softmax_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: Temperature = 1.0,
                     mask: torch.Tensor | None = None, mode: str = "kl") -> torch.Tensor:
    """:func:`softmax_kl` through the compiled kernels, whatever the backend choice (the
    self-check compares it with the reference before ``auto`` trusts it)."""
    dtype = compute_dtype(student_logits)
    student_logits, teacher_logits = _same_dtype(dtype, student_logits, teacher_logits)
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.reshape(-1, vocab)
    rows = student.shape[0]
    if isinstance(temperature, torch.Tensor):
        inv_temperature = (1.0 / temperature.to(dtype)).reshape(-1).expand(rows).contiguous()
    else:
        inv_temperature = torch.full((rows,), 1.0 / float(temperature), dtype=dtype, device=student.device)
    real = (torch.ones(rows, dtype=dtype, device=student.device) if mask is None
            else mask.reshape(-1).to(dtype))
    row_weight = real / real.sum().clamp(min=1)
    if _gradient_in_forward(student):
        loss, _ = torch.ops.kd.softmax_kl_with_grad(student, teacher, inv_temperature, row_weight, mode)
        return loss
    loss, _, _ = torch.ops.kd.softmax_kl(student, teacher, inv_temperature, row_weight, mode)
    return loss


def relation_loss(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
                  mask: torch.Tensor | None = None, kind: str = "kl", scale_s: float | None = None,
                  scale_t: float | None = None) -> torch.Tensor:
    """Distance between per-head relations ``R = scale * X Y^T`` of student ([B, H, L, d_s]) and
    teacher ([B, H, L, d_t]) over real keys and queries: "kl", "ce" or "mse", ``scale`` defaulting
    to ``1/sqrt(d)`` per side. The formula of :func:`kd_kernels.reference.relation_loss`; the
    fused kernels compute it tile by tile and never hold an [L, L] matrix per head."""
    if kind not in ("kl", "ce", "mse"):
        raise ValueError(f"relation_loss kind must be 'kl', 'ce' or 'mse', got {kind!r}")
    scale_s = xs.shape[-1] ** -0.5 if scale_s is None else float(scale_s)
    scale_t = xt.shape[-1] ** -0.5 if scale_t is None else float(scale_t)
    if xt.requires_grad or yt.requires_grad or not _relation_fused(xs, xt):
        return reference.relation_loss(xs, ys, xt, yt, mask, kind, scale_s, scale_t)
    return fused_relation_loss(xs, ys, xt, yt, mask, kind, scale_s, scale_t)


def fused_relation_loss(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
                        mask: torch.Tensor | None, kind: str, scale_s: float, scale_t: float) -> torch.Tensor:
    """:func:`relation_loss` through the compiled kernels, whatever the backend choice (the
    self-check compares it with the reference before ``auto`` trusts it)."""
    batch, heads, length = xs.shape[:3]
    dtype = compute_dtype(xs)
    xs, ys, xt, yt = _same_dtype(dtype, xs, ys, xt, yt)
    real = (torch.ones(batch, length, dtype=dtype, device=xs.device) if mask is None else mask.to(dtype))
    lengths = real.sum(-1)
    count = heads * ((lengths**2).sum() if kind == "mse" else lengths.sum())
    loss, _, _ = torch.ops.kd.relation_loss(xs, ys, xt, yt, real, real / count.clamp(min=1), scale_s, scale_t, kind)
    return loss
