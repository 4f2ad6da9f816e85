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


# -- every reference function: autocast and padding ----------------------------------------------

def _logits(g: torch.Generator, length: int) -> torch.Tensor:
    return torch.randn(2, length, 11, generator=g, dtype=torch.float64).float() * 3


def _states(g: torch.Generator, length: int) -> torch.Tensor:
    return torch.randn(2, length, 6, generator=g, dtype=torch.float64).float()


def _maps(g: torch.Generator, length: int) -> torch.Tensor:
    return torch.randn(2, 3, length, length, generator=g, dtype=torch.float64).float() * 2


def _heads(g: torch.Generator, length: int, d: int) -> torch.Tensor:
    return torch.randn(2, 3, length, d, generator=g, dtype=torch.float64).float() * 2


# name: (function over (student, teacher, mask), student maker, teacher maker, where the token axes are)
CASES = {
    "softmax_kl": (lambda s, t, m: reference.softmax_kl(s, t, 2.0, m), _logits, _logits, (1,)),
    "softmax_kl_ce": (lambda s, t, m: reference.softmax_kl(s, t, 0.5, m, "ce"), _logits, _logits, (1,)),
    "reverse_kl": (lambda s, t, m: reference.reverse_kl(s, t, 2.0, m), _logits, _logits, (1,)),
    "jsd": (lambda s, t, m: reference.jsd(s, t, 2.0, m, beta=0.3), _logits, _logits, (1,)),
    "logit_mse": (lambda s, t, m: reference.logit_mse(s, t, 2.0, m), _logits, _logits, (1,)),
    "hidden_mse": (reference.hidden_mse, _states, _states, (1,)),
    "cosine_distance": (reference.cosine_distance, _states, _states, (1,)),
    "normalized_mse": (reference.normalized_mse, _states, _states, (1,)),
    "gram_mse": (lambda s, t, m: reference.gram_mse((s, s * 2), (t, t.flip(-1)), m), _states, _states, (1,)),
    "map_mse": (reference.map_mse, _maps, _maps, (2, 3)),
    "map_softmax_kl": (reference.map_softmax_kl, _maps, _maps, (2, 3)),
    "map_softmax_ce": (lambda s, t, m: reference.map_softmax_kl(s, t, m, "ce"), _maps, _maps, (2, 3)),
    **{f"relation_loss_{kind}": (lambda s, t, m, kind=kind: reference.relation_loss(s, s.flip(-1), t, t * 0.5, m, kind),
                                 lambda g, n: _heads(g, n, 4), lambda g, n: _heads(g, n, 5), (2,))
       for kind in ("kl", "ce", "mse")},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_is_the_same_under_autocast(name: str) -> None:
    """kd's training engine computes losses inside torch.autocast(bf16): the reference must not
    let autocast run its matmuls (gram_mse, relation_loss) in bf16."""
    function, student, teacher, _ = CASES[name]
    g = torch.Generator().manual_seed(3)
    s, t = student(g, 7), teacher(g, 7)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    plain = function(s, t, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = function(s, t, mask)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)


def _pad(x: torch.Tensor, axes: tuple[int, ...], extra: int, fill: float) -> torch.Tensor:
    for axis in axes:
        shape = list(x.shape)
        shape[axis] = extra
        x = torch.cat([x, torch.full(shape, fill, dtype=x.dtype)], axis)
    return x


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fill", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_padding_holding_inf_gives_the_trimmed_value_and_gradient(name: str, fill: float) -> None:
    """Padding filled with inf, -inf (a padded logit row of all -inf) or NaN on both sides: the
    value and the student's gradient are those of the trimmed inputs, padded entries get exactly
    0, and nothing is NaN."""
    function, student, teacher, axes = CASES[name]
    g = torch.Generator().manual_seed(4)
    s, t = student(g, 6), teacher(g, 6)
    trimmed_s = s.clone().requires_grad_()
    trimmed = function(trimmed_s, t, None)
    trimmed.backward()
    padded_s = _pad(s, axes, 3, fill).requires_grad_()
    mask = torch.tensor([[1] * 6 + [0] * 3] * 2)
    value = function(padded_s, _pad(t, axes, 3, fill), mask)
    value.backward()
    assert value.item() == pytest.approx(trimmed.item(), rel=1e-6, abs=1e-7)
    assert torch.isfinite(padded_s.grad).all()
    real = tuple(slice(None) if axis not in axes else slice(0, 6) for axis in range(s.dim()))
    torch.testing.assert_close(padded_s.grad[real], trimmed_s.grad, rtol=1e-5, atol=1e-7)
    assert padded_s.grad.abs().sum() == pytest.approx(trimmed_s.grad.abs().sum().item(), rel=1e-5)
