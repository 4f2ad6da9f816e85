// Device helpers shared by kd's CUDA kernels: conversions and block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kd_cuda.cuh"

namespace kd_cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

constexpr float kMinusInfinity = -INFINITY;

// z / T rounded once (never fused into a following subtraction), so that z/T - max is exactly 0
// at the row's maximum and the largest probability is exp(0) rather than exp(rounding error).
__device__ __forceinline__ float scaled(float z, float inv_t) { return __fmul_rn(z, inv_t); }

template <typename Op>
__device__ __forceinline__ float warp_reduce(float value, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// Reduce over the block; every thread gets the result. ``scratch`` holds 32 floats.
template <typename Op>
__device__ float block_reduce(float value, Op op, float* scratch, float identity) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  value = warp_reduce(value, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = threadIdx.x < warps ? scratch[threadIdx.x] : identity;
  if (warp == 0) value = warp_reduce(value, op);
  if (threadIdx.x == 0) scratch[0] = value;
  __syncthreads();
  return scratch[0];
}

struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

#define KD_DISPATCH_DTYPE(dtype, ...)                             \
  switch (dtype) {                                                \
    case DType::kFloat32: {                                       \
      using scalar_t = float;                                     \
      __VA_ARGS__;                                                \
      break;                                                      \
    }                                                             \
    case DType::kFloat16: {                                       \
      using scalar_t = __half;                                    \
      __VA_ARGS__;                                                \
      break;                                                      \
    }                                                             \
    case DType::kBFloat16: {                                      \
      using scalar_t = __nv_bfloat16;                             \
      __VA_ARGS__;                                                \
      break;                                                      \
    }                                                             \
    default:                                                      \
      return cudaErrorInvalidValue;                               \
  }

}  // namespace kd_cuda
