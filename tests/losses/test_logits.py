"""Logit losses against their formulas written out per row in float64, and their shape errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kd_core import ShapeError, lookup


def _logits(*shape: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 3,
            torch.randn(*shape, generator=g, dtype=torch.float64) * 3)


def _probabilities(row: list[float], temperature: float) -> list[float]:
    top = max(row)
    exps = [math.exp((v - top) / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _per_row_mean(s: torch.Tensor, t: torch.Tensor, temperature: float, divergence) -> float:
    rows = [divergence(_probabilities(a, temperature), _probabilities(b, temperature))
            for a, b in zip(s.tolist(), t.tolist(), strict=True)]
    return temperature**2 * sum(rows) / len(rows)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_is_hinton(temperature: float) -> None:
    s, t = _logits(10, 7)
    expected = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1),
                        reduction="batchmean") * temperature**2
    torch.testing.assert_close(lookup("losses", "kl")(s, t, temperature=temperature), expected)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_reverse_kl_is_kl_of_the_student_from_the_teacher(temperature: float) -> None:
    s, t = _logits(8, 6, seed=1)
    expected = _per_row_mean(s, t, temperature, lambda p_s, p_t: _kl(p_s, p_t))
    assert lookup("losses", "reverse_kl")(s, t, temperature=temperature).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_is_the_generalised_jensen_shannon_divergence(beta: float, temperature: float) -> None:
    s, t = _logits(8, 6, seed=2)

    def divergence(p_s: list[float], p_t: list[float]) -> float:
        m = [beta * b + (1 - beta) * a for a, b in zip(p_s, p_t, strict=True)]
        return beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)

    expected = _per_row_mean(s, t, temperature, divergence)
    value = lookup("losses", "jsd")(s, t, temperature=temperature, beta=beta)
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_symmetric_jsd_is_symmetric_and_bounded_by_log_2() -> None:
    s, t = _logits(16, 5, seed=3)
    jsd = lookup("losses", "jsd")
    forward, backward = jsd(s * 10, t * 10), jsd(t * 10, s * 10)
    assert forward.item() == pytest.approx(backward.item(), rel=1e-12)
    assert 0 < forward.item() < math.log(2)


def test_jsd_rejects_a_beta_at_the_end_points() -> None:
    s, t = _logits(2, 3)
    with pytest.raises(ValueError, match=r"jsd needs 0 < beta < 1, got 1.0; use 'kl' or 'reverse_kl'"):
        lookup("losses", "jsd")(s, t, beta=1.0)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd"])
def test_divergences_vanish_when_the_student_matches(name: str) -> None:
    s, _ = _logits(5, 9, seed=4)
    assert lookup("losses", name)(s, s.clone(), temperature=4.0).item() == pytest.approx(0.0, abs=1e-12)


def test_wrong_shapes_name_both_shapes() -> None:
    with pytest.raises(ShapeError, match=r"student \(2, 5, 8\) and teacher \(2, 5, 16\)"):
        lookup("losses", "hidden_mse")(torch.zeros(2, 5, 8), torch.zeros(2, 5, 16))
    with pytest.raises(ShapeError, match=r"mask \(2, 4\) does not match the inputs' rows \(2, 5\)"):
        lookup("losses", "cos")(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8), mask=torch.ones(2, 4))
    with pytest.raises(ShapeError, match=r"kl: got student \(7,\) and teacher \(7, 2\); both must be \[B, C\]"):
        lookup("losses", "kl")(torch.zeros(7), torch.zeros(7, 2))
    with pytest.raises(ShapeError, match=r"temperature \(4,\) does not match the logits' rows \(4, 4\)"):
        lookup("losses", "kl")(torch.zeros(4, 4, 3), torch.zeros(4, 4, 3), temperature=torch.ones(4))
    with pytest.raises(ShapeError, match=r"mask must be a tensor or None, got float.*temperature by keyword"):
        lookup("losses", "ce")(torch.zeros(2, 3), torch.zeros(2, 3), 4.0)  # TextBrewer's positional temperature
    with pytest.raises(ShapeError, match=r"got student a \(Q, K\) pair and teacher \(2, 2, 4, 4\)"):
        lookup("losses", "attention_kl")((torch.zeros(2, 2, 4, 8),) * 2, torch.zeros(2, 2, 4, 4))
    with pytest.raises(ShapeError, match=r"student \(2, 3, 4, 8\) and teacher \(2, 2, 4, 8\) must agree"):
        lookup("losses", "value_relation_kl")(torch.zeros(2, 3, 4, 8), torch.zeros(2, 2, 4, 8))
    with pytest.raises(ShapeError, match=r"fsp: the student input must be a pair"):
        lookup("losses", "fsp")(torch.zeros(2, 4, 8), torch.zeros(2, 4, 8))


@pytest.mark.parametrize("name,params", [("ce", {}), ("kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.3})])
def test_linear_logits_give_the_loss_of_their_logits_without_making_them(name: str, params: dict) -> None:
    """``distillation.fused_linear``: hidden states and heads on both sides, over rows and a mask;
    the value and the gradients of the student's hidden states, head weight and bias."""
    from kd_core.features import LinearLogits

    g = torch.Generator().manual_seed(5)
    hidden_S = torch.randn(2, 9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight_S = torch.randn(13, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias_S = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    hidden_T, weight_T = torch.randn(2, 9, 6, generator=g, dtype=torch.float64), torch.randn(13, 6, generator=g,
                                                                                            dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    loss = lookup("losses", name)
    student = LinearLogits(hidden_S, weight_S, bias_S)
    fused = loss(student, LinearLogits(hidden_T, weight_T), mask=mask, temperature=2.0, **params)
    whole = loss(student.materialize(), F.linear(hidden_T, weight_T), mask=mask, temperature=2.0, **params)
    inputs = (hidden_S, weight_S, bias_S)
    for got, want in zip((fused.detach(), *torch.autograd.grad(fused, inputs)),
                         (whole.detach(), *torch.autograd.grad(whole, inputs)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    with pytest.raises(ShapeError, match="one side is LinearLogits"):
        loss(student, F.linear(hidden_T, weight_T), mask=mask, **params)
