"""MiniLM (Wang et al. 2020) and MiniLMv2 (Wang et al. 2021) losses against the papers'
equations, written out with explicit loops in float64 and plain Python math."""

from __future__ import annotations

import math

import pytest
import torch

from kd_core import lookup

B, H, L = 2, 3, 6
LENGTHS = [6, 4]  # the second sequence has two padded tokens


def _mask() -> torch.Tensor:
    return (torch.arange(L)[None, :] < torch.tensor(LENGTHS)[:, None]).long()


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _dot(x: list[float], y: list[float]) -> float:
    return sum(a * b for a, b in zip(x, y, strict=True))


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _relation(x: torch.Tensor, y: torch.Tensor, b: int, h: int, i: int, n: int) -> list[float]:
    """Row i of softmax(x y^T / sqrt(d)) over the first n (real) keys, for example b, head h."""
    d = x.shape[-1]
    return _softmax([_dot(x[b, h, i].tolist(), y[b, h, j].tolist()) / math.sqrt(d) for j in range(n)])


def _mean_kl_over_heads_and_real_queries(rows_T, rows_S, heads: int) -> float:
    total, count = 0.0, 0
    for b, n in enumerate(LENGTHS):
        for h in range(heads):
            for i in range(n):
                total += _kl(rows_T(b, h, i, n), rows_S(b, h, i, n))
                count += 1
    return total / count


def test_attention_kl_from_queries_and_keys_is_equation_6_with_different_head_sizes() -> None:
    q_s, k_s = _randn(B, H, L, 4, seed=0), _randn(B, H, L, 4, seed=1)
    q_t, k_t = _randn(B, H, L, 7, seed=2), _randn(B, H, L, 7, seed=3)
    expected = _mean_kl_over_heads_and_real_queries(
        lambda b, h, i, n: _relation(q_t, k_t, b, h, i, n), lambda b, h, i, n: _relation(q_s, k_s, b, h, i, n), H)
    value = lookup("losses", "attention_kl")((q_s, k_s), (q_t, k_t), mask=_mask())
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_attention_kl_from_probabilities_is_equation_6() -> None:
    a_s = (_randn(B, H, L, L, seed=4)).softmax(-1)
    a_t = (_randn(B, H, L, L, seed=5) * 2).softmax(-1)

    def renormalised(a: torch.Tensor):  # the distribution over the real keys only
        return lambda b, h, i, n: [v / sum(a[b, h, i, :n].tolist()) for v in a[b, h, i, :n].tolist()]

    expected = _mean_kl_over_heads_and_real_queries(renormalised(a_t), renormalised(a_s), H)
    value = lookup("losses", "attention_kl")(a_s, a_t, mask=_mask())
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_value_relation_kl_is_equations_7_to_9_with_different_head_sizes() -> None:
    v_s, v_t = _randn(B, H, L, 5, seed=6), _randn(B, H, L, 8, seed=7)
    expected = _mean_kl_over_heads_and_real_queries(
        lambda b, h, i, n: _relation(v_t, v_t, b, h, i, n), lambda b, h, i, n: _relation(v_s, v_s, b, h, i, n), H)
    value = lookup("losses", "value_relation_kl")(v_s, v_t, mask=_mask())
    assert value.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("relation_heads", [1, 4, 12])
def test_relation_kl_splits_states_into_relation_heads_as_in_minilmv2(relation_heads: int) -> None:
    # Student width 24 (e.g. 2 heads x 12), teacher width 36 (e.g. 3 heads x 12): head counts and
    # widths differ, the relation heads are shared.
    a_s, a_t = _randn(B, L, 24, seed=8), _randn(B, L, 36, seed=9)

    def split(a: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, R, L, D/R], head r = columns r*D/R..
        size = a.shape[-1] // relation_heads
        return torch.stack([a[:, :, r * size:(r + 1) * size] for r in range(relation_heads)], dim=1)

    s, t = split(a_s), split(a_t)
    expected = _mean_kl_over_heads_and_real_queries(
        lambda b, h, i, n: _relation(t, t, b, h, i, n), lambda b, h, i, n: _relation(s, s, b, h, i, n), relation_heads)
    value = lookup("losses", "relation_kl")(a_s, a_t, mask=_mask(), num_relation_heads=relation_heads)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_relation_kl_takes_per_head_features_concatenated_over_heads() -> None:
    q_s, q_t = _randn(B, 2, L, 12, seed=10), _randn(B, 3, L, 12, seed=11)
    per_head = lookup("losses", "relation_kl")(q_s, q_t, mask=_mask(), num_relation_heads=6)
    concatenated = lookup("losses", "relation_kl")(
        q_s.transpose(1, 2).reshape(B, L, 24), q_t.transpose(1, 2).reshape(B, L, 36), mask=_mask(),
        num_relation_heads=6)
    assert per_head.item() == concatenated.item()


def test_relation_kl_explains_a_relation_head_count_that_does_not_divide_both_widths() -> None:
    with pytest.raises(ValueError, match=r"must divide both widths \(24 student, 36 teacher\): one of "
                                         r"\[1, 2, 3, 4, 6, 12\].*num_relation_heads: 12"):
        lookup("losses", "relation_kl")(_randn(B, L, 24, seed=0), _randn(B, L, 36, seed=1), num_relation_heads=5)
    with pytest.raises(ValueError, match="num_relation_heads is not set"):
        lookup("losses", "relation_kl")(_randn(B, L, 24, seed=0), _randn(B, L, 36, seed=1))


def test_identical_relations_give_zero() -> None:
    q, k = _randn(B, H, L, 4, seed=12), _randn(B, H, L, 4, seed=13)
    assert lookup("losses", "attention_kl")((q, k), (q, k), mask=_mask()).item() == pytest.approx(0, abs=1e-15)
