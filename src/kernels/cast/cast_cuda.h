// Elementwise helpers of the GPU training step: precision casts, residual adds, scaling and fills.
// T, U are float or __nv_bfloat16; arithmetic in fp32, results rounded to nearest even.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

// out[n] = (U) in[n]
template <class T, class U>
void cast(U* out, const T* in, int64_t n, cudaStream_t stream);
// y[n] = a * y[n] + b * x[n]   (y += x is a = b = 1)
template <class T>
void axpby(T* y, const T* x, float a, float b, int64_t n, cudaStream_t stream);
// out[rows, cols] = in[rows, cols] strided copy: out row r at out + r*ld_out, in row r at in + r*ld_in
// (splitting and joining MLA's per-head nope/rope/v slices).
template <class T>
void copy_2d(T* out, int64_t ld_out, const T* in, int64_t ld_in, int64_t rows, int64_t cols,
             cudaStream_t stream);

}  // namespace frugal::cuda
