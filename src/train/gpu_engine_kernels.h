// Device helpers of the GPU engine (gpu_engine.cc), for builds with CUDA:
//   scale_in_place  x[i] *= scale for i in [0, n)   (fp32, on `stream`)
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

void scale_in_place(float* x, int64_t n, float scale, cudaStream_t stream);

}  // namespace frugal::cuda
