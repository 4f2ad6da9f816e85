"""Temperature and weight schedulers and probability shift, against TextBrewer's and through a
LossPlan."""

from __future__ import annotations

import pytest
import torch

from kd_core import ConfigError, DistillationConfig, LossPlan, lookup
from kd_core.loss_plan import probability_shift


def _logits(*shape: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3


def _mask() -> torch.Tensor:
    return torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])


@pytest.mark.parametrize("spec", [("flsw", 1.0, 2.0), ("flsw", 0.5, 1.0, 1e-3), ("cwsm", 1.0), ("cwsm", 2.0)])
def test_dynamic_temperatures_match_textbrewer(textbrewer_schedulers, spec: tuple) -> None:
    name, *args = spec
    ours = lookup("schedulers", name)(*args)
    theirs = getattr(textbrewer_schedulers, f"{name}_temperature_scheduler_builder")(*args)
    s, t = _logits(12, 6, seed=0)
    torch.testing.assert_close(ours.temperature(s, t, 8.0), theirs(s, t, 8.0))


@pytest.mark.parametrize("name,args", [("flsw", (1.0, 2.0)), ("cwsm", (1.0,))])
def test_token_level_temperatures_centre_on_real_rows_like_textbrewers_selected_rows(
        textbrewer_schedulers, name: str, args: tuple) -> None:
    s, t = _logits(3, 5, 6, seed=1)
    mask = _mask()
    ours = lookup("schedulers", name)(*args).temperature(s, t, 8.0, mask=mask)
    keep = mask.bool()
    theirs = getattr(textbrewer_schedulers, f"{name}_temperature_scheduler_builder")(*args)(s[keep], t[keep], 8.0)
    torch.testing.assert_close(ours[keep], theirs)
    assert torch.equal(ours[~keep], torch.full_like(ours[~keep], 8.0))  # padded rows keep the base


def test_dynamic_temperatures_never_fall_below_the_floor() -> None:
    s, t = _logits(64, 6, seed=2)
    tau = lookup("schedulers", "flsw")(50.0, 2.0).temperature(s, t, 1.0)
    assert tau.min().item() == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["linear_decay", "linear_growth"])
@pytest.mark.parametrize("progress", [0.0, 0.25, 1.0])
def test_weight_schedulers_match_textbrewer(textbrewer_schedulers, name: str, progress: float) -> None:
    theirs = getattr(textbrewer_schedulers, f"{name}_weight_scheduler")
    assert lookup("schedulers", name)().weight(0.7, progress) == pytest.approx(0.7 * theirs(progress))


@pytest.mark.parametrize("shape", [(6, 4), (3, 5, 4)])
def test_probability_shift_matches_textbrewer(textbrewer_probability_shift, shape: tuple) -> None:
    logits, _ = _logits(*shape, seed=3)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=torch.Generator().manual_seed(4))
    if len(shape) == 3:
        labels[1, 2:] = -100  # padded tokens
    ours = probability_shift(logits, labels)
    theirs = textbrewer_probability_shift(logits.clone(), labels)
    assert torch.equal(ours, theirs)
    real = labels >= 0
    assert torch.equal(ours.argmax(-1)[real], labels[real])  # the teacher now peaks at the gold label


def _features(logits: torch.Tensor, labels: torch.Tensor | None = None, mask=None) -> dict:
    return {"logits": logits, "labels": labels, "logits_mask": mask}


def test_loss_plan_applies_a_dynamic_temperature_and_kd_loss_params() -> None:
    s, t = _logits(3, 5, 6, seed=5)
    mask = _mask()
    config = DistillationConfig(temperature=4.0, temperature_scheduler=["flsw", 1.0, 2.0], kd_loss_type="jsd",
                                kd_loss_params={"beta": 0.2})
    terms = LossPlan(config)(_features(s, mask=mask), _features(t), progress=0.5)
    tau = lookup("schedulers", "flsw")(1.0, 2.0).temperature(s, t, 4.0, mask=mask)
    expected = lookup("losses", "jsd")(s, t, mask=mask, temperature=tau, beta=0.2)
    torch.testing.assert_close(terms["kd"], expected)


def test_loss_plan_schedules_weights_with_progress() -> None:
    s, t = _logits(4, 3, seed=6)
    labels = torch.tensor([0, 1, 2, 0])
    config = DistillationConfig(kd_loss_type="kl", kd_loss_weight=2.0, kd_loss_weight_scheduler="linear_decay",
                                hard_label_weight=1.0, hard_label_weight_scheduler="linear_growth")
    plan = LossPlan(config)
    start, end = plan(_features(s, labels), _features(t), 0.0), plan(_features(s, labels), _features(t), 1.0)
    kl = lookup("losses", "kl")(s, t, temperature=4.0)
    torch.testing.assert_close(start["kd"], 2.0 * kl)
    assert start["hard_label"].item() == 0.0 and end["kd"].item() == 0.0
    torch.testing.assert_close(end["hard_label"], torch.nn.functional.cross_entropy(s, labels))


def test_loss_plan_shifts_teacher_probabilities_when_asked() -> None:
    s, t = _logits(6, 3, seed=7)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    plan = LossPlan(DistillationConfig(kd_loss_type="ce", probability_shift=True))
    terms = plan(_features(s, labels), _features(t), 0.0)
    expected = lookup("losses", "ce")(s, probability_shift(t, labels), temperature=4.0)
    torch.testing.assert_close(terms["kd"], expected)


def test_unknown_loss_params_fail_when_the_plan_is_built() -> None:
    with pytest.raises(ConfigError, match=r"distillation.kd_loss_params: .*'gamma'.*the loss accepts: beta"):
        LossPlan(DistillationConfig(kd_loss_type="jsd", kd_loss_params={"gamma": 1}))
    with pytest.raises(ConfigError, match=r"intermediate_matches\[0\].params: mask is set by kd"):
        LossPlan(DistillationConfig(intermediate_matches=[
            {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "params": {"mask": None}}]))
    with pytest.raises(ConfigError, match=r"scheduler 'flsw' does not take arguments \[\]"):
        LossPlan(DistillationConfig(temperature_scheduler="flsw"))
