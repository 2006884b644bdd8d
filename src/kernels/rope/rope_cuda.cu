// CUDA rotary position embedding (interface in rope_cuda.h, rules in rope.h): interleaved pairs
// (2i, 2i+1) of elements [rope_offset, rope_offset + rope_dim) of each head, rotated in place.
//   x [tokens, heads, head_stride] T (float or bf16), positions [tokens] int32,
//   cos, sin [table positions, rope_dim/2] fp32 (attention factor folded in)
//   fwd:  x0' = x0 c - x1 s,   x1' = x0 s + x1 c
//   bwd:  the transpose (s -> -s), applied to a gradient of the same layout
// One thread per (token, head, pair). Products and sums are rounded separately (no fused
// multiply-add), the CPU's operations on the same fp32 table values, so fp32 results match it.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/rope/rope_cuda.h"

namespace frugal::cuda {
namespace {

constexpr int kThreads = 256;

using detail::from_float;
using detail::to_float;

template <class T>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(T* __restrict__ x, const float* __restrict__ cos_table,
                const float* __restrict__ sin_table, const int32_t* __restrict__ positions,
                int64_t pairs, int64_t heads, int64_t head_stride, int64_t rope_offset,
                int64_t total, float sign) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const int64_t pair = i % pairs;
  const int64_t token_head = i / pairs;  // token * heads + head
  const int64_t token = token_head / heads;
  const int64_t table_index = static_cast<int64_t>(positions[token]) * pairs + pair;
  const float c = cos_table[table_index];
  const float s = sign * sin_table[table_index];
  T* part = x + token_head * head_stride + rope_offset + 2 * pair;
  const float x0 = to_float(part[0]), x1 = to_float(part[1]);
  part[0] = from_float<T>(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
  part[1] = from_float<T>(__fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)));
}

template <class T>
void rope_launch(T* x, const float* cos, const float* sin, int64_t rope_dim,
                 const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_stride,
                 int64_t rope_offset, float sign, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rope_dim > 0 && rope_dim % 2 == 0, "rope: rope_dim must be positive and even");
  FRUGAL_CUDA_REQUIRE(tokens >= 0 && heads >= 0, "rope: negative token or head count");
  FRUGAL_CUDA_REQUIRE(rope_offset >= 0 && rope_offset + rope_dim <= head_stride,
                      "rope: the rotated range does not fit in a head");
  const int64_t pairs = rope_dim / 2;
  const int64_t total = tokens * heads * pairs;
  if (total == 0) return;
  FRUGAL_CUDA_REQUIRE(x != nullptr && cos != nullptr && sin != nullptr && positions != nullptr,
                      "rope: null tensor");
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  FRUGAL_CUDA_REQUIRE(blocks < INT_MAX, "rope: too many elements for one grid");
  rope_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x, cos, sin, positions, pairs, heads, head_stride, rope_offset, total, sign);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void rope_fwd(T* x, const float* cos, const float* sin, int64_t rope_dim, const int32_t* positions,
              int64_t tokens, int64_t heads, int64_t head_stride, int64_t rope_offset,
              cudaStream_t stream) {
  rope_launch(x, cos, sin, rope_dim, positions, tokens, heads, head_stride, rope_offset, 1.0f,
              stream);
}

template <class T>
void rope_bwd(T* grad, const float* cos, const float* sin, int64_t rope_dim,
              const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_stride,
              int64_t rope_offset, cudaStream_t stream) {
  rope_launch(grad, cos, sin, rope_dim, positions, tokens, heads, head_stride, rope_offset, -1.0f,
              stream);
}

#define FRUGAL_INSTANTIATE_ROPE(T)                                                              \
  template void rope_fwd<T>(T*, const float*, const float*, int64_t, const int32_t*, int64_t,   \
                            int64_t, int64_t, int64_t, cudaStream_t);                           \
  template void rope_bwd<T>(T*, const float*, const float*, int64_t, const int32_t*, int64_t,   \
                            int64_t, int64_t, int64_t, cudaStream_t);
FRUGAL_INSTANTIATE_ROPE(float)
FRUGAL_INSTANTIATE_ROPE(__nv_bfloat16)
#undef FRUGAL_INSTANTIATE_ROPE

}  // namespace frugal::cuda
