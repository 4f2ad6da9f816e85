// relation_loss on CUDA: per (batch, head) relation rows R = scale * X Y^T compared between
// student and teacher without an [L, L] buffer. Keys are staged through shared memory tile by
// tile; each thread owns one query row and carries an online log-sum-exp across the tiles
// (FlashAttention's scheme, accumulating E_{p_T}[(R_T - max_T) - (R_S - max_S)] in place of the
// values, centred so that relations sharing a large offset do not cancel catastrophically).
// Backward: one kernel gives dX (a thread per query row), one gives dY (a thread per key), each
// recomputing relations from the saved statistics and writing its gradient rows once. Padded
// keys and queries are skipped by a branch (never multiplied by a 0/1 mask), so whatever they
// hold reaches neither the loss nor a gradient. The grid is one-dimensional, (batch * heads)
// times the row blocks of one head, so that batch * heads is not bounded by gridDim.y.
#include <algorithm>

#include "common.cuh"

namespace kd_cuda {
namespace {

constexpr int kRows = 64;  // threads per block: query rows (forward, dX) or keys (dY)
constexpr int kTile = 32;  // keys (or queries) staged in shared memory per step
constexpr int64_t kMaxBlocks = 2147483647;  // gridDim.x

struct Pointers {
  const float* key_mask;
  const float* row_weight;
  const float* stats_s;
  const float* stats_t;
};

template <typename T>
__device__ void stage(const T* __restrict__ rows, int64_t first, int64_t length, int d, float* __restrict__ out) {
  for (int idx = threadIdx.x; idx < kTile * d; idx += blockDim.x) {
    const int64_t row = first + idx / d;
    out[idx] = row < length ? to_float(rows[row * d + idx % d]) : 0.f;
  }
}

__device__ __forceinline__ float dot(const float* a, const float* b, int d) {
  float acc = 0.f;
  for (int k = 0; k < d; ++k) acc = fmaf(a[k], b[k], acc);
  return acc;
}

// Online statistics of one relation row. ``acc`` is sum exp(R_T - max_t) * term with the term
// centred on the current maxima: (R_T - max_t) - (R_S - max_s) for kl, R_S - max_s for ce.
struct RowState {
  float max_s = kMinusInfinity, sum_s = 0.f, max_t = kMinusInfinity, sum_t = 0.f, acc = 0.f;

  __device__ void add(float rs, float rt, int kind) {
    if (rs > max_s || rt > max_t) {
      const float new_s = fmaxf(max_s, rs), new_t = fmaxf(max_t, rt);
      if (max_t != kMinusInfinity) {  // re-centre the earlier terms on the new maxima, then rescale
        const float shift_s = max_s - new_s, shift_t = max_t - new_t, carry_t = expf(shift_t);
        acc = (acc + (kind == 0 ? shift_t - shift_s : shift_s) * sum_t) * carry_t;
        sum_t *= carry_t;
        sum_s *= expf(shift_s);
      }
      max_s = new_s;
      max_t = new_t;
    }
    const float et = expf(rt - max_t);
    sum_s += expf(rs - max_s);
    sum_t += et;
    acc += et * (kind == 0 ? (rt - max_t) - (rs - max_s) : rs - max_s);
  }
};

// The (batch * head, query or key block) a block of the one-dimensional grid works on.
__device__ __forceinline__ void block_position(int64_t length, int64_t* bh, int64_t* first) {
  const int64_t blocks = (length + kRows - 1) / kRows;
  *bh = blockIdx.x / blocks;
  *first = (blockIdx.x % blocks) * kRows;
}

// The row's query, in registers is not possible for a runtime width, so it is staged in shared memory.
template <typename T>
__global__ void forward_kernel(const T* __restrict__ xs, const T* __restrict__ ys, const T* __restrict__ xt,
                               const T* __restrict__ yt, Pointers p, float* __restrict__ row_value,
                               float* __restrict__ stats_s, float* __restrict__ stats_t, RelationShape shape) {
  extern __shared__ float smem[];
  const int ds = static_cast<int>(shape.d_s), dt = static_cast<int>(shape.d_t);
  const int64_t L = shape.length;
  int64_t bh, first;
  block_position(L, &bh, &first);
  const int64_t b = bh / shape.heads;
  float* keys_s = smem;
  float* keys_t = keys_s + kTile * ds;
  float* key_real = keys_t + kTile * dt;
  float* query_s = key_real + kTile;
  float* query_t = query_s + kRows * ds;
  const int64_t i = first + threadIdx.x;
  const float weight = i < L ? p.row_weight[b * L + i] : 0.f;
  const bool active = weight != 0.f;
  float* q_s = query_s + threadIdx.x * ds;
  float* q_t = query_t + threadIdx.x * dt;
  if (active) {
    for (int k = 0; k < ds; ++k) q_s[k] = to_float(xs[(bh * L + i) * ds + k]);
    for (int k = 0; k < dt; ++k) q_t[k] = to_float(xt[(bh * L + i) * dt + k]);
  }
  RowState row;
  float squares = 0.f;
  for (int64_t j0 = 0; j0 < L; j0 += kTile) {
    __syncthreads();
    stage(ys + bh * L * ds, j0, L, ds, keys_s);
    stage(yt + bh * L * dt, j0, L, dt, keys_t);
    for (int jj = threadIdx.x; jj < kTile; jj += blockDim.x) key_real[jj] = j0 + jj < L ? p.key_mask[b * L + j0 + jj] : 0.f;
    __syncthreads();
    if (!active) continue;
    for (int jj = 0; jj < kTile; ++jj) {
      if (key_real[jj] == 0.f) continue;
      const float rs = shape.scale_s * dot(q_s, keys_s + jj * ds, ds);
      const float rt = shape.scale_t * dot(q_t, keys_t + jj * dt, dt);
      if (shape.kind == 2) {
        squares += (rs - rt) * (rs - rt);
      } else {
        row.add(rs, rt, shape.kind);
      }
    }
  }
  if (i >= L) return;
  const int64_t at = bh * L + i;
  if (!active || shape.kind == 2) {
    row_value[at] = active ? weight * squares : 0.f;
    stats_s[2 * at] = stats_s[2 * at + 1] = stats_t[2 * at] = stats_t[2 * at + 1] = 0.f;
    return;
  }
  const float log_sum_s = logf(row.sum_s), log_sum_t = logf(row.sum_t);
  const float lse_s = row.max_s + log_sum_s, lse_t = row.max_t + log_sum_t;
  const float expectation = row.acc / row.sum_t;
  row_value[at] = weight * (shape.kind == 0 ? expectation - lse_t + lse_s : lse_s - expectation);
  stats_s[2 * at] = row.max_s;
  stats_s[2 * at + 1] = log_sum_s;
  stats_t[2 * at] = row.max_t;
  stats_t[2 * at + 1] = log_sum_t;
}

// dLoss/dR_S for one (query, key) pair.
__device__ __forceinline__ float relation_grad(float g, float rs, float rt, const float* stat_s, const float* stat_t,
                                               int kind) {
  if (kind == 2) return 2.f * g * (rs - rt);
  return g * (expf((rs - stat_s[0]) - stat_s[1]) - expf((rt - stat_t[0]) - stat_t[1]));
}

template <typename T>
__global__ void backward_queries_kernel(const float* __restrict__ grad_loss, const T* __restrict__ xs,
                                        const T* __restrict__ ys, const T* __restrict__ xt,
                                        const T* __restrict__ yt, Pointers p, T* __restrict__ grad_xs,
                                        RelationShape shape) {
  extern __shared__ float smem[];
  const int ds = static_cast<int>(shape.d_s), dt = static_cast<int>(shape.d_t);
  const int64_t L = shape.length;
  int64_t bh, first;
  block_position(L, &bh, &first);
  const int64_t b = bh / shape.heads;
  float* keys_s = smem;
  float* keys_t = keys_s + kTile * ds;
  float* key_real = keys_t + kTile * dt;
  float* query_s = key_real + kTile;
  float* query_t = query_s + kRows * ds;
  float* d_query = query_t + kRows * dt;
  const int64_t i = first + threadIdx.x;
  const float g = i < L ? grad_loss[0] * p.row_weight[b * L + i] : 0.f;
  const bool active = g != 0.f;
  float* q_s = query_s + threadIdx.x * ds;
  float* q_t = query_t + threadIdx.x * dt;
  float* dq = d_query + threadIdx.x * ds;
  for (int k = 0; k < ds; ++k) dq[k] = 0.f;
  if (active) {
    for (int k = 0; k < ds; ++k) q_s[k] = to_float(xs[(bh * L + i) * ds + k]);
    for (int k = 0; k < dt; ++k) q_t[k] = to_float(xt[(bh * L + i) * dt + k]);
  }
  const int64_t at = bh * L + (i < L ? i : 0);
  for (int64_t j0 = 0; j0 < L; j0 += kTile) {
    __syncthreads();
    stage(ys + bh * L * ds, j0, L, ds, keys_s);
    stage(yt + bh * L * dt, j0, L, dt, keys_t);
    for (int jj = threadIdx.x; jj < kTile; jj += blockDim.x) key_real[jj] = j0 + jj < L ? p.key_mask[b * L + j0 + jj] : 0.f;
    __syncthreads();
    if (!active) continue;
    for (int jj = 0; jj < kTile; ++jj) {
      if (key_real[jj] == 0.f) continue;
      const float rs = shape.scale_s * dot(q_s, keys_s + jj * ds, ds);
      const float rt = shape.scale_t * dot(q_t, keys_t + jj * dt, dt);
      const float d = relation_grad(g, rs, rt, p.stats_s + 2 * at, p.stats_t + 2 * at, shape.kind);
      for (int k = 0; k < ds; ++k) dq[k] = fmaf(d, keys_s[jj * ds + k], dq[k]);
    }
  }
  if (i >= L) return;
  for (int k = 0; k < ds; ++k) grad_xs[(bh * L + i) * ds + k] = from_float<T>(shape.scale_s * dq[k]);
}

template <typename T>
__global__ void backward_keys_kernel(const float* __restrict__ grad_loss, const T* __restrict__ xs,
                                     const T* __restrict__ ys, const T* __restrict__ xt, const T* __restrict__ yt,
                                     Pointers p, T* __restrict__ grad_ys, RelationShape shape) {
  extern __shared__ float smem[];
  const int ds = static_cast<int>(shape.d_s), dt = static_cast<int>(shape.d_t);
  const int64_t L = shape.length;
  int64_t bh, first;
  block_position(L, &bh, &first);
  const int64_t b = bh / shape.heads;
  float* queries_s = smem;
  float* queries_t = queries_s + kTile * ds;
  float* query_g = queries_t + kTile * dt;
  float* query_stats = query_g + kTile;  // [kTile, 4]: max_s, log_sum_s, max_t, log_sum_t
  float* key_s = query_stats + 4 * kTile;
  float* key_t = key_s + kRows * ds;
  float* d_key = key_t + kRows * dt;
  const int64_t j = first + threadIdx.x;
  const bool real_key = j < L && p.key_mask[b * L + j] != 0.f;
  float* k_s = key_s + threadIdx.x * ds;
  float* k_t = key_t + threadIdx.x * dt;
  float* dk = d_key + threadIdx.x * ds;
  for (int k = 0; k < ds; ++k) dk[k] = 0.f;
  if (real_key) {
    for (int k = 0; k < ds; ++k) k_s[k] = to_float(ys[(bh * L + j) * ds + k]);
    for (int k = 0; k < dt; ++k) k_t[k] = to_float(yt[(bh * L + j) * dt + k]);
  }
  for (int64_t i0 = 0; i0 < L; i0 += kTile) {
    __syncthreads();
    stage(xs + bh * L * ds, i0, L, ds, queries_s);
    stage(xt + bh * L * dt, i0, L, dt, queries_t);
    for (int ii = threadIdx.x; ii < kTile; ii += blockDim.x) {
      const int64_t i = i0 + ii;
      query_g[ii] = i < L ? grad_loss[0] * p.row_weight[b * L + i] : 0.f;
      const int64_t at = bh * L + (i < L ? i : 0);
      query_stats[4 * ii] = p.stats_s[2 * at];
      query_stats[4 * ii + 1] = p.stats_s[2 * at + 1];
      query_stats[4 * ii + 2] = p.stats_t[2 * at];
      query_stats[4 * ii + 3] = p.stats_t[2 * at + 1];
    }
    __syncthreads();
    if (!real_key) continue;
    for (int ii = 0; ii < kTile; ++ii) {
      const float g = query_g[ii];
      if (g == 0.f) continue;
      const float rs = shape.scale_s * dot(queries_s + ii * ds, k_s, ds);
      const float rt = shape.scale_t * dot(queries_t + ii * dt, k_t, dt);
      const float d = relation_grad(g, rs, rt, query_stats + 4 * ii, query_stats + 4 * ii + 2, shape.kind);
      for (int k = 0; k < ds; ++k) dk[k] = fmaf(d, queries_s[ii * ds + k], dk[k]);
    }
  }
  if (j >= L) return;
  for (int k = 0; k < ds; ++k) grad_ys[(bh * L + j) * ds + k] = from_float<T>(shape.scale_s * dk[k]);
}

// Dynamic shared memory of each kernel (kd_kernels.dispatch.cuda_relation_shared_bytes mirrors it).
size_t forward_bytes(int64_t d_s, int64_t d_t) { return sizeof(float) * ((kTile + kRows) * (d_s + d_t) + kTile); }
size_t backward_queries_bytes(int64_t d_s, int64_t d_t) { return forward_bytes(d_s, d_t) + sizeof(float) * kRows * d_s; }
size_t backward_keys_bytes(int64_t d_s, int64_t d_t) {
  return backward_queries_bytes(d_s, d_t) + sizeof(float) * 4 * kTile;
}

template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, size_t bytes) {
  return bytes > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  static_cast<int>(bytes))
                           : cudaSuccess;
}

}  // namespace

size_t relation_loss_shared_bytes(int64_t d_s, int64_t d_t) {
  return std::max(forward_bytes(d_s, d_t), std::max(backward_queries_bytes(d_s, d_t), backward_keys_bytes(d_s, d_t)));
}

int64_t relation_loss_blocks(int64_t batch_heads, int64_t length) { return (length + kRows - 1) / kRows * batch_heads; }

cudaError_t relation_loss_forward(DType dtype, const void* xs, const void* ys, const void* xt, const void* yt,
                                  const float* key_mask, const float* row_weight, float* row_value,
                                  float* stats_s, float* stats_t, RelationShape shape, cudaStream_t stream) {
  if (shape.batch * shape.heads * shape.length == 0) return cudaSuccess;
  const int64_t blocks = relation_loss_blocks(shape.batch * shape.heads, shape.length);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks));
  const size_t bytes = forward_bytes(shape.d_s, shape.d_t);
  const Pointers p{key_mask, row_weight, nullptr, nullptr};
  KD_DISPATCH_DTYPE(dtype, {
    const cudaError_t status = allow_shared_memory(forward_kernel<scalar_t>, bytes);
    if (status != cudaSuccess) return status;
    forward_kernel<scalar_t><<<grid, kRows, bytes, stream>>>(
        static_cast<const scalar_t*>(xs), static_cast<const scalar_t*>(ys), static_cast<const scalar_t*>(xt),
        static_cast<const scalar_t*>(yt), p, row_value, stats_s, stats_t, shape);
  });
  return cudaGetLastError();
}

cudaError_t relation_loss_backward(DType dtype, const float* grad_loss, const void* xs, const void* ys,
                                   const void* xt, const void* yt, const float* key_mask, const float* row_weight,
                                   const float* stats_s, const float* stats_t, void* grad_xs, void* grad_ys,
                                   RelationShape shape, cudaStream_t stream) {
  if (shape.batch * shape.heads * shape.length == 0) return cudaSuccess;
  const int64_t blocks = relation_loss_blocks(shape.batch * shape.heads, shape.length);
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks));
  const size_t query_bytes = backward_queries_bytes(shape.d_s, shape.d_t);
  const size_t key_bytes = backward_keys_bytes(shape.d_s, shape.d_t);
  const Pointers p{key_mask, row_weight, stats_s, stats_t};
  KD_DISPATCH_DTYPE(dtype, {
    cudaError_t status = allow_shared_memory(backward_queries_kernel<scalar_t>, query_bytes);
    if (status == cudaSuccess) status = allow_shared_memory(backward_keys_kernel<scalar_t>, key_bytes);
    if (status != cudaSuccess) return status;
    backward_queries_kernel<scalar_t><<<grid, kRows, query_bytes, stream>>>(
        grad_loss, static_cast<const scalar_t*>(xs), static_cast<const scalar_t*>(ys),
        static_cast<const scalar_t*>(xt), static_cast<const scalar_t*>(yt), p, static_cast<scalar_t*>(grad_xs),
        shape);
    backward_keys_kernel<scalar_t><<<grid, kRows, key_bytes, stream>>>(
        grad_loss, static_cast<const scalar_t*>(xs), static_cast<const scalar_t*>(ys),
        static_cast<const scalar_t*>(xt), static_cast<const scalar_t*>(yt), p, static_cast<scalar_t*>(grad_ys),
        shape);
  });
  return cudaGetLastError();
}

}  // namespace kd_cuda
