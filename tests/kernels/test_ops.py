"""Every kd op against kd_kernels.reference on every available device: random and adversarial
inputs, odd shapes, per-dtype tolerances, gradients, float64 gradcheck, torch.library.opcheck,
padding invariance and torch.compile."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import kd_kernels
from kd_kernels import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Tolerances of the fused result against the reference run on the same (upcast) inputs. Low
# precision inputs are computed in fp32 by both, so only the gradient, returned in the input
# dtype, carries the dtype's own rounding.
LOSS_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-5, 2e-5),
            torch.float16: (2e-5, 2e-5)}
GRAD_TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-6), torch.bfloat16: (2e-2, 1e-3),
            torch.float16: (2e-3, 1e-4)}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# The backward ops have no derivative of their own (no double backward), so opcheck's gradient
# check through AOT dispatch does not apply to them; the forward ops get every check.
BACKWARD_OP_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.fixture(autouse=True)
def _fused_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_KERNELS", "fused")  # a missing kernel fails the test instead of passing on the reference
    for device in DEVICES:
        kd_kernels.backend("softmax_kl", device)  # loads the extension, so torch.ops.kd can be called directly


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _compare(fused: torch.Tensor, ref: torch.Tensor, inputs: list[torch.Tensor], dtype: torch.dtype) -> None:
    rtol, atol = LOSS_TOL[dtype]
    torch.testing.assert_close(fused[0], ref[0], rtol=rtol, atol=atol * max(1.0, abs(ref[0].item())))
    rtol, atol = GRAD_TOL[dtype]
    for got, want in zip(fused[1:], ref[1:], strict=True):
        scale = want.abs().max().item() or 1.0
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale)


def _run(function, inputs: list[torch.Tensor], *args, **kwargs) -> list[torch.Tensor]:
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    value = function(*leaves, *args, **kwargs)
    grads = torch.autograd.grad(value, leaves)
    return [value.detach(), *grads]


# -- softmax_kl --------------------------------------------------------------------------------

def _logit_case(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int = 0, scale: float = 4.0):
    g = _gen(seed)
    s = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    t = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    mask = (torch.rand(shape[:-1], generator=g) > 0.3).long().to(device)
    return s, t, mask


@pytest.fixture(params=["grad_in_forward", "stats"])
def softmax_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both CPU implementations of a differentiated ``softmax_kl``: the gradient written in the
    forward (``kd::softmax_kl_with_grad``, what a student that needs a gradient gets) and the
    statistics-only op with its backward (``kd::softmax_kl`` + ``kd::softmax_kl_backward``)."""
    from kd_kernels import dispatch

    if request.param == "stats":
        monkeypatch.setattr(dispatch, "_gradient_in_forward", lambda student: False)
    return request.param


def _softmax_kl_check(s, t, temperature, mask, mode, dtype) -> None:
    fused = _run(lambda x: kd_kernels.softmax_kl(x, t, temperature, mask, mode), [s])
    ref = _run(lambda x: reference.softmax_kl(x, t, temperature, mask, mode), [s])
    _compare(fused, ref, [s], dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(41, 1271), (3, 7, 131), (1, 2), (5, 17), (2, 3, 1)], ids=str)
@pytest.mark.parametrize("mode", ["kl", "ce"])
def test_softmax_kl_matches_the_reference(device: str, dtype: torch.dtype, shape: tuple, mode: str,
                                          softmax_path: str) -> None:
    s, t, mask = _logit_case(shape, dtype, device)
    _softmax_kl_check(s, t, 4.0, mask, mode, dtype)
    _softmax_kl_check(s, t, 1.0, None, mode, dtype)


def _no_worse_than_eager(s, t, temperature, mask, mode) -> None:
    """At extreme logits fp32 itself is the limit: the fused result must be as close to the
    float64 truth as the fp32 reference is (within a factor of 4)."""
    fused = _run(lambda x: kd_kernels.softmax_kl(x, t, temperature, mask, mode), [s])
    eager = _run(lambda x: reference.softmax_kl(x, t, temperature, mask, mode), [s])
    temperature64 = temperature.double() if isinstance(temperature, torch.Tensor) else temperature
    truth = _run(lambda x: reference.softmax_kl(x, t.double(), temperature64, mask, mode), [s.double()])
    for got, base, exact in zip(fused, eager, truth, strict=True):
        floor = 1e-6 * exact.abs().max().item()
        assert (got.double() - exact).abs().max() <= 4 * (base.double() - exact).abs().max() + floor


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 20.0])
@pytest.mark.parametrize("mode", ["kl", "ce"])
def test_softmax_kl_adversarial_logits(device: str, temperature: float, mode: str, softmax_path: str) -> None:
    s, t, mask = _logit_case((16, 301), torch.float32, device, seed=1, scale=1e4)  # logits up to about +-4e4
    t[2, :150] = -math.inf  # classes the teacher rules out
    t[3, 5] = -math.inf
    mask[4] = 0
    rows = torch.arange(16, device=device)
    per_row = (rows.float() % 5 + 1) * temperature / 3  # a per-row temperature tensor
    _no_worse_than_eager(s, t, temperature, mask, mode)
    _no_worse_than_eager(s, t, per_row.to(device), mask, mode)
    moderate, t_moderate, _ = _logit_case((16, 301), torch.float32, device, seed=2, scale=30)
    t_moderate[2, :150] = -math.inf
    _softmax_kl_check(moderate, t_moderate, temperature, mask, mode, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_kl_fully_masked_rows_give_exact_zero_and_zero_gradient(device: str, softmax_path: str) -> None:
    s, t, mask = _logit_case((4, 9, 33), torch.float32, device)
    s = s.requires_grad_()
    value = kd_kernels.softmax_kl(s, t, 2.0, torch.zeros_like(mask))
    value.backward()
    assert value.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))
    s.grad = None
    mask[1] = 0  # one fully masked sequence: its rows take no part and get no gradient
    kd_kernels.softmax_kl(s, t, 2.0, mask).backward()
    assert torch.equal(s.grad[1], torch.zeros_like(s.grad[1])) and s.grad[0].abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_kl_padding_changes_nothing(device: str) -> None:
    s, t, mask = _logit_case((3, 6, 50), torch.float32, device)
    pad = torch.randn(3, 4, 50, generator=_gen(5)).to(device) * 100
    padded = kd_kernels.softmax_kl(torch.cat([s, pad], 1), torch.cat([t, -pad], 1), 3.0,
                                   torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype, device=device)], 1))
    torch.testing.assert_close(padded, kd_kernels.softmax_kl(s, t, 3.0, mask))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["kl", "ce"])
@pytest.mark.parametrize("fill", [math.inf, -math.inf, 1e38], ids=["inf", "-inf", "huge"])
def test_softmax_kl_padded_rows_holding_inf_change_nothing(device: str, mode: str, fill: float,
                                                           softmax_path: str) -> None:
    s, t, mask = _logit_case((3, 6, 50), torch.float32, device)
    trimmed = _run(lambda x: reference.softmax_kl(x, t[:, :4], 2.0, mask[:, :4], mode), [s[:, :4]])
    mask[:, 4:] = 0
    s[:, 4:], t[:, 4:] = fill, fill
    for function in (kd_kernels.softmax_kl, reference.softmax_kl):
        value, grad = _run(lambda x, f=function: f(x, t, 2.0, mask, mode), [s])
        assert torch.isfinite(grad).all()
        assert torch.equal(grad[:, 4:], torch.zeros_like(grad[:, 4:]))
        _compare([value, grad[:, :4]], trimmed, [s], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["kl", "ce"])
@pytest.mark.parametrize("temperature", [0.5, 4.0])
@pytest.mark.parametrize("offset", [30.0, 5000.0])
@pytest.mark.parametrize("difference", [0.0, 0.05])
def test_softmax_kl_logits_sharing_a_large_offset(device: str, mode: str, temperature: float, offset: float,
                                                  difference: float) -> None:
    """student = teacher + offset (+ small differences): the same distributions, or nearly. The
    fused loss must match float64 math on the same inputs to fp32 precision: a kernel that takes
    the expectation of raw logits and subtracts log-sum-exps afterwards cancels catastrophically
    (errors ~1e-3, and a negative KL)."""
    g = _gen(11)
    t = torch.randn(16, 1000, generator=g) * 3
    s = t + offset + torch.randn(16, 1000, generator=g) * difference
    value = kd_kernels.softmax_kl(s.to(device), t.to(device), temperature, mode=mode).item()
    truth = reference.softmax_kl(s.double(), t.double(), temperature, mode=mode).item()
    t_squared = max(1.0, temperature**2)
    assert abs(value - truth) <= 1e-7 * t_squared + 1e-6 * abs(truth), (value, truth)
    if mode == "kl":
        assert value >= -1e-7 * t_squared


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["kl", "ce"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                    (torch.float16, torch.bfloat16), (torch.float32, torch.float64)], ids=str)
def test_softmax_kl_student_and_teacher_dtypes_may_differ(device: str, mode: str, dtypes: tuple,
                                                          softmax_path: str) -> None:
    student_dtype, teacher_dtype = dtypes
    s, t, mask = _logit_case((4, 5, 67), torch.float64, device)
    s, t = s.to(student_dtype), t.to(teacher_dtype)
    fused = _run(lambda x: kd_kernels.softmax_kl(x, t, 2.0, mask, mode), [s])
    ref = _run(lambda x: reference.softmax_kl(x, t, 2.0, mask, mode), [s])
    assert fused[1].dtype == student_dtype
    _compare(fused, ref, [s], student_dtype)


@pytest.mark.parametrize("mode", ["kl", "ce"])
def test_softmax_kl_gradcheck_float64(mode: str, softmax_path: str) -> None:
    s, t, mask = _logit_case((3, 4, 11), torch.float64, "cpu")
    temperature = torch.rand(3, 4, generator=_gen(2), dtype=torch.float64) * 3 + 0.5
    assert torch.autograd.gradcheck(lambda x: kd_kernels.softmax_kl(x, t, temperature, mask, mode),
                                    (s.requires_grad_(),))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["kl", "ce"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_softmax_kl_opcheck(device: str, mode: str, layout: str) -> None:
    s, t, mask = _logit_case((6, 37), torch.float32, device)
    if layout == "transposed":  # [N, V] views of [V, N] storage: the fake must match the kernels' strides
        s, t = s.t().contiguous().t(), t.t().contiguous().t()
    weight = mask.float() / mask.sum()
    inv_t = torch.full((6,), 0.25, device=device)
    torch.library.opcheck(torch.ops.kd.softmax_kl.default, (s.requires_grad_(), t, inv_t, weight, mode))
    _, stats_s, stats_t = torch.ops.kd.softmax_kl(s, t, inv_t, weight, mode)
    torch.library.opcheck(torch.ops.kd.softmax_kl_backward.default,
                          (torch.tensor(1.0, device=device), s.detach(), t, inv_t, weight, stats_s, stats_t, mode),
                          test_utils=BACKWARD_OP_CHECKS)


@pytest.mark.parametrize("mode", ["kl", "ce"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_softmax_kl_with_grad_opcheck(mode: str, layout: str) -> None:
    s, t, mask = _logit_case((6, 37), torch.float32, "cpu")
    if layout == "transposed":
        s, t = s.t().contiguous().t(), t.t().contiguous().t()
    weight = mask.float() / mask.sum()
    inv_t = torch.full((6,), 0.25)
    torch.library.opcheck(torch.ops.kd.softmax_kl_with_grad.default, (s.requires_grad_(), t, inv_t, weight, mode))


def _dispatched_ops(function) -> set[str]:
    """The kd ops a call of ``function`` dispatches to."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[str] = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "kd":
                seen.add(func._opname)
            return func(*args, **(kwargs or {}))

    with Record():
        function()
    return seen


def test_softmax_kl_computes_the_gradient_in_the_forward_only_when_it_is_needed() -> None:
    s, t, mask = _logit_case((4, 5, 67), torch.float32, "cpu")
    student = s.clone().requires_grad_()
    assert _dispatched_ops(lambda: kd_kernels.softmax_kl(student, t, 2.0, mask)) == {"softmax_kl_with_grad"}
    with torch.no_grad():
        assert _dispatched_ops(lambda: kd_kernels.softmax_kl(student, t, 2.0, mask)) == {"softmax_kl"}
    assert _dispatched_ops(lambda: kd_kernels.softmax_kl(s, t, 2.0, mask)) == {"softmax_kl"}  # no gradient needed
    # A teacher that needs a gradient runs the reference (the fused ops differentiate the student only).
    assert _dispatched_ops(lambda: kd_kernels.softmax_kl(s, t.clone().requires_grad_(), 2.0, mask)) == set()
    # The same loss whichever path computed it.
    with torch.no_grad():
        stats_only = kd_kernels.softmax_kl(student, t, 2.0, mask)
    torch.testing.assert_close(kd_kernels.softmax_kl(student, t, 2.0, mask).detach(), stats_only, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["kl", "ce"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_kl_scales_its_gradient_by_the_loss_gradient(mode: str, dtype: torch.dtype, softmax_path: str) -> None:
    """The gradient the forward wrote holds for a loss gradient of 1; any other is applied in the
    backward (the loss scaled, summed with another, or a gradient passed to backward())."""
    s, t, mask = _logit_case((3, 7, 131), dtype, "cpu")
    temperature = torch.rand(3, 7, generator=_gen(3)) * 3 + 0.5

    def scaled(function):
        def loss(x):
            return 0.37 * function(x, t, temperature, mask, mode) + (x.float() ** 2).sum() * 1e-3
        return loss

    _compare(_run(scaled(kd_kernels.softmax_kl), [s]), _run(scaled(reference.softmax_kl), [s]), [s], dtype)
    student = s.detach().clone().requires_grad_()
    kd_kernels.softmax_kl(student, t, temperature, mask, mode).backward(torch.tensor(-2.5))
    want = _run(lambda x: -2.5 * reference.softmax_kl(x, t, temperature, mask, mode), [s])
    _compare([torch.tensor(0.0), student.grad], [torch.tensor(0.0), want[1]], [s], dtype)


def test_softmax_kl_with_grad_retain_graph_and_accumulation(softmax_path: str) -> None:
    """Backward twice through one graph, and into a .grad that already holds a gradient: the
    gradient handed to autograd must not be changed by either."""
    s, t, mask = _logit_case((4, 9, 33), torch.float32, "cpu")
    want = _run(lambda x: reference.softmax_kl(x, t, 2.0, mask), [s])[1]
    student = s.clone().requires_grad_()
    loss = kd_kernels.softmax_kl(student, t, 2.0, mask)
    loss.backward(retain_graph=True)
    first = student.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(first, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(student.grad, 3 * want, rtol=1e-4, atol=1e-6)
    student.grad.mul_(0.5)  # as gradient clipping does, in place
    kd_kernels.softmax_kl(student, t, 2.0, mask).backward()
    torch.testing.assert_close(student.grad, 2.5 * want, rtol=1e-4, atol=1e-6)


def test_softmax_kl_has_no_double_backward(softmax_path: str) -> None:
    """The statistics-only op refuses the derivative of its gradient; the op that wrote the
    gradient in its forward refuses create_graph=True (it has no graph for that gradient)."""
    s, t, mask = _logit_case((2, 3, 17), torch.float32, "cpu")
    student = s.requires_grad_()
    with pytest.raises(RuntimeError, match="no double backward"):
        (grad,) = torch.autograd.grad(kd_kernels.softmax_kl(student, t, 2.0, mask), student, create_graph=True)
        torch.testing.assert_close(grad, _run(lambda x: reference.softmax_kl(x, t, 2.0, mask), [s])[1])
        grad.pow(2).sum().backward()


def test_softmax_kl_with_grad_reuses_large_buffers_correctly() -> None:
    """Gradients of 16 MiB and more are written to a buffer kept from call to call: a reused
    buffer's old contents must not leak (masked rows get exact zeros), and a gradient still held
    is never handed out again."""
    rows, vocab = 64, 70_000  # 17.9 MB of fp32
    g = _gen(21)
    s, t = torch.randn(rows, vocab, generator=g) * 3, torch.randn(rows, vocab, generator=g) * 3
    mask = torch.ones(rows, dtype=torch.long)
    mask[5:9] = 0
    held = []
    for step, (row_mask, temperature) in enumerate([(None, 2.0), (mask, 4.0), (None, 1.0), (mask, 2.0)]):
        student = s.clone().requires_grad_()
        kd_kernels.softmax_kl(student, t, temperature, row_mask).backward()
        want = _run(lambda x, m=row_mask, T=temperature: reference.softmax_kl(x, t, T, m), [s])[1]
        torch.testing.assert_close(student.grad, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
        if row_mask is not None:
            assert torch.equal(student.grad[5:9], torch.zeros_like(student.grad[5:9]))
        if step < 2:
            held.append((student.grad, want))  # kept alive: the next calls need other buffers
    pointers = {grad.data_ptr() for grad, _ in held}
    assert len(pointers) == len(held)
    for grad, want in held:
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
@pytest.mark.parametrize("mode", ["kl", "ce"])
def test_softmax_kl_compiles_forward_and_backward_with_a_scaled_loss(mode: str) -> None:
    """Under torch.compile (inductor) the backward of ``kd::softmax_kl_with_grad`` is traced: no
    data-dependent branch on the loss gradient, which is then always applied."""
    s, t, mask = _logit_case((3, 5, 97), torch.float32, "cpu")

    def losses(x):
        return 0.37 * kd_kernels.softmax_kl(x, t, 2.0, mask, mode) + kd_kernels.softmax_kl(x, t, 3.0, None, mode)

    def expected(x):
        return 0.37 * reference.softmax_kl(x, t, 2.0, mask, mode) + reference.softmax_kl(x, t, 3.0, None, mode)

    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        traced = _run(torch.compile(losses, fullgraph=True), [s])
    _compare(traced, _run(expected, [s]), [s], torch.float32)


# -- relation_loss -----------------------------------------------------------------------------

def _relation_case(batch: int, heads: int, length: int, d_s: int, d_t: int, dtype: torch.dtype, device: str,
                   seed: int = 0, scale: float = 1.0):
    g = _gen(seed)
    tensors = [torch.randn(batch, heads, length, d, generator=g, dtype=torch.float64) * scale
               for d in (d_s, d_s, d_t, d_t)]
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return [x.to(dtype).to(device) for x in tensors], mask.to(device)


def _relation_check(tensors, mask, kind, dtype, **scales) -> None:
    xs, ys, xt, yt = tensors
    fused = _run(lambda a, b: kd_kernels.relation_loss(a, b, xt, yt, mask, kind, **scales), [xs, ys])
    ref = _run(lambda a, b: reference.relation_loss(a, b, xt, yt, mask, kind, **scales), [xs, ys])
    _compare(fused, ref, [xs, ys], dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 37, 5, 7), (1, 2, 130, 16, 32), (3, 1, 1, 3, 3), (2, 2, 129, 33, 8)],
                         ids=str)
@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
def test_relation_loss_matches_the_reference(device: str, dtype: torch.dtype, shape: tuple, kind: str) -> None:
    tensors, mask = _relation_case(*shape, dtype, device)
    _relation_check(tensors, mask, kind, dtype)
    _relation_check(tensors, None, kind, dtype, scale_s=0.3, scale_t=0.05)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["kl", "ce"])
def test_relation_loss_with_large_relations(device: str, kind: str) -> None:
    tensors, mask = _relation_case(2, 2, 70, 8, 8, torch.float32, device, seed=3, scale=6.0)  # peaked rows
    _relation_check(tensors, mask, kind, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_value_relation_passes_the_same_tensor_twice(device: str) -> None:
    (v_s, _, v_t, _), mask = _relation_case(2, 3, 40, 8, 12, torch.float32, device)
    fused = _run(lambda v: kd_kernels.relation_loss(v, v, v_t, v_t, mask), [v_s])
    ref = _run(lambda v: reference.relation_loss(v, v, v_t, v_t, mask), [v_s])
    _compare(fused, ref, [v_s], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
def test_relation_loss_padding_and_masked_sequences(device: str, kind: str) -> None:
    (xs, ys, xt, yt), mask = _relation_case(2, 2, 20, 4, 6, torch.float32, device)
    pad = [torch.randn(*x.shape[:2], 9, x.shape[-1], generator=_gen(7)).to(device) * 30 for x in (xs, ys, xt, yt)]
    padded_mask = torch.cat([mask, torch.zeros(2, 9, dtype=mask.dtype, device=device)], 1)
    padded = kd_kernels.relation_loss(*(torch.cat([x, p], 2) for x, p in zip((xs, ys, xt, yt), pad, strict=True)),
                                      padded_mask, kind)
    torch.testing.assert_close(padded, kd_kernels.relation_loss(xs, ys, xt, yt, mask, kind))
    xs = xs.requires_grad_()
    value = kd_kernels.relation_loss(xs, ys, xt, yt, torch.zeros_like(mask), kind)
    value.backward()
    assert value.item() == 0.0 and torch.equal(xs.grad, torch.zeros_like(xs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
@pytest.mark.parametrize("fill", [math.inf, -math.inf, 1e30, math.nan], ids=["inf", "-inf", "huge", "nan"])
def test_relation_loss_padding_holding_inf_gives_the_trimmed_gradients(device: str, kind: str, fill: float) -> None:
    """Padded tokens (within a sequence and appended) hold inf, huge values or NaN: the loss and
    the gradients of real tokens are those of the trimmed inputs, padded tokens get exactly 0,
    nothing is NaN. (A kernel that multiplies exp(R - max - log_sum) by a 0/1 mask gives
    inf * 0 = NaN; so do the zero-filled keys past L in the last tile.)"""
    (xs, ys, xt, yt), _ = _relation_case(2, 2, 20, 4, 6, torch.float32, device)
    lengths = torch.tensor([20, 13], device=device)
    mask = (torch.arange(20, device=device)[None, :] < lengths[:, None]).long()
    trimmed = _run(lambda a, b: reference.relation_loss(a, b, xt, yt, mask, kind), [xs, ys])
    padded = [torch.cat([x, torch.zeros(2, 2, 9, x.shape[-1], device=device)], 2) for x in (xs, ys, xt, yt)]
    padded_mask = torch.cat([mask, torch.zeros(2, 9, dtype=mask.dtype, device=device)], 1)
    pads = ~padded_mask.bool()[:, None, :, None]
    padded = [x.masked_fill(pads, fill) for x in padded]
    for function in (kd_kernels.relation_loss, reference.relation_loss):
        value, grad_xs, grad_ys = _run(lambda a, b, f=function: f(a, b, *padded[2:], padded_mask, kind), padded[:2])
        assert torch.isfinite(grad_xs).all() and torch.isfinite(grad_ys).all()
        for grad in (grad_xs, grad_ys):
            assert torch.equal(grad.masked_select(pads), torch.zeros_like(grad.masked_select(pads)))
        _compare([value, grad_xs[:, :, :20].masked_fill(pads[:, :, :20], 0),
                  grad_ys[:, :, :20].masked_fill(pads[:, :, :20], 0)],
                 [trimmed[0], *(grad.masked_fill(pads[:, :, :20], 0) for grad in trimmed[1:])], [xs, ys], torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["kl", "ce"])
@pytest.mark.parametrize("offset", [30.0, 5000.0])
@pytest.mark.parametrize("difference", [0.0, 0.05])
def test_relation_loss_relations_sharing_a_large_offset(device: str, kind: str, offset: float,
                                                        difference: float) -> None:
    """R_S = R_T + offset (+ small differences) through an extra feature: the fused loss must
    match float64 math on the same inputs to fp32 precision (no catastrophic cancellation)."""
    g = _gen(12)
    xt, yt = (torch.randn(2, 2, 150, 8, generator=g) for _ in range(2))
    extra = torch.full((2, 2, 150, 1), offset / 0.5)
    xs = torch.cat([xt + torch.randn(2, 2, 150, 8, generator=g) * difference, extra], -1)
    ys = torch.cat([yt, torch.ones_like(extra)], -1)
    mask = torch.ones(2, 150)
    mask[1, 100:] = 0
    inputs = [x.to(device) for x in (xs, ys, xt, yt)]
    value = kd_kernels.relation_loss(*inputs, mask.to(device), kind, 0.5, 0.5).item()
    truth = reference.relation_loss(*(x.double() for x in (xs, ys, xt, yt)), mask, kind, 0.5, 0.5).item()
    assert abs(value - truth) <= 1e-6 * (1 + abs(truth)), (value, truth)
    if kind == "kl":
        assert value >= -1e-7


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)], ids=str)
def test_relation_loss_student_and_teacher_dtypes_may_differ(device: str, kind: str, dtypes: tuple) -> None:
    (xs, ys, xt, yt), mask = _relation_case(2, 2, 19, 4, 6, torch.float64, device)
    xs, ys, xt, yt = xs.to(dtypes[0]), ys.to(dtypes[0]), xt.to(dtypes[1]), yt.to(dtypes[1])
    fused = _run(lambda a, b: kd_kernels.relation_loss(a, b, xt, yt, mask, kind), [xs, ys])
    ref = _run(lambda a, b: reference.relation_loss(a, b, xt, yt, mask, kind), [xs, ys])
    assert fused[1].dtype == fused[2].dtype == dtypes[0]
    _compare(fused, ref, [xs, ys], dtypes[0])


@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
def test_relation_loss_gradcheck_float64(kind: str) -> None:
    (xs, ys, xt, yt), mask = _relation_case(2, 2, 9, 3, 5, torch.float64, "cpu")
    assert torch.autograd.gradcheck(lambda a, b: kd_kernels.relation_loss(a, b, xt, yt, mask, kind),
                                    (xs.requires_grad_(), ys.requires_grad_()))


def _hf_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, H, L, d] as the view HF attention produces, ``q.transpose(1, 2)`` of [B, L, H, d]."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_relation_loss_opcheck(device: str, kind: str, layout: str) -> None:
    (xs, ys, xt, yt), mask = _relation_case(2, 2, 11, 4, 6, torch.float32, device)
    if layout == "transposed":
        xs, ys, xt, yt = (_hf_layout(x) for x in (xs, ys, xt, yt))
    real = mask.float()
    weight = real / (2 * real.sum())
    torch.library.opcheck(torch.ops.kd.relation_loss.default,
                          (xs.requires_grad_(), ys.requires_grad_(), xt, yt, real, weight, 0.5, 0.4, kind))
    _, stats_s, stats_t = torch.ops.kd.relation_loss(xs, ys, xt, yt, real, weight, 0.5, 0.4, kind)
    torch.library.opcheck(torch.ops.kd.relation_loss_backward.default,
                          (torch.tensor(1.0, device=device), xs.detach(), ys.detach(), xt, yt, real, weight,
                           stats_s, stats_t, 0.5, 0.4, kind), test_utils=BACKWARD_OP_CHECKS)


# -- compile and dispatch ----------------------------------------------------------------------

def test_the_ops_compile_without_graph_breaks() -> None:
    s, t, mask = _logit_case((4, 6, 50), torch.float32, "cpu")
    (xs, _, xt, _), token_mask = _relation_case(2, 2, 12, 4, 6, torch.float32, "cpu")

    def losses(s, xs):
        return kd_kernels.softmax_kl(s, t, 2.0, mask) + kd_kernels.relation_loss(xs, xs, xt, xt, token_mask)

    compiled = torch.compile(losses, fullgraph=True, backend="aot_eager")
    eager = _run(losses, [s, xs])
    traced = _run(compiled, [s, xs])
    for got, want in zip(traced, eager, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_the_ops_compile_with_inductor_on_transposed_inputs() -> None:
    """HF attention hands over ``q.transpose(1, 2)`` views: inductor checks every op output
    against the fake kernel's strides, so a fake that keeps permuted strides fails here."""
    (xs, ys, xt, yt), token_mask = _relation_case(2, 3, 11, 4, 6, torch.float32, "cpu")
    xs, ys, xt, yt = (_hf_layout(x) for x in (xs, ys, xt, yt))
    logits, teacher, mask = _logit_case((6, 37), torch.float32, "cpu")
    logits, teacher = logits.t().contiguous().t(), teacher.t().contiguous().t()

    def losses(a, b, z):
        return kd_kernels.relation_loss(a, b, xt, yt, token_mask) + kd_kernels.softmax_kl(z, teacher, 2.0, mask)

    torch._dynamo.reset()
    # No cached graph: one compiled against an earlier fake kernel would hide a wrong one.
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        traced = _run(torch.compile(losses, fullgraph=True), [xs, ys, logits])
    eager = _run(lambda a, b, z: reference.relation_loss(a, b, xt, yt, token_mask)
                 + reference.softmax_kl(z, teacher, 2.0, mask), [xs, ys, logits])
    _compare(traced, eager, [xs, ys, logits], torch.float32)


def test_fused_losses_are_unchanged_under_autocast() -> None:
    s, t, mask = _logit_case((4, 6, 50), torch.float32, "cpu")
    tensors, token_mask = _relation_case(2, 2, 12, 4, 6, torch.float32, "cpu")

    def losses():
        return [kd_kernels.softmax_kl(s, t, 2.0, mask), *(kd_kernels.relation_loss(*tensors, token_mask, kind)
                                                         for kind in ("kl", "ce", "mse"))]

    plain = losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for got, want in zip(losses(), plain, strict=True):
            assert got.dtype == torch.float32 and torch.equal(got, want)


def test_cuda_relation_fits_the_device_limits() -> None:
    """The decision that keeps too-large heads off the CUDA kernels, checked without a GPU."""
    from kd_kernels.dispatch import cuda_relation_fits, cuda_relation_shared_bytes

    h100 = 227 * 1024  # cudaDevAttrMaxSharedMemoryPerBlockOptin of sm_90 (and 163 KiB on sm_80)
    assert cuda_relation_shared_bytes(64, 64) == 4 * (96 * 128 + 32 + 64 * 64 + 4 * 32)
    assert cuda_relation_fits(64, 64, 32 * 12, 512, h100)  # MiniLM-sized heads
    assert cuda_relation_fits(64, 64, 32 * 12, 512, 163 * 1024)
    assert not cuda_relation_fits(312, 768, 32, 128, h100)  # NST: one head the size of the hidden states
    assert not cuda_relation_fits(64, 64, 32 * 12, 512, 48 * 1024)
    assert cuda_relation_fits(64, 64, 100_000, 64, h100)  # batch * heads past gridDim.y's 65535
    assert not cuda_relation_fits(64, 64, 2**26, 4096, h100)  # 2^32 blocks
    # The Python mirror of the launch geometry must follow the .cu file.
    source = (Path(kd_kernels.__file__).parent / "csrc" / "cuda" / "relation_loss.cu").read_text()
    from kd_kernels import dispatch

    assert f"constexpr int kRows = {dispatch.CUDA_RELATION_ROWS};" in source
    assert f"constexpr int kTile = {dispatch.CUDA_RELATION_TILE};" in source


def test_relation_loss_on_cuda_falls_back_for_heads_that_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from kd_kernels import dispatch
    from kd_kernels.build import KernelWarning

    properties = SimpleNamespace(shared_memory_per_block_optin=227 * 1024)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    monkeypatch.setattr(dispatch, "_MISFITS", set())
    assert dispatch._cuda_relation_runs(64, 64, 384, 512, 0)
    with pytest.warns(KernelWarning, match=r"d_s=312, d_t=768 need 495232 bytes of shared memory per block, cuda:0 "
                                           r"allows 232448\); using the pure-PyTorch reference"):
        assert not dispatch._cuda_relation_runs(312, 768, 32, 128, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per shape
        assert not dispatch._cuda_relation_runs(312, 768, 32, 128, 0)


def test_backend_reports_the_choice_and_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kd_kernels.backend("softmax_kl", "cpu").fused
    monkeypatch.setenv("KD_KERNELS", "reference")
    choice = kd_kernels.backend("relation_loss", "cpu")
    assert (choice.name, choice.reason) == ("reference", "KD_KERNELS=reference")
    monkeypatch.setenv("KD_KERNELS", "fused")
    with pytest.raises(RuntimeError, match="KD_KERNELS=fused, but the fused meta kernels are unavailable"):
        kd_kernels.backend("softmax_kl", "meta")
    monkeypatch.setenv("KD_KERNELS", "fastest")
    with pytest.raises(ValueError, match="KD_KERNELS='fastest' is not one of auto, fused, reference"):
        kd_kernels.backend("softmax_kl", "cpu")
    with pytest.raises(ValueError, match="unknown op 'softmax'"):
        kd_kernels.backend("softmax", "cpu")


def test_info_names_every_op_and_device() -> None:
    from kd_kernels.info import report

    text = report()
    assert "softmax_kl on cpu: fused" in text and "relation_loss on cpu: fused" in text


def test_gradient_buffers_can_be_freed_every_call() -> None:
    # KD_KERNELS_KEEP_BUFFER=0: no idle gradient buffer is kept between calls; results unchanged
    import os
    import subprocess
    import sys

    code = ("import torch, kd_kernels; from kd_kernels import reference\n"
            "s = (torch.randn(600, 8000) * 3).requires_grad_(); t = torch.randn(600, 8000) * 3\n"
            "for _ in range(3):\n"
            "    s.grad = None; kd_kernels.softmax_kl(s, t, 2.0).backward()\n"
            "fused = s.grad.clone(); s.grad = None; reference.softmax_kl(s, t, 2.0).backward()\n"
            "torch.testing.assert_close(fused, s.grad); print('same')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KD_KERNELS_KEEP_BUFFER": "0"})
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]
