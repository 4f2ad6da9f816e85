"""The kernel benchmark cases, shared by the timing suite and the memory probe: the issue's
shapes, and the implementations compared (the fused op, the eager reference the tests check it
against, and torch.compile of that same reference; for the token-level divergences of decoder
LMs also TRL's ``generalized_jsd_loss``)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

import kd_kernels
from kd_kernels import reference

SOFTMAX_SHAPE = (4096, 30522)  # rows x BERT vocabulary
SOFTMAX_TEMPERATURE = 4.0
RELATION_SHAPE = (8, 12, 512, 32)  # value relation: B, H, L, d on both sides
TOKEN_SHAPE = (4096, 49152)  # next-token rows x SmolLM2's vocabulary
TOKEN_TEMPERATURE = 2.0
TOKEN_LOSSES = {"kl": 0.0, "reverse_kl": 1.0, "jsd": 0.5}
"""The token-level divergences, each with the beta of TRL's generalized JSD that equals it."""
HIDDEN_SIZE = 576  # SmolLM2-135M's: the fused linear case's hidden states and heads, both sides


def softmax_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(SOFTMAX_SHAPE, generator=g) * 3).requires_grad_()
    return student, torch.randn(SOFTMAX_SHAPE, generator=g) * 3


def relation_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v_s = torch.randn(RELATION_SHAPE, generator=g).requires_grad_()
    v_t = torch.randn(RELATION_SHAPE, generator=g)
    return v_s, v_t, torch.ones(RELATION_SHAPE[0], RELATION_SHAPE[2])


def implementations(name: str) -> dict[str, Callable]:
    """``fused`` / ``eager`` / ``compiled`` versions of ``softmax_kl`` or ``relation_loss``."""
    fused, eager = getattr(kd_kernels, name), getattr(reference, name)
    return {"fused": fused, "eager": eager, "compiled": torch.compile(eager)}


def softmax_step(function: Callable, student: torch.Tensor, teacher: torch.Tensor) -> None:
    student.grad = None
    function(student, teacher, SOFTMAX_TEMPERATURE).backward()


def relation_step(function: Callable, v_s: torch.Tensor, v_t: torch.Tensor, mask: torch.Tensor) -> None:
    v_s.grad = None
    function(v_s, v_s, v_t, v_t, mask).backward()


def token_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = (torch.randn(TOKEN_SHAPE, generator=g) * 3).requires_grad_()
    return student, torch.randn(TOKEN_SHAPE, generator=g) * 3


def _eager_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, reverse: bool) -> torch.Tensor:
    """``log_softmax`` + ``kl_div``, as a PyTorch user writes the (reverse) KL: T^2 batchmean."""
    log_s, log_t = F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1)
    target, given = (log_s, log_t) if reverse else (log_t, log_s)
    return F.kl_div(given, target, reduction="batchmean", log_target=True) * temperature**2


def _trl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, beta: float) -> torch.Tensor:
    from tests.losses.test_trl_parity import trl_generalized_jsd_loss

    # TRL's loss has no T^2 factor; kd's convention multiplies it in
    return trl_generalized_jsd_loss()(student, teacher, beta=beta, temperature=temperature) * temperature**2


def reference_loss(name: str) -> Callable[..., torch.Tensor]:
    """The reference formula of a token divergence: what kd's chunked and fused-linear paths evaluate."""
    return {"kl": functools.partial(reference.softmax_kl, mode="kl"), "reverse_kl": reference.reverse_kl,
            "jsd": functools.partial(reference.jsd, beta=TOKEN_LOSSES["jsd"])}[name]


def _eager(name: str) -> Callable[..., torch.Tensor]:
    """log_softmax + kl_div for kl and reverse_kl; the reference formula for jsd."""
    return reference_loss(name) if name == "jsd" else functools.partial(_eager_kl, reverse=name == "reverse_kl")


def token_implementations(name: str) -> dict[str, Callable]:
    """``kd`` (what kd_losses runs: the fused softmax_kl for kl, the chunked reference otherwise),
    ``eager`` (log_softmax + kl_div; the reference formula for jsd), ``compiled`` (torch.compile of
    eager) and ``trl`` (TRL's generalized_jsd_loss at the matching beta) of a token divergence,
    each called as ``f(student, teacher, temperature)``."""
    kd = kd_kernels.softmax_kl if name == "kl" else functools.partial(kd_kernels.chunked, reference_loss(name))
    eager = _eager(name)
    return {"kd": kd, "eager": eager, "compiled": torch.compile(eager),
            "trl": functools.partial(_trl, beta=TOKEN_LOSSES[name])}


def token_step(function: Callable, student: torch.Tensor, teacher: torch.Tensor) -> None:
    student.grad = None
    function(student, teacher, TOKEN_TEMPERATURE).backward()


def linear_inputs() -> tuple[torch.Tensor, ...]:
    """Hidden states [4096, 576] and LM heads [49152, 576] of a student (requiring gradients) and a teacher."""
    g = torch.Generator().manual_seed(0)
    rows, vocabulary = TOKEN_SHAPE
    hidden_S, weight_S = torch.randn(rows, HIDDEN_SIZE, generator=g), torch.randn(vocabulary, HIDDEN_SIZE, generator=g)
    hidden_T, weight_T = torch.randn(rows, HIDDEN_SIZE, generator=g), torch.randn(vocabulary, HIDDEN_SIZE, generator=g)
    scale = HIDDEN_SIZE**-0.5 * 3  # logits of about the token cases' spread
    return hidden_S.requires_grad_(), (weight_S * scale).requires_grad_(), hidden_T, weight_T * scale


def linear_implementations(name: str) -> dict[str, Callable]:
    """``kd`` (:func:`kd_kernels.fused_linear` of the reference loss) and, from the logits of both
    heads, the peers of :func:`token_implementations`: ``eager``, ``compiled`` (torch.compile of
    the heads and the eager loss together) and ``trl``; each called as
    ``f(hidden_S, weight_S, hidden_T, weight_T, temperature)``."""
    loss = reference_loss(name)

    def fused(hidden_S, weight_S, hidden_T, weight_T, temperature):
        return kd_kernels.fused_linear(loss, hidden_S, weight_S, hidden_T, weight_T, temperature)

    def logits_first(divergence: Callable) -> Callable:
        def run(hidden_S, weight_S, hidden_T, weight_T, temperature):
            return divergence(hidden_S @ weight_S.T, hidden_T @ weight_T.T, temperature)
        return run

    eager = logits_first(_eager(name))
    return {"kd": fused, "eager": eager, "compiled": torch.compile(eager),
            "trl": logits_first(functools.partial(_trl, beta=TOKEN_LOSSES[name]))}


def linear_step(function: Callable, hidden_S: torch.Tensor, weight_S: torch.Tensor, hidden_T: torch.Tensor,
                weight_T: torch.Tensor) -> None:
    hidden_S.grad = weight_S.grad = None
    function(hidden_S, weight_S, hidden_T, weight_T, TOKEN_TEMPERATURE).backward()
