"""kd_kernels.reference against formulas written out independently, element by element."""

from __future__ import annotations

import math

import pytest
import torch

from kd_kernels import reference


def _naive_softmax_kl(s: torch.Tensor, t: torch.Tensor, temperature: float, mode: str) -> float:
    total = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist(), strict=True):
        zs = [v / temperature for v in row_s]
        zt = [v / temperature for v in row_t]
        ls = math.log(sum(math.exp(v - max(zs)) for v in zs)) + max(zs)
        lt = math.log(sum(math.exp(v - max(zt)) for v in zt if v != -math.inf)) + max(zt)
        row = 0.0
        for a, b in zip(zs, zt, strict=True):
            if b == -math.inf:
                continue
            p = math.exp(b - lt)
            row += p * ((b - lt) - (a - ls)) if mode == "kl" else -p * (a - ls)
        total += row * (temperature**2 if mode == "kl" else 1)
    return total / len(s)


@pytest.mark.parametrize("mode", ["kl", "ce"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_softmax_kl_matches_the_formula(mode: str, temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 13, generator=g, dtype=torch.float64) * 5
    t = torch.randn(5, 13, generator=g, dtype=torch.float64) * 5
    t[1, 3] = -math.inf  # a class the teacher rules out contributes nothing
    value = reference.softmax_kl(s, t, temperature, mode=mode)
    assert value.item() == pytest.approx(_naive_softmax_kl(s, t, temperature, mode), rel=1e-10)


def test_softmax_kl_with_rows_masked_averages_real_rows_only() -> None:
    s, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    mask = torch.tensor([1, 0, 1, 0])
    expected = _naive_softmax_kl(s[[0, 2]], t[[0, 2]], 2.0, "kl")
    assert reference.softmax_kl(s, t, 2.0, mask=mask).item() == pytest.approx(expected, rel=1e-10)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode must be 'kl' or 'ce'"):
        reference.softmax_kl(torch.zeros(1, 2), torch.zeros(1, 2), mode="js")


def _relation_rows(x: torch.Tensor, y: torch.Tensor, scale: float, b: int, h: int, n: int) -> list[list[float]]:
    return [[scale * sum(a * c for a, c in zip(x[b, h, i].tolist(), y[b, h, j].tolist(), strict=True))
             for j in range(n)] for i in range(n)]


@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
def test_relation_loss_matches_the_formula_with_explicit_scales(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    xs, ys = (torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64) for _ in range(2))
    xt, yt = (torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    lengths = [5, 3]
    mask = (torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]).long()
    total, count = 0.0, 0
    for b, n in enumerate(lengths):
        for h in range(2):
            r_s = _relation_rows(xs, ys, 0.7, b, h, n)
            r_t = _relation_rows(xt, yt, 0.2, b, h, n)
            for row_s, row_t in zip(r_s, r_t, strict=True):
                if kind == "mse":
                    total += sum((a - c) ** 2 for a, c in zip(row_s, row_t, strict=True))
                    count += n
                    continue
                total += _naive_softmax_kl(torch.tensor([row_s], dtype=torch.float64),
                                           torch.tensor([row_t], dtype=torch.float64), 1.0, kind)
                count += 1
    value = reference.relation_loss(xs, ys, xt, yt, mask, kind=kind, scale_s=0.7, scale_t=0.2)
    assert value.item() == pytest.approx(total / count, rel=1e-10)


def test_relation_loss_scales_by_inverse_square_root_of_each_sides_head_size() -> None:
    g = torch.Generator().manual_seed(2)
    xs, xt = torch.randn(1, 2, 4, 9, generator=g), torch.randn(1, 2, 4, 16, generator=g)
    default = reference.relation_loss(xs, xs, xt, xt, kind="mse")
    explicit = reference.relation_loss(xs, xs, xt, xt, kind="mse", scale_s=1 / 3, scale_t=1 / 4)
    assert default.item() == explicit.item()
    with pytest.raises(ValueError, match="kind must be 'kl', 'ce' or 'mse'"):
        reference.relation_loss(xs, xs, xt, xt, kind="js")
