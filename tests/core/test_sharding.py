"""kd_core.sharding's pieces that need no process group (the FSDP runs themselves are in
tests/e2e/test_distributed.py and tests/models/test_causal_lm.py, under torchrun)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_core import ConfigError
from kd_core.sharding import clip_grad_norm, is_sharded, point_optimizer_at


def _grads(seed: int) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(shape)) for shape in ((3, 4), (5,), (2, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 3
    return params


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clipping_whole_gradients_is_torchs_clipping(max_norm: float) -> None:
    ours, theirs = _grads(0), _grads(0)
    total = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(total, expected)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert not any(is_sharded(p.grad) for p in ours)


def test_the_optimizer_is_pointed_at_the_copy_by_parameter_name() -> None:
    original, copy = nn.Linear(3, 2), nn.Linear(3, 2)
    extra = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([*original.parameters(), extra], lr=0.1)
    point_optimizer_at(optimizer, dict(original.named_parameters()), copy)
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(copy.weight), id(copy.bias), id(extra)]


def test_an_optimizer_that_has_stepped_is_refused() -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    with pytest.raises(ConfigError, match="already taken steps"):
        point_optimizer_at(optimizer, dict(model.named_parameters()), nn.Linear(3, 2))
