// The thin torch binding of kd's CUDA kernels: checks, allocation, the current stream, and the
// registration of the implementations of the ops kd_kernels/ops.py defines.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <string_view>
#include <vector>

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

// Every input on the device of ``first`` (the kernels read them all through device pointers).
void check_device(const char* op, const at::Tensor& first, std::initializer_list<const at::Tensor*> others) {
  TORCH_CHECK(first.is_cuda(), op, ": the student is on ", first.device(), ", not a CUDA device");
  for (const at::Tensor* other : others) {
    TORCH_CHECK(other->device() == first.device(), op, ": every input must be on ", first.device(), ", got one on ",
                other->device());
  }
}

// The dtype the kernels read both sides in: the student's, or fp32 where the sides differ (an fp32
// teacher is never rounded to a bf16 or fp16 student's dtype).
at::ScalarType common_type(std::initializer_list<const at::Tensor*> inputs) {
  const at::ScalarType first = (*inputs.begin())->scalar_type();
  for (const at::Tensor* x : inputs) {
    if (x->scalar_type() != first) return at::kFloat;
  }
  return first;
}

void check_softmax_kl(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                      const at::Tensor& inv_temperature, const at::Tensor& row_weight) {
  TORCH_CHECK(student.dim() == 2 && student.sizes() == teacher.sizes(), op, ": student ", student.sizes(),
              " and teacher ", teacher.sizes(), " must be the same [N, V]");
  TORCH_CHECK(inv_temperature.numel() == student.size(0) && row_weight.numel() == student.size(0), op,
              ": inv_temperature and row_weight must have one entry per row");
}

void check_stats(const char* op, const at::Tensor& stats, at::IntArrayRef rows) {
  std::vector<int64_t> expected(rows.begin(), rows.end());
  expected.push_back(2);
  TORCH_CHECK(stats.sizes() == at::IntArrayRef(expected), op, ": statistics must be ", at::IntArrayRef(expected),
              ", got ", stats.sizes());
}

void check_grad_loss(const char* op, const at::Tensor& grad_loss) {
  TORCH_CHECK(grad_loss.numel() == 1, op, ": grad_loss must hold one value, got ", grad_loss.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_kl(const at::Tensor& student, const at::Tensor& teacher,
                                                          const at::Tensor& inv_temperature,
                                                          const at::Tensor& row_weight, c10::string_view mode) {
  constexpr const char* op = "kd::softmax_kl";
  check_softmax_kl(op, student, teacher, inv_temperature, row_weight);
  check_device(op, student, {&teacher, &inv_temperature, &row_weight});
  const c10::cuda::CUDAGuard guard(student.device());
  const auto type = common_type({&student, &teacher});
  const at::Tensor s = student.to(type).contiguous(), t = teacher.to(type).contiguous();
  const at::Tensor inv_t = f32(inv_temperature), weight = f32(row_weight);
  const int64_t rows = s.size(0), vocab = s.size(1);
  const auto options = s.options().dtype(at::kFloat);
  at::Tensor row_loss = at::zeros({rows}, options), stats_s = at::empty({rows, 2}, options);
  at::Tensor stats_t = at::empty({rows, 2}, options);
  check(kd_cuda::softmax_kl_forward(dtype_of(s), s.const_data_ptr(), t.const_data_ptr(), inv_t.const_data_ptr<float>(),
                                    weight.const_data_ptr<float>(), row_loss.mutable_data_ptr<float>(),
                                    stats_s.mutable_data_ptr<float>(), stats_t.mutable_data_ptr<float>(), rows, vocab,
                                    code_of(mode), at::cuda::getCurrentCUDAStream()),
        op);
  return {row_loss.sum(), stats_s, stats_t};
}

at::Tensor softmax_kl_backward(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                               const at::Tensor& inv_temperature, const at::Tensor& row_weight,
                               const at::Tensor& stats_s, const at::Tensor& stats_t, c10::string_view mode) {
  constexpr const char* op = "kd::softmax_kl_backward";
  check_softmax_kl(op, student, teacher, inv_temperature, row_weight);
  check_stats(op, stats_s, {student.size(0)});
  check_stats(op, stats_t, {student.size(0)});
  check_grad_loss(op, grad_loss);
  check_device(op, student, {&teacher, &inv_temperature, &row_weight, &stats_s, &stats_t, &grad_loss});
  const c10::cuda::CUDAGuard guard(student.device());
  const auto type = common_type({&student, &teacher});
  const at::Tensor s = student.to(type).contiguous(), t = teacher.to(type).contiguous();
  at::Tensor grad = at::empty_like(s);
  check(kd_cuda::softmax_kl_backward(dtype_of(s), f32(grad_loss).const_data_ptr<float>(), s.const_data_ptr(),
                                     t.const_data_ptr(), f32(inv_temperature).const_data_ptr<float>(),
                                     f32(row_weight).const_data_ptr<float>(), f32(stats_s).const_data_ptr<float>(),
                                     f32(stats_t).const_data_ptr<float>(), grad.mutable_data_ptr(), s.size(0),
                                     s.size(1), code_of(mode), at::cuda::getCurrentCUDAStream()),
        op);
  return grad.to(student.scalar_type());
}

kd_cuda::RelationShape shape_of(const char* op, const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt,
                                const at::Tensor& yt, const at::Tensor& key_mask, const at::Tensor& row_weight,
                                double scale_s, double scale_t, c10::string_view kind) {
  TORCH_CHECK(xs.dim() == 4 && xs.sizes() == ys.sizes(), op, ": xs ", xs.sizes(), " and ys ", ys.sizes(),
              " must be the same [B, H, L, d_s]");
  TORCH_CHECK(xt.dim() == 4 && xt.sizes() == yt.sizes(), op, ": xt ", xt.sizes(), " and yt ", yt.sizes(),
              " must be the same [B, H, L, d_t]");
  TORCH_CHECK(xs.sizes().slice(0, 3) == xt.sizes().slice(0, 3), op, ": student ", xs.sizes(), " and teacher ",
              xt.sizes(), " must agree on [B, H, L]");
  TORCH_CHECK(key_mask.sizes() == row_weight.sizes() && key_mask.dim() == 2 && key_mask.size(0) == xs.size(0) &&
                  key_mask.size(1) == xs.size(2),
              op, ": key_mask and row_weight must be [B, L]");
  check_device(op, xs, {&ys, &xt, &yt, &key_mask, &row_weight});
  const kd_cuda::RelationShape shape{xs.size(0), xs.size(1), xs.size(2), xs.size(3), xt.size(3),
                                     static_cast<float>(scale_s), static_cast<float>(scale_t), code_of(kind)};
  int shared_limit = 0;
  check(cudaDeviceGetAttribute(&shared_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, xs.get_device()), op);
  const size_t bytes = kd_cuda::relation_loss_shared_bytes(shape.d_s, shape.d_t);
  TORCH_CHECK(bytes <= static_cast<size_t>(shared_limit), op, ": head sizes d_s=", shape.d_s, ", d_t=", shape.d_t,
              " need ", bytes, " bytes of shared memory per block, ", xs.device(), " allows ", shared_limit,
              " (kd_kernels.relation_loss runs the reference for such shapes)");
  TORCH_CHECK(kd_cuda::relation_loss_blocks(shape.batch * shape.heads, shape.length) <= INT32_MAX, op, ": ",
              shape.batch * shape.heads, " heads of length ", shape.length, " exceed the 2^31 - 1 blocks of a CUDA grid");
  return shape;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relation_loss(const at::Tensor& xs, const at::Tensor& ys,
                                                             const at::Tensor& xt, const at::Tensor& yt,
                                                             const at::Tensor& key_mask, const at::Tensor& row_weight,
                                                             double scale_s, double scale_t, c10::string_view kind) {
  constexpr const char* op = "kd::relation_loss";
  const auto shape = shape_of(op, xs, ys, xt, yt, key_mask, row_weight, scale_s, scale_t, kind);
  const c10::cuda::CUDAGuard guard(xs.device());
  const auto type = common_type({&xs, &ys, &xt, &yt});
  const at::Tensor a = xs.to(type).contiguous(), b = ys.to(type).contiguous(), c = xt.to(type).contiguous();
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
        op);
  return {row_value.sum(), stats_s, stats_t};
}

std::tuple<at::Tensor, at::Tensor> relation_loss_backward(
    const at::Tensor& grad_loss, const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& xt,
    const at::Tensor& yt, const at::Tensor& key_mask, const at::Tensor& row_weight, const at::Tensor& stats_s,
    const at::Tensor& stats_t, double scale_s, double scale_t, c10::string_view kind) {
  constexpr const char* op = "kd::relation_loss_backward";
  const auto shape = shape_of(op, xs, ys, xt, yt, key_mask, row_weight, scale_s, scale_t, kind);
  check_stats(op, stats_s, xs.sizes().slice(0, 3));
  check_stats(op, stats_t, xs.sizes().slice(0, 3));
  check_grad_loss(op, grad_loss);
  check_device(op, xs, {&stats_s, &stats_t, &grad_loss});
  const c10::cuda::CUDAGuard guard(xs.device());
  const auto type = common_type({&xs, &ys, &xt, &yt});
  const at::Tensor a = xs.to(type).contiguous(), b = ys.to(type).contiguous(), c = xt.to(type).contiguous();
  const at::Tensor d = yt.to(type).contiguous();
  at::Tensor grad_xs = at::empty_like(a), grad_ys = at::empty_like(b);
  check(kd_cuda::relation_loss_backward(dtype_of(a), f32(grad_loss).const_data_ptr<float>(), a.const_data_ptr(),
                                        b.const_data_ptr(), c.const_data_ptr(), d.const_data_ptr(),
                                        f32(key_mask).const_data_ptr<float>(), f32(row_weight).const_data_ptr<float>(),
                                        f32(stats_s).const_data_ptr<float>(), f32(stats_t).const_data_ptr<float>(),
                                        grad_xs.mutable_data_ptr(), grad_ys.mutable_data_ptr(), shape,
                                        at::cuda::getCurrentCUDAStream()),
        op);
  return {grad_xs.to(xs.scalar_type()), grad_ys.to(ys.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(kd, CUDA, m) {
  m.impl("softmax_kl", &softmax_kl);
  m.impl("softmax_kl_backward", &softmax_kl_backward);
  m.impl("relation_loss", &relation_loss);
  m.impl("relation_loss_backward", &relation_loss_backward);
}
