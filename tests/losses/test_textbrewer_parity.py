"""Parity with the ``textbrewer`` package for every loss it defines, looked up by TextBrewer's
names through ``kd_core.lookup`` and called with its argument order (student, teacher, mask=...).

Where kd deliberately differs, a test shows the case (and the README says why): without a mask
TextBrewer zeroes every attention entry <= -1e-3, and its masked ``nst``/``mmd`` divides by the
padded length instead of the width, so its value depends on how much padding a batch has.
"""

from __future__ import annotations

import pytest
import torch

from kd_core import lookup

B, H, L, D = 4, 3, 9, 16
MASK_VALUE = -10000.0  # the additive mask BERT adds to scores of padded keys


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _mask(seed: int = 0) -> torch.Tensor:
    lengths = torch.randint(2, L + 1, (B,), generator=torch.Generator().manual_seed(seed))
    lengths[0] = L
    return (torch.arange(L)[None, :] < lengths[:, None]).long()


def _masked_scores(seed: int, mask: torch.Tensor) -> torch.Tensor:
    """Pre-softmax scores as a BERT layer forms them: padded keys carry the additive mask."""
    return _randn(B, H, L, L, seed=seed, scale=2) + (1 - mask[:, None, None, :]) * MASK_VALUE


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 8.0])
@pytest.mark.parametrize("name,oracle", [("ce", "kd_ce_loss"), ("mse", "kd_mse_loss")])
def test_logit_losses(textbrewer_losses, name: str, oracle: str, temperature: float) -> None:
    s, t = _randn(16, 5, seed=1, scale=3), _randn(16, 5, seed=2, scale=3)
    _close(lookup("losses", name)(s, t, temperature=temperature),
           getattr(textbrewer_losses, oracle)(s, t, temperature))


@pytest.mark.parametrize("name,oracle", [("ce", "kd_ce_loss"), ("mse", "kd_mse_loss")])
def test_token_level_logit_losses_with_a_mask(textbrewer_losses, name: str, oracle: str) -> None:
    # TextBrewer's distillers select the rows of logits_mask before calling the loss.
    s, t = _randn(B, L, 7, seed=3, scale=3), _randn(B, L, 7, seed=4, scale=3)
    mask = _mask()
    keep = mask.bool()
    _close(lookup("losses", name)(s, t, mask=mask, temperature=2.0),
           getattr(textbrewer_losses, oracle)(s[keep], t[keep], 2.0))


@pytest.mark.parametrize("name,oracle", [("ce", "kd_ce_loss"), ("mse", "kd_mse_loss")])
def test_per_row_temperature(textbrewer_losses, name: str, oracle: str) -> None:
    s, t = _randn(6, 4, seed=5, scale=3), _randn(6, 4, seed=6, scale=3)
    temperature = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 20.0])
    _close(lookup("losses", name)(s, t, temperature=temperature), getattr(textbrewer_losses, oracle)(s, t, temperature))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name,oracle", [("hidden_mse", "hid_mse_loss"), ("cos", "cos_loss"), ("pkd", "pkd_loss")])
def test_hidden_losses(textbrewer_losses, name: str, oracle: str, masked: bool) -> None:
    s, t = _randn(B, L, D, seed=7), _randn(B, L, D, seed=8)
    mask = _mask() if masked else None
    _close(lookup("losses", name)(s, t, mask=mask), getattr(textbrewer_losses, oracle)(s, t, mask=mask))


def test_pkd_on_vectors(textbrewer_losses) -> None:
    s, t = _randn(B, D, seed=9), _randn(B, D, seed=10)
    _close(lookup("losses", "pkd")(s, t), textbrewer_losses.pkd_loss(s, t))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", ["fsp", "gram"])
def test_fsp(textbrewer_losses, name: str, masked: bool) -> None:
    s = [_randn(B, L, D, seed=11), _randn(B, L, D, seed=12)]
    t = [_randn(B, L, D, seed=13), _randn(B, L, D, seed=14)]
    mask = _mask() if masked else None
    _close(lookup("losses", name)(s, t, mask=mask), textbrewer_losses.fsp_loss(s, t, mask=mask))


@pytest.mark.parametrize("name", ["nst", "mmd"])
def test_nst_without_a_mask_and_widths_that_differ(textbrewer_losses, name: str) -> None:
    s = [_randn(B, L, 8, seed=15), _randn(B, L, 8, seed=16)]
    t = [_randn(B, L, D, seed=17), _randn(B, L, D, seed=18)]
    _close(lookup("losses", name)(s, t), textbrewer_losses.mmd_loss(s, t))


def test_nst_with_a_mask_differs_deliberately(textbrewer_losses) -> None:
    # With a mask TextBrewer divides the similarity matrices by the padded length L instead of
    # the width D. kd divides by D with or without a mask: on a batch whose sequences all have
    # 5 real tokens, kd's masked value equals TextBrewer's own unmasked value on the unpadded
    # batch, while TextBrewer's masked value changes when the same batch is padded further.
    real = 5
    s = [_randn(B, real, 8, seed=19), _randn(B, real, 8, seed=20)]
    t = [_randn(B, real, D, seed=21), _randn(B, real, D, seed=22)]

    def padded(states: list[torch.Tensor], length: int) -> list[torch.Tensor]:
        return [torch.cat([x, _randn(B, length - real, x.shape[-1], seed=23)], 1) for x in states]

    def mask(length: int) -> torch.Tensor:
        return (torch.arange(length)[None, :] < real).long().expand(B, -1)

    unpadded = textbrewer_losses.mmd_loss(s, t)
    for length in (real + 3, real + 11):
        _close(lookup("losses", "nst")(padded(s, length), padded(t, length), mask=mask(length)), unpadded)
    theirs = [textbrewer_losses.mmd_loss(padded(s, n), padded(t, n), mask=mask(n)) for n in (real + 3, real + 11)]
    assert not torch.allclose(theirs[0], theirs[1])


@pytest.mark.parametrize("name,oracle", [
    ("attention_mse", "att_mse_loss"), ("attention_mse_sum", "att_mse_sum_loss"),
    ("attention_ce", "att_ce_loss"), ("attention_ce_mean", "att_ce_mean_loss")])
def test_attention_losses_with_a_mask(textbrewer_losses, name: str, oracle: str) -> None:
    mask = _mask()
    s, t = _masked_scores(24, mask), _masked_scores(25, mask)
    _close(lookup("losses", name)(s, t, mask=mask), getattr(textbrewer_losses, oracle)(s, t, mask=mask))


@pytest.mark.parametrize("name,oracle", [
    ("attention_mse", "att_mse_loss"), ("attention_mse_sum", "att_mse_sum_loss"),
    ("attention_ce", "att_ce_loss"), ("attention_ce_mean", "att_ce_mean_loss")])
def test_attention_losses_on_probabilities_without_a_mask(textbrewer_losses, name: str, oracle: str) -> None:
    s, t = _randn(B, H, L, L, seed=26).softmax(-1), _randn(B, H, L, L, seed=27).softmax(-1)
    _close(lookup("losses", name)(s, t), getattr(textbrewer_losses, oracle)(s, t))


def test_attention_losses_without_a_mask_differ_deliberately_on_negative_scores(textbrewer_losses) -> None:
    # Without a mask TextBrewer zeroes every entry <= -1e-3, meant to catch masked keys but also
    # dropping every genuinely negative score. kd compares the scores as given (pass inputs_mask
    # to exclude padding): for equal inputs kd's attention_ce is the entropy of the teacher's
    # rows, TextBrewer's is smaller because its targets no longer sum to 1.
    scores = _randn(B, H, L, L, seed=28, scale=2)
    entropy = -(scores.softmax(-1) * scores.log_softmax(-1)).sum(-1).mean()
    _close(lookup("losses", "attention_ce")(scores, scores), entropy)
    assert textbrewer_losses.att_ce_loss(scores, scores) < entropy - 0.1
    assert lookup("losses", "attention_mse")(scores + 1, scores).item() == pytest.approx(1.0)
    assert textbrewer_losses.att_mse_loss(scores + 1, scores).item() != pytest.approx(1.0)


def test_attention_ce_with_unmasked_scores_ignores_padded_keys_where_textbrewer_does_not(textbrewer_losses) -> None:
    # TextBrewer's masked attention_ce takes the softmax over all keys and relies on the scores
    # already carrying the additive mask; kd excludes padded keys itself, so raw scores work too.
    mask = _mask()
    s, t = _randn(B, H, L, L, seed=29, scale=2), _randn(B, H, L, L, seed=30, scale=2)
    ours = lookup("losses", "attention_ce")(s, t, mask=mask)
    _close(ours, textbrewer_losses.att_ce_loss(*(x + (1 - mask[:, None, None, :]) * MASK_VALUE for x in (s, t)),
                                               mask=mask))


@pytest.mark.parametrize("name,oracle", [("hidden_mse", "hid_mse_loss"), ("cos", "cos_loss")])
def test_hidden_losses_on_pooled_vectors(textbrewer_losses, name: str, oracle: str) -> None:
    s, t = _randn(B, D, seed=31), _randn(B, D, seed=32)
    _close(lookup("losses", name)(s, t), getattr(textbrewer_losses, oracle)(s, t))


@pytest.mark.parametrize("masked", [False, True])
def test_fsp_between_layers_of_different_widths(textbrewer_losses, masked: bool) -> None:
    s = [_randn(B, L, D, seed=33), _randn(B, L, 8, seed=34)]
    t = [_randn(B, L, D, seed=35), _randn(B, L, 8, seed=36)]
    mask = _mask() if masked else None
    _close(lookup("losses", "fsp")(s, t, mask=mask), textbrewer_losses.fsp_loss(s, t, mask=mask))


def test_an_all_padding_example_counts_for_nothing_where_textbrewer_gives_nan_or_counts_it(textbrewer_losses) -> None:
    # A batch with one example that has no real token (an empty sentence after truncation):
    # TextBrewer's fsp divides by its zero length and returns NaN, and its pkd ignores the mask
    # and counts the example's padding state as its [CLS]. kd leaves the example out of both, so
    # each loss equals TextBrewer's on the other examples.
    mask = _mask()
    mask[-1] = 0
    s = [_randn(B, L, D, seed=37), _randn(B, L, D, seed=38)]
    t = [_randn(B, L, D, seed=39), _randn(B, L, D, seed=40)]
    assert torch.isnan(textbrewer_losses.fsp_loss(s, t, mask=mask))
    _close(lookup("losses", "fsp")(s, t, mask=mask),
           textbrewer_losses.fsp_loss([x[:-1] for x in s], [x[:-1] for x in t], mask=mask[:-1]))
    s, t = s[0], t[0]
    ours, rest = lookup("losses", "pkd")(s, t, mask=mask), textbrewer_losses.pkd_loss(s[:-1], t[:-1], mask=mask[:-1])
    _close(ours, rest)
    assert not torch.allclose(textbrewer_losses.pkd_loss(s, t, mask=mask), rest)
