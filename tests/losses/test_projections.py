"""Projections: shapes, activations, and their parameters in the optimizer with their own rate."""

from __future__ import annotations

import pytest
import torch

from kd_core import DistillationConfig, LossPlan, lookup


@pytest.mark.parametrize("name", ["linear", "relu", "tanh"])
def test_projections_map_student_width_to_teacher_width(name: str) -> None:
    projection = lookup("projections", name)(12, 20)
    out = projection(torch.randn(2, 3, 12) * 3)
    assert out.shape == (2, 3, 20)
    assert sum(p.numel() for p in projection.parameters()) == 12 * 20 + 20
    if name == "relu":
        assert (out >= 0).all() and (out == 0).any()
    if name == "tanh":
        assert out.abs().max() <= 1


def test_projection_parameters_form_their_own_optimizer_group() -> None:
    config = DistillationConfig.from_dict({"intermediate_matches": [
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 8, 16]},
        {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse",
         "proj": ["tanh", 8, 16, {"learning_rate": 3e-3}]},
        {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "cos"}]})
    plan = LossPlan(config)
    groups = plan.projection_param_groups()
    assert len(groups) == 2
    assert "lr" not in groups[0] and groups[1]["lr"] == 3e-3
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in plan.parameters()}


@pytest.mark.parametrize("name", ["linear", "relu", "tanh"])
def test_projections_start_like_textbrewers(name: str, textbrewer_projections) -> None:
    # TextBrewer draws projection weights from N(0, 0.02) and zeroes the bias.
    torch.manual_seed(0)
    ours = list(lookup("projections", name)(384, 768).parameters())
    torch.manual_seed(0)
    factory = (textbrewer_projections.linear_projection if name == "linear"
               else textbrewer_projections.projection_with_activation({"relu": "ReLU", "tanh": "Tanh"}[name]))
    theirs = list(factory(384, 768).parameters())
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.shape == reference.shape
        assert mine.std().item() == pytest.approx(reference.std().item(), rel=0.02)
        assert mine.mean().item() == pytest.approx(reference.mean().item(), abs=1e-3)
    assert torch.all(ours[1] == 0) and ours[0].std().item() == pytest.approx(0.02, rel=0.02)
