"""``python -m benchmarks.memory_probe relation IMPLEMENTATION``, ``... token LOSS
IMPLEMENTATION`` or ``... linear LOSS IMPLEMENTATION``: the peak extra resident memory, in MiB, of
one forward+backward step (MiniLM's value relation; a token-level divergence over fp32
[4096, 49152] logits; the same from hidden states [4096, 576] and LM heads [49152, 576]),
measured in a fresh process. CPU tensors have no allocator statistics, so the process's peak
resident set (VmHWM, which unlike ru_maxrss does not carry over the parent's peak across exec)
above its level once the inputs and the student's gradients exist is used: the gradients
autograd must return are not "extra"."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.kernel_cases import (
    implementations,
    linear_implementations,
    linear_inputs,
    linear_step,
    relation_inputs,
    relation_step,
    token_implementations,
    token_inputs,
    token_step,
)


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


def _peak_extra(step: Callable[..., None], function: Callable, inputs: tuple, differentiated: tuple) -> float:
    """The peak resident memory ``step(function, *inputs)`` adds, with the gradients of
    ``differentiated`` already resident (written, so their pages count): autograd must return them."""
    for x in differentiated:
        x.grad = torch.zeros_like(x)
        x.grad.fill_(0.0)
    before = peak_rss_mib()
    step(function, *inputs)
    return peak_rss_mib() - before


def relation(name: str) -> float:
    function = implementations("relation_loss")[name]
    small = [x[:1, :1, :16] for x in relation_inputs()[:2]]
    relation_step(function, small[0].detach().requires_grad_(), small[1], torch.ones(1, 16))  # load kernels
    inputs = relation_inputs()
    return _peak_extra(relation_step, function, inputs, inputs[:1])


def token(loss: str, name: str) -> float:
    function = token_implementations(loss)[name]
    student, teacher = token_inputs()
    token_step(function, student[:256].detach().requires_grad_(), teacher[:256])  # load kernels, compile
    return _peak_extra(token_step, function, (student, teacher), (student,))


def linear(loss: str, name: str) -> float:
    function = linear_implementations(loss)[name]
    inputs = linear_inputs()
    linear_step(function, inputs[0][:256].detach().requires_grad_(), inputs[1], inputs[2][:256], inputs[3])
    return _peak_extra(linear_step, function, inputs, inputs[:2])


PROBES = {"relation": relation, "token": token, "linear": linear}

if __name__ == "__main__":
    kind, *names = sys.argv[1:]
    print(f"{PROBES[kind](*names):.1f}")
