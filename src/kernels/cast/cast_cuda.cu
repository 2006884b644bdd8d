// CUDA elementwise helpers (see cast_cuda.h): precision casts, y = a*y + b*x, and strided 2-D
// copies. T, U are float or __nv_bfloat16; arithmetic in fp32, narrowing rounds to nearest even.
//
// cast / axpby: grid-stride loop over chunks of 8 values; one or two 16-byte accesses per array and
// chunk when every pointer is 16-byte aligned, element by element otherwise and in the last partial
// chunk. axpby rounds a*y and b*x separately and then their sum (no fused multiply-add), the same
// arithmetic as a plain C++ `a * y + b * x` on the host.
// copy_2d: grid-stride loop over 16-byte pieces of the rows when both row strides and pointers allow
// it, element by element otherwise.
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/cast/vector_access.cuh"

namespace frugal::cuda {
namespace {

using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;

constexpr int kThreads = 256;
unsigned grid_for(int64_t work_items) { return detail::grid_stride_blocks(work_items, kThreads); }

template <class T, class U, bool kVector>
__global__ void __launch_bounds__(kThreads)
    cast_kernel(U* __restrict__ out, const T* __restrict__ in, int64_t n) {
  const int64_t chunks = ceil_div(n, kChunk);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < chunks;
       i += stride) {
    const int64_t offset = i * kChunk;
    const int64_t valid = detail::min64(kChunk, n - offset);
    float v[kChunk];
    detail::load_chunk<kVector>(v, in + offset, valid);
    detail::store_chunk<kVector>(out + offset, v, valid);
  }
}

template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    axpby_kernel(T* __restrict__ y, const T* __restrict__ x, float a, float b, int64_t n) {
  const int64_t chunks = ceil_div(n, kChunk);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < chunks;
       i += stride) {
    const int64_t offset = i * kChunk;
    const int64_t valid = detail::min64(kChunk, n - offset);
    float yv[kChunk], xv[kChunk];
    detail::load_chunk<kVector>(yv, y + offset, valid);
    detail::load_chunk<kVector>(xv, x + offset, valid);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) yv[j] = __fadd_rn(__fmul_rn(a, yv[j]), __fmul_rn(b, xv[j]));
    detail::store_chunk<kVector>(y + offset, yv, valid);
  }
}

// kVector: 16-byte pieces (cols, both strides and both pointers a multiple of 16 bytes).
template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    copy_2d_kernel(T* __restrict__ out, int64_t ld_out, const T* __restrict__ in, int64_t ld_in,
                   int64_t rows, int64_t cols) {
  constexpr int64_t kPerPiece = kVector ? 16 / sizeof(T) : 1;
  const int64_t pieces_per_row = cols / kPerPiece;
  const int64_t total = rows * pieces_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / pieces_per_row;
    const int64_t col = (i - row * pieces_per_row) * kPerPiece;
    if (kVector)
      *reinterpret_cast<uint4*>(out + row * ld_out + col) =
          *reinterpret_cast<const uint4*>(in + row * ld_in + col);
    else
      out[row * ld_out + col] = in[row * ld_in + col];
  }
}

}  // namespace

template <class T, class U>
void cast(U* out, const T* in, int64_t n, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::cast: negative size");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(out != nullptr && in != nullptr, "cuda::cast: null pointer");
  const unsigned grid = grid_for(ceil_div(n, kChunk));
  if (aligned_to(out, 16) && aligned_to(in, 16))
    cast_kernel<T, U, true><<<grid, kThreads, 0, stream>>>(out, in, n);
  else
    cast_kernel<T, U, false><<<grid, kThreads, 0, stream>>>(out, in, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T>
void axpby(T* y, const T* x, float a, float b, int64_t n, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::axpby: negative size");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(y != nullptr && x != nullptr, "cuda::axpby: null pointer");
  const unsigned grid = grid_for(ceil_div(n, kChunk));
  if (aligned_to(y, 16) && aligned_to(x, 16))
    axpby_kernel<T, true><<<grid, kThreads, 0, stream>>>(y, x, a, b, n);
  else
    axpby_kernel<T, false><<<grid, kThreads, 0, stream>>>(y, x, a, b, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T>
void copy_2d(T* out, int64_t ld_out, const T* in, int64_t ld_in, int64_t rows, int64_t cols,
             cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::copy_2d: negative shape");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(out != nullptr && in != nullptr, "cuda::copy_2d: null pointer");
  FRUGAL_CUDA_REQUIRE(rows == 1 || (ld_out >= cols && ld_in >= cols),
                      "cuda::copy_2d: a row stride is smaller than the row");
  constexpr int64_t kPerPiece = 16 / sizeof(T);
  const bool vector = cols % kPerPiece == 0 && (rows == 1 || (ld_out % kPerPiece == 0 &&
                                                             ld_in % kPerPiece == 0)) &&
                      aligned_to(out, 16) && aligned_to(in, 16);
  if (vector)
    copy_2d_kernel<T, true><<<grid_for(rows * (cols / kPerPiece)), kThreads, 0, stream>>>(
        out, ld_out, in, ld_in, rows, cols);
  else
    copy_2d_kernel<T, false><<<grid_for(rows * cols), kThreads, 0, stream>>>(out, ld_out, in, ld_in,
                                                                             rows, cols);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template void cast<float, float>(float*, const float*, int64_t, cudaStream_t);
template void cast<float, __nv_bfloat16>(__nv_bfloat16*, const float*, int64_t, cudaStream_t);
template void cast<__nv_bfloat16, float>(float*, const __nv_bfloat16*, int64_t, cudaStream_t);
template void cast<__nv_bfloat16, __nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, int64_t,
                                                 cudaStream_t);
template void axpby<float>(float*, const float*, float, float, int64_t, cudaStream_t);
template void axpby<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, float, float, int64_t,
                                   cudaStream_t);
template void copy_2d<float>(float*, int64_t, const float*, int64_t, int64_t, int64_t,
                             cudaStream_t);
template void copy_2d<__nv_bfloat16>(__nv_bfloat16*, int64_t, const __nv_bfloat16*, int64_t,
                                     int64_t, int64_t, cudaStream_t);

}  // namespace frugal::cuda
