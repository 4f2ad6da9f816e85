"""Token-level divergences over large vocabularies, computed a chunk of rows at a time.

A decoder LM's distillation loss reads rows of 49k to 256k logits per token, and an eager
``log_softmax`` + divergence holds several ``[N, V]`` tensors at once, forward and backward.
:func:`chunked` evaluates any of kd's row-averaged logit losses (``reference.softmax_kl``,
``reference.reverse_kl``, ``reference.jsd``: the formulas stay the reference's, written once)
on ``chunk_rows`` rows at a time and writes the student's gradient in the forward, chunk by
chunk, into the one ``[N, V]`` buffer autograd must return anyway (Liger-Kernel's approach). The
loss's extra memory is then O(chunk_rows x V); the backward only scales that buffer (in place,
unless the graph is kept). The value is the reference's mean over real rows: each chunk's mean
weighted by its share of the real rows.

:func:`fused_linear` goes one step further (Liger-Kernel's fused linear JSD is the peer): it
takes the last hidden states and LM-head weights of both sides and makes each chunk's logits
itself, so no ``[N, V]`` logits exist at all; its gradients are those of the student's hidden
states and head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from kd_kernels.ops import compute_dtype, scaled_gradient

CHUNK_ELEMENTS = 2**22
"""Logits per chunk by default (16 MiB of fp32): ``chunk_rows = CHUNK_ELEMENTS // V``."""

RowLoss = Callable[..., torch.Tensor]
Temperature = float | torch.Tensor


def default_chunk_rows(vocabulary: int) -> int:
    """Rows per chunk for a vocabulary of ``vocabulary`` logits: about :data:`CHUNK_ELEMENTS` logits."""
    return max(1, CHUNK_ELEMENTS // max(1, vocabulary))


def _rows_per_chunk(chunk_rows: int | None, vocabulary: int) -> int:
    chunk_rows = chunk_rows or default_chunk_rows(vocabulary)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    return chunk_rows


def _per_row(temperature: Temperature) -> bool:
    return isinstance(temperature, torch.Tensor) and temperature.dim() > 0


def _chunks(rows: int, chunk_rows: int, temperature: Temperature,
            mask: torch.Tensor | None) -> Iterator[tuple[slice, Temperature, torch.Tensor | None, float]]:
    """Each chunk of ``rows``: its rows, temperature and mask, and its share of the real rows (the
    weight of its mean in the mean over every real row; 0 for a chunk of padding only)."""
    per_row = _per_row(temperature)
    real = rows if mask is None else int(mask.bool().sum())
    for start in range(0, rows, chunk_rows):
        piece = slice(start, start + chunk_rows)
        piece_mask = None if mask is None else mask[piece]
        count = min(chunk_rows, rows - start) if piece_mask is None else int(piece_mask.bool().sum())
        yield piece, temperature[piece] if per_row else temperature, piece_mask, count / max(real, 1)


class _ChunkedLoss(torch.autograd.Function):
    """The chunked forward (loss and student gradient) and the scaling backward of :func:`chunked`."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, temperature: Temperature,
                mask: torch.Tensor | None, loss: RowLoss, chunk_rows: int, options: dict[str, Any],
                want_grad: bool) -> torch.Tensor:
        # in the student's dtype: each chunk's gradient comes back in it (the loss upcasts inside)
        grad = torch.empty_like(student, memory_format=torch.contiguous_format) if want_grad else None
        total = torch.zeros((), dtype=compute_dtype(student), device=student.device)
        for piece, piece_temperature, piece_mask, share in _chunks(student.shape[0], chunk_rows, temperature, mask):
            if not share:
                if grad is not None:
                    grad[piece].zero_()
                continue
            s = student[piece].detach().requires_grad_(grad is not None)
            with torch.enable_grad():
                value = loss(s, teacher[piece], piece_temperature, piece_mask, **options) * share
            if grad is not None:
                (piece_grad,) = torch.autograd.grad(value, s)
                grad[piece].copy_(piece_grad)
            total += value.detach()
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor | None) -> tuple:
        (grad,) = ctx.saved_tensors
        if grad_loss is None or grad is None:
            return (None,) * 8
        if torch.is_grad_enabled():  # create_graph=True: the gradient was computed in the forward, without a graph
            raise RuntimeError("kd_kernels.chunked computed the student's gradient in the forward and has no double "
                               "backward (create_graph=True); call the loss itself for it")
        return scaled_gradient(grad, grad_loss), None, None, None, None, None, None, None


def chunked(loss: RowLoss, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: Temperature = 1.0, mask: torch.Tensor | None = None, chunk_rows: int | None = None,
            **options: Any) -> torch.Tensor:
    """``loss(student_logits, teacher_logits, temperature, mask, **options)``, a mean over real
    rows of logits ``[..., V]`` (row mask and per-row temperature ``[...]``), computed
    ``chunk_rows`` rows at a time (default :func:`default_chunk_rows`) so that its extra memory is
    O(chunk_rows x V) beyond the student's gradient.

    Runs ``loss`` itself, unchunked, where chunking cannot help or cannot apply: inputs of at most
    one chunk, a teacher or temperature that requires a gradient (only the student side is
    differentiated here), or under torch.compile (which traces and fuses the reference). There is
    no double backward through the chunked path.
    """
    vocabulary = student_logits.shape[-1]
    chunk_rows = _rows_per_chunk(chunk_rows, vocabulary)
    rows = student_logits.numel() // max(1, vocabulary)
    if (rows <= chunk_rows or teacher_logits.requires_grad or torch.compiler.is_compiling()
            or (isinstance(temperature, torch.Tensor) and temperature.requires_grad)):
        return loss(student_logits, teacher_logits, temperature, mask, **options)
    want_grad = torch.is_grad_enabled() and student_logits.requires_grad
    return _ChunkedLoss.apply(student_logits.reshape(rows, vocabulary), teacher_logits.reshape(rows, vocabulary),
                              temperature.reshape(rows) if _per_row(temperature) else temperature,
                              None if mask is None else mask.reshape(rows), loss, chunk_rows, options, want_grad)


class _FusedLinearLoss(torch.autograd.Function):
    """The chunked forward (loss and the gradients of the student's hidden states and head) and
    the scaling backward of :func:`fused_linear`."""

    @staticmethod
    def forward(ctx: Any, hidden_S: torch.Tensor, weight_S: torch.Tensor, bias_S: torch.Tensor | None,
                hidden_T: torch.Tensor, weight_T: torch.Tensor, bias_T: torch.Tensor | None,
                temperature: Temperature, mask: torch.Tensor | None, loss: RowLoss, chunk_rows: int,
                options: dict[str, Any], want_grad: bool) -> torch.Tensor:
        student_side = (hidden_S, weight_S, bias_S)
        wanted = [want_grad and ctx.needs_input_grad[i] and x is not None for i, x in enumerate(student_side)]
        # the hidden states' rows are written once; the head's gradients add up over the chunks, in
        # the compute dtype (bf16 sums over thousands of chunks would lose the small ones)
        grads = [None if not need else torch.zeros_like(x) if i == 0 else torch.zeros_like(x, dtype=compute_dtype(x))
                 for i, (need, x) in enumerate(zip(wanted, student_side, strict=True))]
        total = torch.zeros((), dtype=compute_dtype(hidden_S), device=hidden_S.device)
        head = [weight_S.detach().requires_grad_(wanted[1]),
                None if bias_S is None else bias_S.detach().requires_grad_(wanted[2])]
        for piece, piece_temperature, piece_mask, share in _chunks(hidden_S.shape[0], chunk_rows, temperature, mask):
            if not share:
                continue
            h = hidden_S[piece].detach().requires_grad_(wanted[0])
            teacher = F.linear(hidden_T[piece], weight_T, bias_T)
            with torch.enable_grad():
                value = loss(F.linear(h, *head), teacher, piece_temperature, piece_mask, **options) * share
            inputs = [x for x, need in zip((h, *head), wanted, strict=True) if need]
            if inputs:
                found = iter(torch.autograd.grad(value, inputs))
                for i, need in enumerate(wanted):
                    if need:
                        (grads[i][piece] if i == 0 else grads[i]).add_(next(found))
            total += value.detach()
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.wanted = wanted
        ctx.dtypes = [None if x is None else x.dtype for x in student_side]
        return total

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor | None) -> tuple:
        saved = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 12
        if torch.is_grad_enabled():
            raise RuntimeError("kd_kernels.fused_linear computed its gradients in the forward and has no double "
                               "backward (create_graph=True); call the loss on the logits for it")
        scaled = [scaled_gradient(grad, grad_loss).to(dtype) if need else None
                  for grad, need, dtype in zip(saved, ctx.wanted, ctx.dtypes, strict=True)]
        return (*scaled, None, None, None, None, None, None, None, None, None)


def fused_linear(loss: RowLoss, hidden_S: torch.Tensor, weight_S: torch.Tensor, hidden_T: torch.Tensor,
                 weight_T: torch.Tensor, temperature: Temperature = 1.0, mask: torch.Tensor | None = None,
                 chunk_rows: int | None = None, bias_S: torch.Tensor | None = None,
                 bias_T: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
    """``loss(hidden_S @ weight_S.T + bias_S, hidden_T @ weight_T.T + bias_T, temperature, mask,
    **options)`` without the ``[N, V]`` logits: hidden states ``[..., d_S]`` / ``[..., d_T]``,
    LM heads ``[V, d_S]`` / ``[V, d_T]``, row mask and per-row temperature ``[...]``. Each chunk
    of ``chunk_rows`` rows (default :func:`default_chunk_rows`) makes its own logits, loss and
    gradients (the student's hidden states, head weight and bias; the teacher side is not
    differentiated), so the extra memory is O(chunk_rows x V) beyond those gradients.

    Runs the unchunked formula where the teacher side or the temperature requires a gradient,
    or under torch.compile. There is no double backward through the chunked path.
    """
    vocabulary = weight_S.shape[0]
    if weight_T.shape[0] != vocabulary:
        raise ValueError(f"the heads must share a vocabulary: student {vocabulary}, teacher {weight_T.shape[0]}")
    chunk_rows = _rows_per_chunk(chunk_rows, vocabulary)
    teacher_side = [x for x in (hidden_T, weight_T, bias_T) if x is not None]
    if (any(x.requires_grad for x in teacher_side) or torch.compiler.is_compiling()
            or (isinstance(temperature, torch.Tensor) and temperature.requires_grad)):
        return loss(F.linear(hidden_S, weight_S, bias_S), F.linear(hidden_T, weight_T, bias_T), temperature, mask,
                    **options)
    rows = hidden_S.numel() // max(1, hidden_S.shape[-1])
    return _FusedLinearLoss.apply(
        hidden_S.reshape(rows, -1), weight_S, bias_S, hidden_T.reshape(rows, -1), weight_T, bias_T,
        temperature.reshape(rows) if _per_row(temperature) else temperature,
        None if mask is None else mask.reshape(rows), loss, chunk_rows, options, torch.is_grad_enabled())
