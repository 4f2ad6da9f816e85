"""Parity with TRL's ``GKDTrainer.generalized_jsd_loss`` (the PyPI ``trl`` package) for the
token-level losses of decoder distillation: ``kl`` is its beta = 0, ``reverse_kl`` its beta = 1,
``jsd`` its beta in (0, 1), all times T^2 (kd's convention, TRL has none).

TRL masks with labels of -100 (the prompt and the padding) and reduces with "batchmean" over the
remaining tokens, which is kd's mean over the rows of ``mask = labels != -100``. Both the value
and the student's gradient are compared, under the fused kernels and the eager references.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch

from kd_core import lookup

IGNORE = -100
B, L = 3, 11
VOCAB = 37  # odd on purpose; one case below uses SmolLM2's 49,152
BETAS = {"kl": 0.0, "reverse_kl": 1.0}


def trl_generalized_jsd_loss() -> Callable[..., torch.Tensor]:
    """TRL's ``GKDTrainer.generalized_jsd_loss``, from wherever this TRL version keeps GKDTrainer
    (benchmarks/causal_lm.py times a distillation step with it)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


@pytest.fixture(scope="module")
def trl_jsd() -> Callable[..., torch.Tensor]:
    """TRL's loss."""
    return trl_generalized_jsd_loss()


@pytest.fixture(params=["auto", "reference"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test under the fused kernels (where built) and under the eager references."""
    monkeypatch.setenv("KD_KERNELS", request.param)
    yield request.param


def _logits(seed: int, vocab: int, batch: int = B, length: int = L) -> torch.Tensor:
    return 3 * torch.randn(batch, length, vocab, generator=torch.Generator().manual_seed(seed))


def _labels(vocab: int, batch: int = B, length: int = L) -> torch.Tensor:
    """Next-token labels with a prompt (-100 first) and right padding (-100 last) of differing
    lengths, one row without either."""
    labels = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(7))
    prompts, ends = [0, 3, 5][:batch], [length, length - 2, length - 4][:batch]
    for row, (start, end) in enumerate(zip(prompts, ends, strict=True)):
        labels[row, :start] = IGNORE
        labels[row, end:] = IGNORE
    return labels


def _both(loss: Callable[..., torch.Tensor], student: torch.Tensor, teacher: torch.Tensor,
          **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and its gradient with respect to the student's logits."""
    student = student.clone().requires_grad_(True)
    value = loss(student, teacher, **kwargs)
    (grad,) = torch.autograd.grad(value, student)
    return value.detach(), grad


def _compare(name: str, beta: float, temperature: float, trl_jsd: Callable[..., torch.Tensor],
             student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> None:
    params = {"beta": beta} if name == "jsd" else {}
    ours, our_grad = _both(lookup("losses", name), student, teacher, mask=labels != IGNORE,
                           temperature=temperature, **params)
    theirs, their_grad = _both(trl_jsd, student, teacher, labels=labels, beta=beta, temperature=temperature,
                               reduction="batchmean")
    scale = temperature**2
    torch.testing.assert_close(ours, theirs * scale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_grad, their_grad * scale, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("name", "beta"), [("kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.1), ("jsd", 0.5),
                                            ("jsd", 0.9)])
def test_losses_equal_trl_generalized_jsd(kernels: str, trl_jsd: Callable[..., torch.Tensor], name: str,
                                          beta: float, temperature: float) -> None:
    _compare(name, beta, temperature, trl_jsd, _logits(1, VOCAB), _logits(2, VOCAB), _labels(VOCAB))


@pytest.mark.parametrize(("name", "beta"), [("kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.5)])
def test_at_smollm2_vocabulary(kernels: str, trl_jsd: Callable[..., torch.Tensor], name: str, beta: float) -> None:
    vocab = 49_152
    _compare(name, beta, 2.0, trl_jsd, _logits(3, vocab, 2, 5), _logits(4, vocab, 2, 5), _labels(vocab, 2, 5))


def test_trl_masks_what_kd_masks(trl_jsd: Callable[..., torch.Tensor]) -> None:
    """Changing the logits of a position labelled -100 changes neither loss (so the comparison
    above covers the masking, not only the arithmetic)."""
    student, teacher, labels = _logits(5, VOCAB), _logits(6, VOCAB), _labels(VOCAB)
    moved = student.clone()
    moved[labels == IGNORE] += 10.0
    for beta in (0.0, 0.5, 1.0):
        torch.testing.assert_close(trl_jsd(moved, teacher, labels=labels, beta=beta),
                                   trl_jsd(student, teacher, labels=labels, beta=beta))
    for name in ("kl", "reverse_kl", "jsd"):
        loss = lookup("losses", name)
        torch.testing.assert_close(loss(moved, teacher, mask=labels != IGNORE),
                                   loss(student, teacher, mask=labels != IGNORE))
