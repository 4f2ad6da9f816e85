"""The ``kd`` torch.library ops: schemas, fake kernels and autograd, defined in Python.

The compiled extensions only add implementations (``TORCH_LIBRARY_IMPL(kd, CPU|CUDA, ...)``), so
the ops exist, trace and compile under torch.compile whether or not a binary was built.

- ``kd::softmax_kl(student [N, V], teacher [N, V], inv_temperature [N], row_weight [N], mode)``
  returns ``(loss, stats_student [N, 2], stats_teacher [N, 2])``: ``loss = sum_r row_weight[r] * row_loss[r]``
  with ``row_loss`` T^2 KL(p_T || p_S) ("kl") or -sum p_T log p_S ("ce"), ``p = softmax(z / T)``;
  rows of weight 0 are skipped. ``stats`` hold each row's ``(max, log sum exp(z/T - max))``,
  kept apart so that the backward pass keeps its precision at large logits.
- ``kd::softmax_kl_with_grad(student, teacher, inv_temperature, row_weight, mode)`` (CPU only)
  returns ``(loss, grad)``: the same loss, and the student's gradient for a loss gradient of 1,
  computed in the forward while each row is still in cache (Liger-Kernel's approach), so that
  the backward only scales it (in place unless the graph is retained, and not at all for a loss
  gradient of exactly 1, as ``loss.backward()`` gives) and casts it to the student's dtype. The
  gradient, contiguous in the compute dtype, is held from the forward to the backward; it is
  the op's own buffer (``kd_kernels.softmax_kl`` discards it), not to be kept by callers.
  ``kd_kernels.softmax_kl`` runs it on CPU when the student needs a gradient.
- ``kd::relation_loss(xs, ys [B, H, L, d_s], xt, yt [B, H, L, d_t], key_mask [B, L],
  row_weight [B, L], scale_s, scale_t, kind)`` returns ``(loss, stats_s, stats_t [B, H, L, 2])``:
  ``loss = sum_{b, h, i} row_weight[b, i] * row_value[b, h, i]`` over relation rows
  ``R = scale * X Y^T`` restricted to real keys, ``row_value`` being KL, CE or the sum of squared
  differences ("kl", "ce", "mse").
- ``*_backward`` ops give the student-side gradients from the saved statistics, contiguous (in
  the student's dtype) whatever the strides of the inputs. The teacher side is not
  differentiated (kd detaches it).

Statistics and losses are in the compute dtype: float64 for float64 inputs, float32 otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

LIBRARY = torch.library.Library("kd", "DEF")  # kept alive for the process: it owns the schemas
LIBRARY.define("softmax_kl(Tensor student, Tensor teacher, Tensor inv_temperature, Tensor row_weight, str mode)"
               " -> (Tensor, Tensor, Tensor)")
LIBRARY.define("softmax_kl_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor inv_temperature, "
               "Tensor row_weight, Tensor stats_student, Tensor stats_teacher, str mode) -> Tensor")
LIBRARY.define("softmax_kl_with_grad(Tensor student, Tensor teacher, Tensor inv_temperature, Tensor row_weight, "
               "str mode) -> (Tensor, Tensor)")
LIBRARY.define("relation_loss(Tensor xs, Tensor ys, Tensor xt, Tensor yt, Tensor key_mask, Tensor row_weight, "
               "float scale_s, float scale_t, str kind) -> (Tensor, Tensor, Tensor)")
LIBRARY.define("relation_loss_backward(Tensor grad_loss, Tensor xs, Tensor ys, Tensor xt, Tensor yt, "
               "Tensor key_mask, Tensor row_weight, Tensor stats_s, Tensor stats_t, float scale_s, float scale_t, "
               "str kind) -> (Tensor, Tensor)")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("kd::softmax_kl")
def _softmax_kl_fake(student, teacher, inv_temperature, row_weight, mode):
    dtype = compute_dtype(student)
    rows = student.shape[0]
    return (student.new_empty((), dtype=dtype), student.new_empty(rows, 2, dtype=dtype),
            student.new_empty(rows, 2, dtype=dtype))


@torch.library.register_fake("kd::softmax_kl_backward")
def _softmax_kl_backward_fake(grad_loss, student, teacher, inv_temperature, row_weight, stats_s, stats_t, mode):
    return student.new_empty(student.shape)  # contiguous, as the kernels return it (not empty_like's strides)


@torch.library.register_fake("kd::softmax_kl_with_grad")
def _softmax_kl_with_grad_fake(student, teacher, inv_temperature, row_weight, mode):
    dtype = compute_dtype(student)
    return student.new_empty((), dtype=dtype), student.new_empty(student.shape, dtype=dtype)


@torch.library.register_fake("kd::relation_loss")
def _relation_loss_fake(xs, ys, xt, yt, key_mask, row_weight, scale_s, scale_t, kind):
    dtype = compute_dtype(xs)
    return (xs.new_empty((), dtype=dtype), xs.new_empty((*xs.shape[:3], 2), dtype=dtype),
            xs.new_empty((*xs.shape[:3], 2), dtype=dtype))


@torch.library.register_fake("kd::relation_loss_backward")
def _relation_loss_backward_fake(grad_loss, xs, ys, xt, yt, key_mask, row_weight, stats_s, stats_t, scale_s, scale_t,
                                 kind):
    return xs.new_empty(xs.shape), ys.new_empty(ys.shape)


def _softmax_kl_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    student, teacher, inv_temperature, row_weight, mode = inputs
    _, stats_s, stats_t = output
    ctx.save_for_backward(student, teacher, inv_temperature, row_weight, stats_s, stats_t)
    ctx.mode = mode


def _softmax_kl_backward(ctx: Any, grad_loss: torch.Tensor, *unused: Any) -> tuple:
    student, teacher, inv_temperature, row_weight, stats_s, stats_t = ctx.saved_tensors
    grad = torch.ops.kd.softmax_kl_backward(grad_loss, student, teacher, inv_temperature, row_weight, stats_s, stats_t,
                                            ctx.mode)
    return grad, None, None, None, None


torch.library.register_autograd("kd::softmax_kl", _softmax_kl_backward, setup_context=_softmax_kl_setup)


def _softmax_kl_with_grad_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)  # no [N, V] zeros for the gradient of `grad`, which is never used
    ctx.save_for_backward(grad)  # saved, not kept on ctx: released once the backward has run
    ctx.student_dtype = inputs[0].dtype


def _concrete(x: torch.Tensor) -> bool:
    """Whether ``x`` holds real data here (not traced, not a functorch wrapper): only then may the
    backward branch on its value or write in place."""
    return (not torch.compiler.is_compiling() and type(x) is torch.Tensor
            and not torch._C._functorch.is_functorch_wrapped_tensor(x))


def _graph_is_kept() -> bool:
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is None or keep_graph()


def scaled_gradient(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """``grad * grad_loss`` for a gradient computed in the forward and saved for the backward.

    Eager, with the graph (and the saved gradient) released after this backward, nothing else sees
    the gradient: it is handed over as it is for a loss gradient of exactly 1 (``loss.backward()``;
    autograd then takes it as the input's ``.grad`` without a copy), else scaled in place. Traced,
    or under ``retain_graph`` (a later backward reads the saved gradient again): a new tensor.
    """
    if _concrete(grad) and _concrete(grad_loss) and not _graph_is_kept():
        if grad_loss.item() != 1.0:
            grad.mul_(grad_loss)
        return grad
    return grad * grad_loss


def _softmax_kl_with_grad_backward(ctx: Any, grad_loss: torch.Tensor | None, *unused: Any) -> tuple:
    (grad,) = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None
    if torch.is_grad_enabled():
        # create_graph=True: the gradient was written in the forward and has no graph of its own
        # (nor is the student kept to build one), so it is refused here rather than differentiated
        # as a constant.
        raise RuntimeError("kd's fused softmax_kl computed its gradient in the forward and has no double backward "
                           "(create_graph=True); run with KD_KERNELS=reference for it")
    return scaled_gradient(grad, grad_loss).to(ctx.student_dtype), None, None, None, None


torch.library.register_autograd("kd::softmax_kl_with_grad", _softmax_kl_with_grad_backward,
                                setup_context=_softmax_kl_with_grad_setup)


def _relation_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    xs, ys, xt, yt, key_mask, row_weight, scale_s, scale_t, kind = inputs
    _, stats_s, stats_t = output
    ctx.save_for_backward(xs, ys, xt, yt, key_mask, row_weight, stats_s, stats_t)
    ctx.scales = (scale_s, scale_t)
    ctx.kind = kind


def _relation_backward(ctx: Any, grad_loss: torch.Tensor, *unused: Any) -> tuple:
    xs, ys, xt, yt, key_mask, row_weight, stats_s, stats_t = ctx.saved_tensors
    grad_xs, grad_ys = torch.ops.kd.relation_loss_backward(grad_loss, xs, ys, xt, yt, key_mask, row_weight, stats_s,
                                                           stats_t, *ctx.scales, ctx.kind)
    return grad_xs, grad_ys, None, None, None, None, None, None, None


torch.library.register_autograd("kd::relation_loss", _relation_backward, setup_context=_relation_setup)


def _no_double_backward(ctx: Any, *grads: Any) -> tuple:
    raise RuntimeError("kd's fused losses have no double backward; run with KD_KERNELS=reference for it")


torch.library.register_autograd("kd::softmax_kl_backward", _no_double_backward)
torch.library.register_autograd("kd::relation_loss_backward", _no_double_backward)
