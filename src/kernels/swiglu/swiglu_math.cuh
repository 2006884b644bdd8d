// The device arithmetic of SwiGLU (swiglu.h), shared by every CUDA SwiGLU kernel (swiglu_cuda.cu,
// swiglu_fp8_cuda.cu) so that the fused FP8 paths compute the very same fp32 values as the plain
// kernels:  h = silu(g) * u,  dg = dh * u * sig * (1 + g * (1 - sig)),  du = dh * silu(g).
// The sigmoid is the CPU's overflow-free form with expf (not the fast __expf). Only for .cu files.
#pragma once

#include <cuda_runtime.h>

namespace frugal::cuda::detail {

__device__ __forceinline__ float stable_sigmoid(float g) {
  if (g >= 0.0f) return 1.0f / (1.0f + expf(-g));
  const float e = expf(g);
  return e / (1.0f + e);
}

__device__ __forceinline__ float swiglu_value(float g, float u) {
  return g * stable_sigmoid(g) * u;
}

__device__ __forceinline__ void swiglu_grad(float dh, float g, float u, float& dg, float& du) {
  const float sig = stable_sigmoid(g);
  dg = dh * u * sig * (1.0f + g * (1.0f - sig));
  du = dh * (g * sig);
}

}  // namespace frugal::cuda::detail
