"""``python benchmarks/memory_probe.py IMPLEMENTATION``: the peak extra resident memory, in MiB,
of one value-relation forward+backward step, measured in a fresh process (CPU tensors have no
allocator statistics, so the process's peak resident set (VmHWM, which unlike ru_maxrss does not
carry over the parent's peak across exec) above its level once the inputs exist is used)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks.kernel_cases import implementations, relation_inputs, relation_step


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


def main(name: str) -> None:
    function = implementations("relation_loss")[name]
    torch.set_num_threads(torch.get_num_threads())
    small = [x[:1, :1, :16] for x in relation_inputs()[:2]]
    relation_step(function, small[0].detach().requires_grad_(), small[1], torch.ones(1, 16))  # load kernels
    v_s, v_t, mask = relation_inputs()
    v_s.grad = torch.zeros_like(v_s)  # the gradient buffer is not "extra"
    before = peak_rss_mib()
    relation_step(function, v_s, v_t, mask)
    print(f"{peak_rss_mib() - before:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
