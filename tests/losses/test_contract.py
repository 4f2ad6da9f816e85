"""The loss convention (ARCHITECTURE section 4), checked for every registered loss: padding
changes nothing, all padding gives exactly 0 with zero gradient, float64 gradients are right,
bf16/fp16 inputs accumulate in fp32, and wrong shapes fail naming both shapes."""

from __future__ import annotations

import pytest
import torch

from kd_core import ShapeError, lookup, registry
from kd_core.normalization import count_items, items_of
from tests.losses.cases import CASES, REAL, Case, case_id, cast, make, tensors, trim

PADDED = REAL + 4


def test_every_registered_loss_has_a_case() -> None:
    aliases = {"gram", "mmd"}
    assert set(registry("losses").names()) - aliases == {case.loss for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padding_changes_nothing(case: Case) -> None:
    student, teacher, mask = make(case, PADDED)
    loss = lookup("losses", case.loss)
    padded = loss(student, teacher, mask=mask, **case.params)
    trimmed = loss(trim(student, case, REAL), trim(teacher, case, REAL), mask=mask[:, :REAL], **case.params)
    torch.testing.assert_close(padded, trimmed)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_all_padding_gives_exact_zero_and_zero_gradient(case: Case) -> None:
    student, teacher, mask = make(case, PADDED)
    student = cast(student, lambda x: x.clone().requires_grad_())
    value = lookup("losses", case.loss)(student, teacher, mask=torch.zeros_like(mask), **case.params)
    value.backward()
    assert value.item() == 0.0
    for x in tensors(student):
        assert torch.equal(x.grad, torch.zeros_like(x)), "all padding must give zero gradient, not NaN"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_float64(case: Case) -> None:
    student, teacher, mask = make(case, REAL + 1, dtype=torch.float64)
    inputs = [x.requires_grad_() for x in tensors(student)]
    loss = lookup("losses", case.loss)

    def function(*xs: torch.Tensor) -> torch.Tensor:
        return loss(type(student)(xs) if isinstance(student, (list, tuple)) else xs[0], teacher, mask=mask,
                    **case.params)

    assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_low_precision_inputs_accumulate_in_fp32(case: Case, dtype: torch.dtype) -> None:
    student, teacher, mask = make(case, PADDED)
    student, teacher = cast(student, lambda x: x.to(dtype)), cast(teacher, lambda x: x.to(dtype))
    loss = lookup("losses", case.loss)
    low = loss(student, teacher, mask=mask, **case.params)
    assert low.dtype == torch.float32
    upcast = loss(cast(student, torch.Tensor.float), cast(teacher, torch.Tensor.float), mask=mask, **case.params)
    torch.testing.assert_close(low, upcast)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_mask_of_the_wrong_length_names_both_shapes(case: Case) -> None:
    student, teacher, mask = make(case, PADDED)
    with pytest.raises(ShapeError, match=rf"mask \({mask.shape[0]}, {PADDED - 1}\)"):
        lookup("losses", case.loss)(student, teacher, mask=mask[:, 1:], **case.params)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_teacher_of_another_batch_size_names_both_shapes(case: Case) -> None:
    student, teacher, mask = make(case, PADDED)
    teacher = cast(teacher, lambda x: x[:-1])
    first_S, first_T = tensors(student)[0], tensors(teacher)[0]
    with pytest.raises(ShapeError) as error:
        lookup("losses", case.loss)(student, teacher, mask=mask, **case.params)
    message = str(error.value)
    shown = [tuple(first_S.shape), tuple(first_T.shape)]
    if case.loss in ("attention_mse_sum", "attention_ce_mean"):  # compared after reducing the heads
        shown = [s[:1] + s[2:] for s in shown]
    assert all(str(s) in message for s in shown), message


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_declared_items_weigh_a_split_batch_back_into_the_whole(case: Case) -> None:
    # what kd_core.normalization relies on: the loss of a batch is the mean of its parts' losses,
    # each weighted by the items the loss declares it averages over
    student, teacher, mask = make(case, PADDED, dtype=torch.float64)
    loss = lookup("losses", case.loss)
    items = items_of(loss)

    def part(value, rows: slice):
        return cast(value, lambda x: x[rows])

    whole = loss(student, teacher, mask=mask, **case.params)
    parts = [(count_items(items, mask[rows], len(mask[rows])),
              loss(part(student, rows), part(teacher, rows), mask=mask[rows], **case.params))
             for rows in (slice(0, 1), slice(1, None))]
    weighted = sum(n * value for n, value in parts) / sum(n for n, _ in parts)
    torch.testing.assert_close(whole, weighted)
    unweighted = sum(value for _, value in parts) / len(parts)
    assert not torch.allclose(whole, unweighted), "the parts' plain mean must differ, or the test proves nothing"
