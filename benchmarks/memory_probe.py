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


def relation(name: str) -> float:
    function = implementations("relation_loss")[name]
    small = [x[:1, :1, :16] for x in relation_inputs()[:2]]
    relation_step(function, small[0].detach().requires_grad_(), small[1], torch.ones(1, 16))  # load kernels
    v_s, v_t, mask = relation_inputs()
    v_s.grad = torch.zeros_like(v_s)
    before = peak_rss_mib()
    relation_step(function, v_s, v_t, mask)
    return peak_rss_mib() - before


def token(loss: str, name: str) -> float:
    function = token_implementations(loss)[name]
    student, teacher = token_inputs()
    small = student[:256].detach().requires_grad_()
    token_step(function, small, teacher[:256])  # load kernels, compile
    del small
    student.grad = torch.zeros_like(student)
    student.grad.fill_(0.0)  # touched: resident before the step, as autograd's own result would be
    before = peak_rss_mib()
    token_step(function, student, teacher)
    return peak_rss_mib() - before


def linear(loss: str, name: str) -> float:
    function = linear_implementations(loss)[name]
    inputs = linear_inputs()
    small = (inputs[0][:256].detach().requires_grad_(), inputs[1], inputs[2][:256], inputs[3])
    linear_step(function, *small)  # load kernels
    for x in inputs[:2]:
        x.grad = torch.zeros_like(x)
        x.grad.fill_(0.0)
    before = peak_rss_mib()
    linear_step(function, *inputs)
    return peak_rss_mib() - before


PROBES = {"relation": relation, "token": token, "linear": linear}

if __name__ == "__main__":
    kind, *names = sys.argv[1:]
    print(f"{PROBES[kind](*names):.1f}")
