// kd's CUDA kernels: torch-free entry points (raw pointers, sizes, a stream).
//
// Inputs may be fp32, fp16 or bf16; every statistic, loss and accumulation is fp32. Layouts
// match the CPU kernels and the torch.library schemas in kd_kernels/ops.py:
//   softmax_kl:    student/teacher [rows, vocab]; inv_temperature, row_weight [rows];
//                  row_loss [rows] (already weighted); stats_* [rows, 2] = (max, log sum exp(z/T - max)).
//   relation_loss: xs/ys [B, H, L, d_s], xt/yt [B, H, L, d_t]; key_mask, row_weight [B, L];
//                  row_value [B, H, L] (already weighted); stats_* [B, H, L, 2].
// mode / kind: 0 = kl, 1 = ce, 2 = mse (relation_loss only).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace kd_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

cudaError_t softmax_kl_forward(DType dtype, const void* student, const void* teacher, const float* inv_temperature,
                               const float* row_weight, float* row_loss, float* stats_student, float* stats_teacher,
                               int64_t rows, int64_t vocab, int mode, cudaStream_t stream);

cudaError_t softmax_kl_backward(DType dtype, const float* grad_loss, const void* student, const void* teacher,
                                const float* inv_temperature, const float* row_weight, const float* stats_student,
                                const float* stats_teacher, void* grad_student, int64_t rows, int64_t vocab,
                                int mode, cudaStream_t stream);

struct RelationShape {
  int64_t batch, heads, length, d_s, d_t;
  float scale_s, scale_t;
  int kind;
};

// Dynamic shared memory per block the relation_loss kernels need (the largest of forward and
// backward), and the blocks of their one-dimensional grid: callers check these against the
// device (cudaDevAttrMaxSharedMemoryPerBlockOptin, and at most 2^31 - 1 blocks) before launching.
size_t relation_loss_shared_bytes(int64_t d_s, int64_t d_t);
int64_t relation_loss_blocks(int64_t batch_heads, int64_t length);

cudaError_t relation_loss_forward(DType dtype, const void* xs, const void* ys, const void* xt, const void* yt,
                                  const float* key_mask, const float* row_weight, float* row_value,
                                  float* stats_s, float* stats_t, RelationShape shape, cudaStream_t stream);

cudaError_t relation_loss_backward(DType dtype, const float* grad_loss, const void* xs, const void* ys,
                                   const void* xt, const void* yt, const float* key_mask, const float* row_weight,
                                   const float* stats_s, const float* stats_t, void* grad_xs, void* grad_ys,
                                   RelationShape shape, cudaStream_t stream);

}  // namespace kd_cuda
