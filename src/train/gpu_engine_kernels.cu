// Device helpers of the GPU engine's expert-parallel optimizer step (gpu_engine.cc):
//   scale_in_place   x[i] *= scale, i in [0, n)   (the global gradient clip, applied before the
//                    per-rank AdamW; fp32, one multiply per element: deterministic)
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "train/gpu_engine_kernels.h"

namespace frugal::cuda {
namespace {

__global__ void scale_in_place_kernel(float* __restrict__ x, int64_t n, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    x[i] *= scale;
}

}  // namespace

void scale_in_place(float* x, int64_t n, float scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "scale_in_place: negative element count");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(x != nullptr, "scale_in_place: null tensor");
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  scale_in_place_kernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), kThreads, 0,
                          stream>>>(x, n, scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
