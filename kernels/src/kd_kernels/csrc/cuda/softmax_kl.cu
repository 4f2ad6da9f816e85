// softmax_kl on CUDA: one block per row. Forward: a max pass and an exp pass (the row is read
// twice, the second time mostly from L2), block reductions, one thread writes the row's weighted
// loss and its statistics. The expectation over p_T is taken of terms centred on the row maxima,
// so logits that share a large offset do not cancel catastrophically. Backward: grad = coef * (p_S - p_T), each element written once.
#include "common.cuh"

namespace kd_cuda {
namespace {

constexpr int kThreads = 512;

template <typename T>
__global__ void forward_kernel(const T* __restrict__ student, const T* __restrict__ teacher,
                               const float* __restrict__ inv_temperature, const float* __restrict__ row_weight,
                               float* __restrict__ row_loss, float* __restrict__ stats_s, float* __restrict__ stats_t,
                               int64_t vocab, int mode) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float weight = row_weight[row];
  if (weight == 0.f) {
    if (threadIdx.x == 0) {
      row_loss[row] = 0.f;
      stats_s[2 * row] = stats_s[2 * row + 1] = stats_t[2 * row] = stats_t[2 * row + 1] = 0.f;
    }
    return;
  }
  const T* s = student + row * vocab;
  const T* t = teacher + row * vocab;
  const float inv_t = inv_temperature[row];
  float max_s = kMinusInfinity, max_t = kMinusInfinity;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    max_s = fmaxf(max_s, to_float(s[v]));
    max_t = fmaxf(max_t, to_float(t[v]));
  }
  max_s = scaled(block_reduce(max_s, Max(), scratch, kMinusInfinity), inv_t);
  max_t = scaled(block_reduce(max_t, Max(), scratch, kMinusInfinity), inv_t);
  float sum_s = 0.f, sum_t = 0.f, acc = 0.f;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float zs = scaled(to_float(s[v]), inv_t), zt = scaled(to_float(t[v]), inv_t);
    const float et = expf(zt - max_t);
    sum_s += expf(zs - max_s);
    sum_t += et;
    // p_T = 0 contributes nothing
    if (zt != kMinusInfinity) acc += et * (mode == 0 ? (zt - max_t) - (zs - max_s) : zs - max_s);
  }
  sum_s = block_reduce(sum_s, Sum(), scratch, 0.f);
  sum_t = block_reduce(sum_t, Sum(), scratch, 0.f);
  acc = block_reduce(acc, Sum(), scratch, 0.f);
  if (threadIdx.x == 0) {
    const float log_sum_s = logf(sum_s), log_sum_t = logf(sum_t);
    const float expectation = acc / sum_t;  // E_{p_T}[(z_T/T - max_T) - (z_S/T - max_S)] or E_{p_T}[z_S/T - max_S]
    const float loss = mode == 0 ? (expectation - log_sum_t + log_sum_s) / (inv_t * inv_t) : log_sum_s - expectation;
    row_loss[row] = weight * loss;
    stats_s[2 * row] = max_s;
    stats_s[2 * row + 1] = log_sum_s;
    stats_t[2 * row] = max_t;
    stats_t[2 * row + 1] = log_sum_t;
  }
}

template <typename T>
__global__ void backward_kernel(const float* __restrict__ grad_loss, const T* __restrict__ student,
                                const T* __restrict__ teacher, const float* __restrict__ inv_temperature,
                                const float* __restrict__ row_weight, const float* __restrict__ stats_s,
                                const float* __restrict__ stats_t, T* __restrict__ grad, int64_t vocab, int mode) {
  const int64_t row = blockIdx.x;
  const float g = grad_loss[0] * row_weight[row];
  T* out = grad + row * vocab;
  if (g == 0.f) {
    for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) out[v] = from_float<T>(0.f);
    return;
  }
  const float inv_t = inv_temperature[row];
  const float coef = mode == 0 ? g / inv_t : g * inv_t;  // d(T^2 KL)/dz = T (p_S - p_T); d(CE)/dz = (p_S - p_T)/T
  const float ms = stats_s[2 * row], ls = stats_s[2 * row + 1], mt = stats_t[2 * row], lt = stats_t[2 * row + 1];
  const T* s = student + row * vocab;
  const T* t = teacher + row * vocab;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float ps = expf((scaled(to_float(s[v]), inv_t) - ms) - ls);
    const float pt = expf((scaled(to_float(t[v]), inv_t) - mt) - lt);
    out[v] = from_float<T>(coef * (ps - pt));
  }
}

}  // namespace

cudaError_t softmax_kl_forward(DType dtype, const void* student, const void* teacher, const float* inv_temperature,
                               const float* row_weight, float* row_loss, float* stats_student, float* stats_teacher,
                               int64_t rows, int64_t vocab, int mode, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  KD_DISPATCH_DTYPE(dtype, forward_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(student), static_cast<const scalar_t*>(teacher), inv_temperature, row_weight,
      row_loss, stats_student, stats_teacher, vocab, mode));
  return cudaGetLastError();
}

cudaError_t softmax_kl_backward(DType dtype, const float* grad_loss, const void* student, const void* teacher,
                                const float* inv_temperature, const float* row_weight, const float* stats_student,
                                const float* stats_teacher, void* grad_student, int64_t rows, int64_t vocab,
                                int mode, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  KD_DISPATCH_DTYPE(dtype, backward_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
      grad_loss, static_cast<const scalar_t*>(student), static_cast<const scalar_t*>(teacher), inv_temperature,
      row_weight, stats_student, stats_teacher, static_cast<scalar_t*>(grad_student), vocab, mode));
  return cudaGetLastError();
}

}  // namespace kd_cuda
