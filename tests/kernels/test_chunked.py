"""``kd_kernels.chunked``: a divergence computed a chunk of rows at a time equals its reference,
value and student gradient, for every chunk size, with padding (chunks wholly padded, padding
holding inf), per-row temperatures, the GKD betas and a scaled or retained backward."""

from __future__ import annotations

import functools

import pytest
import torch

from kd_kernels import chunked, fused_linear, reference
from kd_kernels.chunked import default_chunk_rows

LOSSES = {
    "kl": functools.partial(reference.softmax_kl, mode="kl"),
    "ce": functools.partial(reference.softmax_kl, mode="ce"),
    "reverse_kl": reference.reverse_kl,
    **{f"jsd-{beta}": functools.partial(reference.jsd, beta=beta) for beta in (0.1, 0.5, 0.9)},
}
TOLERANCE = {torch.float64: {"rtol": 1e-12, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


def _inputs(dtype: torch.dtype, rows: tuple[int, ...] = (3, 11), vocabulary: int = 37):
    generator = torch.Generator().manual_seed(0)
    student = (torch.randn(*rows, vocabulary, generator=generator) * 3).to(dtype)
    teacher = (torch.randn(*rows, vocabulary, generator=generator) * 3).to(dtype)
    mask = torch.ones(rows, dtype=torch.bool)
    mask[0, 4:] = False  # rows 4..21 of the flattened 33 are padding: whole chunks of it for small chunks
    mask[1, :9] = False
    student[~mask] = float("inf")  # padding may hold anything
    return student, teacher, mask


def _value_and_grad(function, student: torch.Tensor, *args, scale: float = 1.0, **kwargs):
    leaf = student.detach().clone().requires_grad_(True)
    value = function(leaf, *args, **kwargs)
    (value * scale).backward()
    return value.detach(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("chunk_rows", [1, 2, 7, 32])
@pytest.mark.parametrize("temperature", ["1", "2", "per-row"])
def test_chunks_equal_the_reference(dtype: torch.dtype, name: str, chunk_rows: int, temperature: str) -> None:
    student, teacher, mask = _inputs(dtype)
    temp = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1)) + 0.5 if temperature == "per-row" \
        else float(temperature)
    loss = LOSSES[name]
    want = _value_and_grad(loss, student, teacher, temp, mask)
    got = _value_and_grad(lambda s, *a: chunked(loss, s, *a, chunk_rows=chunk_rows), student, teacher, temp, mask)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype])
    assert torch.all(got[1][~mask] == 0), "padded rows get no gradient"


def test_a_scaled_and_a_retained_backward_scale_the_gradient() -> None:
    student, teacher, mask = _inputs(torch.float64)
    loss = reference.reverse_kl
    want = _value_and_grad(loss, student, teacher, 2.0, mask, scale=0.5)[1]
    got = _value_and_grad(lambda s: chunked(loss, s, teacher, 2.0, mask, chunk_rows=4), student, scale=0.5)[1]
    torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])
    leaf = student.detach().clone().requires_grad_(True)
    value = chunked(loss, leaf, teacher, 2.0, mask, chunk_rows=4)
    (value * 0.5).backward(retain_graph=True)
    (value * 0.5).backward()
    torch.testing.assert_close(leaf.grad, 2 * want, **TOLERANCE[torch.float64])
    leaf = student.detach().clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="has no double backward"):
        torch.autograd.grad(chunked(loss, leaf, teacher, 2.0, mask, chunk_rows=4), leaf, create_graph=True)


def test_bf16_students_get_bf16_gradients_computed_in_float32() -> None:
    student, teacher, mask = _inputs(torch.float32)
    loss = functools.partial(reference.jsd, beta=0.5)
    want = _value_and_grad(loss, student.bfloat16(), teacher, 1.0, mask)
    got = _value_and_grad(lambda s: chunked(loss, s, teacher, 1.0, mask, chunk_rows=5), student.bfloat16())
    assert got[1].dtype == torch.bfloat16 and got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-2, atol=1e-4)


def test_what_cannot_be_chunked_runs_the_reference_itself() -> None:
    student, teacher, mask = _inputs(torch.float64)
    teacher.requires_grad_(True)  # both sides differentiated: the reference
    value = chunked(reference.reverse_kl, student.requires_grad_(True), teacher, 1.0, mask, chunk_rows=2)
    assert value.grad_fn is not None and "Chunked" not in type(value.grad_fn).__name__
    assert default_chunk_rows(49152) == 85 and default_chunk_rows(10**9) == 1
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        chunked(reference.reverse_kl, student, teacher, 1.0, mask, chunk_rows=-1)


def test_without_a_gradient_only_the_value_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under no_grad (evaluation) no chunk differentiates, even for a student that requires grad."""
    student, teacher, mask = _inputs(torch.float32)
    hidden_S, weight_S, _, hidden_T, weight_T, _, _ = _linear_inputs(torch.float32, False)
    differentiated = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: differentiated.append(1) or grad(*a, **k))
    with torch.no_grad():
        value = chunked(reference.reverse_kl, student.requires_grad_(True), teacher, 1.0, mask, chunk_rows=3)
        linear = fused_linear(reference.reverse_kl, hidden_S.requires_grad_(True), weight_S.requires_grad_(True),
                              hidden_T, weight_T, 1.0, mask, chunk_rows=3)
    assert not differentiated
    torch.testing.assert_close(value, reference.reverse_kl(student, teacher, 1.0, mask), **TOLERANCE[torch.float32])
    logits = [torch.nn.functional.linear(h, w) for h, w in ((hidden_S, weight_S), (hidden_T, weight_T))]
    torch.testing.assert_close(linear, reference.reverse_kl(*logits, 1.0, mask).detach(), rtol=1e-4, atol=1e-5)


def _linear_inputs(dtype: torch.dtype, bias: bool):
    generator = torch.Generator().manual_seed(2)
    rows, d_s, d_t, vocabulary = (3, 11), 6, 10, 37

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    hidden_S, hidden_T = draw(*rows, d_s), draw(*rows, d_t)
    weight_S, weight_T = draw(vocabulary, d_s), draw(vocabulary, d_t)
    bias_S, bias_T = (draw(vocabulary), draw(vocabulary)) if bias else (None, None)
    mask = torch.ones(rows, dtype=torch.bool)
    mask[0, 4:] = False
    return hidden_S, weight_S, bias_S, hidden_T, weight_T, bias_T, mask


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd-0.5"])
@pytest.mark.parametrize("chunk_rows", [1, 4, 32])
@pytest.mark.parametrize("bias", [False, True])
def test_the_fused_linear_variant_equals_the_loss_of_the_logits(dtype: torch.dtype, name: str, chunk_rows: int,
                                                                bias: bool) -> None:
    """Value and the gradients of the student's hidden states, head weight and bias."""
    hidden_S, weight_S, bias_S, hidden_T, weight_T, bias_T, mask = _linear_inputs(dtype, bias)
    temperature = torch.rand(mask.shape, generator=torch.Generator().manual_seed(3)) + 0.5
    loss = LOSSES[name]
    student_side = [x for x in (hidden_S, weight_S, bias_S) if x is not None]

    def run(function):
        leaves = [x.detach().clone().requires_grad_(True) for x in student_side]
        weight, rest = leaves[1], leaves[2:]
        value = function(leaves[0], weight, rest[0] if rest else None)
        (value * 0.5).backward()
        return [value.detach(), *(leaf.grad for leaf in leaves)]

    def logits(h, w, b):
        return loss(torch.nn.functional.linear(h, w, b), torch.nn.functional.linear(hidden_T, weight_T, bias_T),
                    temperature, mask)

    def fused(h, w, b):
        return fused_linear(loss, h, w, hidden_T, weight_T, temperature, mask, chunk_rows=chunk_rows, bias_S=b,
                            bias_T=bias_T)

    tolerance = TOLERANCE[dtype] if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for got, want in zip(run(fused), run(logits), strict=True):
        torch.testing.assert_close(got, want, **tolerance)


def test_the_fused_linear_head_gradient_adds_up_in_float32_for_bf16_heads() -> None:
    """bf16 hidden states and heads: each chunk's head gradient is added into a float32 sum, so
    256 chunks of 8 rows are as close to the float64 gradient as the unchunked bf16 loss (a bf16
    sum drifts to about twice its error)."""
    generator = torch.Generator().manual_seed(4)
    hidden_S, hidden_T = torch.randn(2048, 16, generator=generator), torch.randn(2048, 16, generator=generator)
    weight_S, weight_T = torch.randn(512, 16, generator=generator), torch.randn(512, 16, generator=generator)
    loss = LOSSES["kl"]

    def head_gradient(dtype: torch.dtype, chunk_rows: int | None) -> torch.Tensor:
        weight = weight_S.to(dtype).requires_grad_(True)
        h_S, h_T, w_T = (x.to(dtype) for x in (hidden_S, hidden_T, weight_T))
        if chunk_rows is None:
            value = loss(torch.nn.functional.linear(h_S, weight), torch.nn.functional.linear(h_T, w_T), 2.0, None)
        else:
            value = fused_linear(loss, h_S, weight, h_T, w_T, 2.0, None, chunk_rows=chunk_rows)
        value.backward()
        assert weight.grad.dtype == dtype
        return weight.grad.double()

    exact = head_gradient(torch.float64, None)
    error = {rows: float((head_gradient(torch.bfloat16, rows) - exact).norm() / exact.norm()) for rows in (None, 8)}
    assert error[8] < 1.5 * error[None], error


def test_the_fused_linear_variant_checks_its_heads() -> None:
    hidden_S, weight_S, _, hidden_T, weight_T, _, mask = _linear_inputs(torch.float64, False)
    with pytest.raises(ValueError, match="the heads must share a vocabulary: student 37, teacher 36"):
        fused_linear(reference.reverse_kl, hidden_S, weight_S, hidden_T, weight_T[:36], 1.0, mask)
