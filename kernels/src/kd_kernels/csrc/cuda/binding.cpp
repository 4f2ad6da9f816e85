// The thin torch binding of kd's CUDA kernels: checks, allocation, the current stream, and the
// registration of the implementations of the ops kd_kernels/ops.py defines.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string_view>

#include "kd_cuda.cuh"

namespace {

kd_cuda::DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return kd_cuda::DType::kFloat32;
    case at::kHalf:
      return kd_cuda::DType::kFloat16;
    case at::kBFloat16:
      return kd_cuda::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "kd's CUDA kernels take float32, float16 or bfloat16 inputs, got ", x.scalar_type());
  }
}

int code_of(c10::string_view name) {
  const std::string_view kind(name.data(), name.size());
  TORCH_CHECK(kind == "kl" || kind == "ce" || kind == "mse", "kd: mode must be 'kl', 'ce' or 'mse', got ", kind);
  return kind == "kl" ? 0 : (kind == "ce" ? 1 : 2);
}

void check(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, op, ": ", cudaGetErrorString(status));
}

at::Tensor f32(const at::Tensor& x) { return x.to(at::kFloat).contiguous(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_kl(const at::Tensor& student, const at::Tensor& teacher,
                                                          const at::Tensor& inv_temperature,
                                                          const at::Tensor& row_weight, c10::string_view mode) {
  TORCH_CHECK(student.dim() == 2 && student.sizes() == teacher.sizes(), "kd::softmax_kl: student ", student.sizes(),
              " and teacher ", teacher.sizes(), " must be the same [N, V]");
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.to(s.scalar_type()).contiguous();
  const at::Tensor inv_t = f32(inv_temperature), weight = f32(row_weight);
  const int64_t rows = s.size(0), vocab = s.size(1);
  const auto options = s.options().dtype(at::kFloat);
  at::Tensor row_loss = at::zeros({rows}, options), stats_s = at::empty({rows, 2}, options);
  at::Tensor stats_t = at::empty({rows, 2}, options);
  check(kd_cuda::softmax_kl_forward(dtype_of(s), s.const_data_ptr(), t.const_data_ptr(), inv_t.const_data_ptr<float>(),
                                    weight.const_data_ptr<float>(), row_loss.mutable_data_ptr<float>(),
                                    stats_s.mutable_data_ptr<float>(), stats_t.mutable_data_ptr<float>(), rows, vocab,
                                    code_of(mode), at::cuda::getCurrentCUDAStream()),
        "kd::softmax_kl");
  return {row_loss.sum(), stats_s, stats_t};
}

at::Tensor softmax_kl_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                               const at::Tensor& inv_temperature, const at::Tensor& row_weight,
                               const at::Tensor& stats_s, const at::Tensor& stats_t, c10::string_view mode) {
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.to(s.scalar_type()).contiguous();
  at::Tensor grad = at::empty_like(s);
  check(kd_cuda::softmax_kl_backward(dtype_of(s), f32(grad_loss).const_data_ptr<float>(), s.const_data_ptr(),
                                     t.const_data_ptr(), f32(inv_temperature).const_data_ptr<float>(),
                                     f32(row_weight).const_data_ptr<float>(), f32(stats_s).const_data_ptr<float>(),
                                     f32(stats_t).const_data_ptr<float>(), grad.mutable_data_ptr(), s.size(0),
                                     s.size(1), code_of(mode), at::cuda::getCurrentCUDAStream()),
        "kd::softmax_kl_backward");
  return grad;
}

kd_cuda::RelationShape shape_of(const at::Tensor& xs, const at::Tensor& xt, double scale_s, double scale_t,
                                c10::string_view kind) {
  TORCH_CHECK(xs.dim() == 4 && xt.dim() == 4 && xs.sizes().slice(0, 3) == xt.sizes().slice(0, 3),
              "kd::relation_loss: student ", xs.sizes(), " and teacher ", xt.sizes(), " must agree on [B, H, L]");
  return {xs.size(0), xs.size(1), xs.size(2), xs.size(3), xt.size(3), static_cast<float>(scale_s),
          static_cast<float>(scale_t), code_of(kind)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relation_loss(const at::Tensor& xs, const at::Tensor& ys,
                                                             const at::Tensor& xt, const at::Tensor& yt,
                                                             const at::Tensor& key_mask, const at::Tensor& row_weight,
                                                             double scale_s, double scale_t, c10::string_view kind) {
  const auto shape = shape_of(xs, xt, scale_s, scale_t, kind);
  const c10::cuda::CUDAGuard guard(xs.device());
  const auto type = xs.scalar_type();
  const at::Tensor a = xs.contiguous(), b = ys.to(type).contiguous(), c = xt.to(type).contiguous();
  const at::Tensor d = yt.to(type).contiguous();
  const auto options = a.options().dtype(at::kFloat);
  at::Tensor row_value = at::empty({shape.batch, shape.heads, shape.length}, options);
  at::Tensor stats_s = at::empty({shape.batch, shape.heads, shape.length, 2}, options);
  at::Tensor stats_t = at::empty_like(stats_s);
  check(kd_cuda::relation_loss_forward(dtype_of(a), a.const_data_ptr(), b.const_data_ptr(), c.const_data_ptr(),
                                       d.const_data_ptr(), f32(key_mask).const_data_ptr<float>(),
                                       f32(row_weight).const_data_ptr<float>(), row_value.mutable_data_ptr<float>(),
                                       stats_s.mutable_data_ptr<float>(), stats_t.mutable_data_ptr<float>(), shape,
                                       at::cuda::getCurrentCUDAStream()),
        "kd::relation_loss");
  return {row_value.sum(), stats_s, stats_t};
}

std::tuple<at::Tensor, at::Tensor> relation_loss_backward(
    const at::Tensor& grad_loss, const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt,
    const at::Tensor& yt, const at::Tensor& key_mask, const at::Tensor& row_weight, const at::Tensor& stats_s,
    const at::Tensor& stats_t, double scale_s, double scale_t, c10::string_view kind) {
  const auto shape = shape_of(xs, xt, scale_s, scale_t, kind);
  const c10::cuda::CUDAGuard guard(xs.device());
  const auto type = xs.scalar_type();
  const at::Tensor a = xs.contiguous(), b = ys.to(type).contiguous(), c = xt.to(type).contiguous();
  const at::Tensor d = yt.to(type).contiguous();
  at::Tensor grad_xs = at::empty_like(a), grad_ys = at::empty_like(b);
  check(kd_cuda::relation_loss_backward(dtype_of(a), f32(grad_loss).const_data_ptr<float>(), a.const_data_ptr(),
                                        b.const_data_ptr(), c.const_data_ptr(), d.const_data_ptr(),
                                        f32(key_mask).const_data_ptr<float>(), f32(row_weight).const_data_ptr<float>(),
                                        f32(stats_s).const_data_ptr<float>(), f32(stats_t).const_data_ptr<float>(),
                                        grad_xs.mutable_data_ptr(), grad_ys.mutable_data_ptr(), shape,
                                        at::cuda::getCurrentCUDAStream()),
        "kd::relation_loss_backward");
  return {grad_xs, grad_ys.to(ys.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(kd, CUDA, m) {
  m.impl("softmax_kl", &softmax_kl);
  m.impl("softmax_kl_backward", &softmax_kl_backward);
  m.impl("relation_loss", &relation_loss);
  m.impl("relation_loss_backward", &relation_loss_backward);
}
