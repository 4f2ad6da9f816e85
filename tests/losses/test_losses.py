"""kd-losses' first losses against the textbrewer package and the papers' formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_core import ShapeError, lookup

LOGIT_LOSSES = ("ce", "kl", "mse")
HIDDEN_LOSSES = ("hidden_mse", "cos")


def _logits(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * 3, torch.randn(*shape, generator=g, dtype=dtype) * 3)


def _mask(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    lengths = torch.randint(1, length + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    return (torch.arange(length)[None, :] < lengths[:, None]).long()


@pytest.mark.parametrize("temperature", [1.0, 4.0, 8.0])
def test_ce_matches_textbrewer(textbrewer_losses, temperature: float) -> None:
    s, t = _logits(16, 5)
    ours = lookup("losses", "ce")(s, t, temperature=temperature)
    torch.testing.assert_close(ours, textbrewer_losses.kd_ce_loss(s, t, temperature))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_mse_matches_textbrewer(textbrewer_losses, temperature: float) -> None:
    s, t = _logits(16, 5)
    ours = lookup("losses", "mse")(s, t, temperature=temperature)
    torch.testing.assert_close(ours, textbrewer_losses.kd_mse_loss(s, t, temperature))


def test_token_level_ce_with_mask_matches_textbrewer_on_selected_rows(textbrewer_losses) -> None:
    # TextBrewer's distillers select the real rows of token-level logits before the loss.
    s, t = _logits(4, 9, 7)
    mask = _mask(4, 9)
    ours = lookup("losses", "ce")(s, t, mask=mask, temperature=2.0)
    keep = mask.bool()
    torch.testing.assert_close(ours, textbrewer_losses.kd_ce_loss(s[keep], t[keep], 2.0))


def test_per_row_temperature_matches_textbrewer(textbrewer_losses) -> None:
    s, t = _logits(6, 4)
    temperature = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 20.0])
    ours = lookup("losses", "ce")(s, t, temperature=temperature)
    torch.testing.assert_close(ours, textbrewer_losses.kd_ce_loss(s, t, temperature))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_is_hinton(temperature: float) -> None:
    s, t = _logits(10, 7)
    expected = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1),
                        reduction="batchmean") * temperature**2
    torch.testing.assert_close(lookup("losses", "kl")(s, t, temperature=temperature), expected)


@pytest.mark.parametrize("name,oracle", [("hidden_mse", "hid_mse_loss"), ("cos", "cos_loss")])
@pytest.mark.parametrize("masked", [False, True])
def test_hidden_losses_match_textbrewer(textbrewer_losses, name: str, oracle: str, masked: bool) -> None:
    s, t = _logits(3, 11, 16, seed=2)
    mask = _mask(3, 11, seed=3) if masked else None
    ours = lookup("losses", name)(s, t, mask=mask)
    theirs = getattr(textbrewer_losses, oracle)(s, t, mask=mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def _padded(name: str) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    if name in LOGIT_LOSSES:
        s, t = _logits(3, 6, 5, seed=4)
    else:
        s, t = _logits(3, 6, 8, seed=4)
    mask = _mask(3, 6, seed=5)
    extra = 4
    pad = torch.randn(3, extra, s.shape[-1]) * 50  # garbage in the padding must not matter
    return (s, t, mask), (torch.cat([s, pad], 1), torch.cat([t, -pad], 1),
                          torch.cat([mask, torch.zeros(3, extra, dtype=mask.dtype)], 1))


@pytest.mark.parametrize("name", LOGIT_LOSSES + HIDDEN_LOSSES)
def test_padding_changes_nothing(name: str) -> None:
    (s, t, mask), (s_pad, t_pad, mask_pad) = _padded(name)
    loss = lookup("losses", name)
    torch.testing.assert_close(loss(s, t, mask=mask), loss(s_pad, t_pad, mask=mask_pad))


@pytest.mark.parametrize("name", LOGIT_LOSSES + HIDDEN_LOSSES)
def test_all_padding_gives_exact_zero_and_zero_gradient(name: str) -> None:
    (s, t, mask), _ = _padded(name)
    s = s.clone().requires_grad_()
    value = lookup("losses", name)(s, t, mask=torch.zeros_like(mask))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))
    assert not torch.isnan(s.grad).any()


@pytest.mark.parametrize("name", LOGIT_LOSSES + HIDDEN_LOSSES)
def test_gradcheck_float64(name: str) -> None:
    (s, t, mask), _ = _padded(name)
    s = s.double().requires_grad_()
    t = t.double()
    loss = lookup("losses", name)
    kwargs = {"temperature": 2.0} if name in LOGIT_LOSSES else {}
    assert torch.autograd.gradcheck(lambda x: loss(x, t, mask=mask, **kwargs), (s,))


@pytest.mark.parametrize("name", LOGIT_LOSSES + HIDDEN_LOSSES)
def test_bf16_inputs_accumulate_in_fp32(name: str) -> None:
    (s, t, mask), _ = _padded(name)
    loss = lookup("losses", name)
    low = loss(s.bfloat16(), t.bfloat16(), mask=mask)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, loss(s.bfloat16().float(), t.bfloat16().float(), mask=mask))


def test_wrong_shapes_name_both_shapes() -> None:
    with pytest.raises(ShapeError, match=r"student \(2, 5, 8\) and teacher \(2, 5, 16\)"):
        lookup("losses", "hidden_mse")(torch.zeros(2, 5, 8), torch.zeros(2, 5, 16))
    with pytest.raises(ShapeError, match=r"mask \(2, 4\) does not match the inputs' rows \(2, 5\)"):
        lookup("losses", "cos")(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8), mask=torch.ones(2, 4))
    with pytest.raises(ShapeError, match=r"shape \(7,\)"):
        lookup("losses", "kl")(torch.zeros(7), torch.zeros(7))


@pytest.mark.parametrize("name", ["linear", "relu", "tanh"])
def test_projections_map_student_width_to_teacher_width(name: str) -> None:
    projection = lookup("projections", name)(12, 20)
    out = projection(torch.randn(2, 3, 12))
    assert out.shape == (2, 3, 20)
    assert sum(p.numel() for p in projection.parameters()) == 12 * 20 + 20
    if name == "relu":
        assert (out >= 0).all()
    if name == "tanh":
        assert out.abs().max() <= 1
