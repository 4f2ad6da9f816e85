"""LinearLogits: logits given as hidden states and an LM head (``distillation.fused_linear``).
Their chunked, checkpointed cross-entropy against the cross-entropy of the whole logits (value
and the gradients of hidden states, weight and bias), the hard-label loss through them, and the
settings a fused run refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_core import ConfigError, DistillationConfig, GeneralDistiller, MultiTeacherDistiller, TrainingConfig, lookup
from kd_core.features import LinearLogits
from kd_core.loss_plan import hard_label_loss
from tests.core.models import TinyEncoder


def _inputs(bias: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    head_bias = torch.randn(11, generator=generator, dtype=torch.float64, requires_grad=True) if bias else None
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, 4:] = -100
    labels[2, 0] = -100
    return hidden, weight, head_bias, labels


def _gradients(value: torch.Tensor, inputs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    present = [x for x in inputs if x is not None]
    return [value.detach(), *torch.autograd.grad(value, present)]


@pytest.mark.parametrize("chunk_rows", [1, 4, None])
@pytest.mark.parametrize("bias", [False, True])
def test_cross_entropy_equals_that_of_the_whole_logits(chunk_rows: int | None, bias: bool) -> None:
    hidden, weight, head_bias, labels = _inputs(bias)
    whole = F.cross_entropy(F.linear(hidden, weight, head_bias).reshape(-1, 11), labels.reshape(-1))
    chunked = LinearLogits(hidden, weight, head_bias).cross_entropy(labels, chunk_rows=chunk_rows)
    inputs = [hidden, weight, head_bias]
    for got, want in zip(_gradients(chunked, inputs), _gradients(whole, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cross_entropy_without_labelled_rows_is_zero_with_zero_gradients() -> None:
    hidden, weight, _, labels = _inputs(False)
    value = LinearLogits(hidden, weight).cross_entropy(torch.full_like(labels, -100))
    value.backward()
    assert float(value.detach()) == 0.0
    assert not hidden.grad.any() and not weight.grad.any()


def test_cross_entropy_refuses_labels_of_another_shape() -> None:
    hidden, weight, _, labels = _inputs(False)
    with pytest.raises(ValueError, match=r"labels \(3, 6\) do not match logits \(3, 7, 11\)"):
        LinearLogits(hidden, weight).cross_entropy(labels[:, :6])


def test_the_hard_label_loss_reads_linear_logits_as_their_logits() -> None:
    hidden, weight, head_bias, labels = _inputs(True)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    linear = LinearLogits(hidden, weight, head_bias)
    features = {"labels": labels, "logits_mask": mask}
    fused = hard_label_loss({**features, "logits": linear})
    whole = hard_label_loss({**features, "logits": linear.materialize()})
    inputs = [hidden, weight, head_bias]
    for got, want in zip(_gradients(fused, inputs), _gradients(whole, inputs), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_linear_logits_say_the_shape_of_their_logits_and_detach_whole() -> None:
    hidden, weight, head_bias, _ = _inputs(True)
    linear = LinearLogits(hidden, weight, head_bias)
    assert linear.shape == (3, 7, 11) and linear.dim() == 3
    detached = linear.detach()
    assert not any(x.requires_grad for x in (detached.hidden, detached.weight, detached.bias))


@pytest.mark.parametrize("setting", [{"is_caching_logits": True}, {"teacher_cache_dir": "cache"},
                                     {"probability_shift": True}, {"temperature_scheduler": "flsw"}])
def test_fused_linear_refuses_what_reads_or_stores_whole_logits(setting: dict) -> None:
    with pytest.raises(ConfigError, match="fused_linear never makes the logits"):
        DistillationConfig.from_dict({"fused_linear": True, **setting})


def test_the_multi_teacher_distiller_refuses_fused_linear_even_for_one_teacher(tmp_path) -> None:
    adaptor = lookup("adaptors", "features")()
    with pytest.raises(ConfigError, match="multi-teacher distiller averages whole logits"):
        MultiTeacherDistiller(TrainingConfig(output_dir=str(tmp_path), progress=False),
                              DistillationConfig(kd_loss_type="kl", fused_linear=True), {"a": TinyEncoder(width=8)},
                              TinyEncoder(width=8), adaptor, adaptor)


def test_fp16_loss_scaling_is_refused_with_fused_linear(tmp_path) -> None:
    adaptor = lookup("adaptors", "features")()
    with pytest.raises(ConfigError, match="use mixed_precision 'bf16' or none"):
        GeneralDistiller(TrainingConfig(output_dir=str(tmp_path), progress=False, mixed_precision="fp16"),
                         DistillationConfig(kd_loss_type="kl", fused_linear=True), TinyEncoder(width=8),
                         TinyEncoder(width=8), adaptor, adaptor)
