// CUDA rotary position embedding (interface in rope_cuda.h, rules in rope.h): interleaved pairs
// (2i, 2i+1) of elements [rope_offset, rope_offset + rope_dim) of each head, rotated in place.
//   x [tokens, heads, head_stride] T (float or bf16), positions [tokens] int32,
//   cos, sin [table positions, rope_dim/2] fp32 (attention factor folded in)
//   fwd:  x0' = x0 c - x1 s,   x1' = x0 s + x1 c
//   bwd:  the transpose (s -> -s), applied to a gradient of the same layout
// Pair arithmetic in rope_math.cuh (products and sums rounded separately, no fused multiply-add:
// the CPU's operations on the same fp32 table values, so fp32 results match it).
// One thread per run of 16 bytes of a head's rotated range (8 bf16 / 4 fp32 values: 4 / 2 pairs)
// when the range, the head stride and x allow it, else one thread per pair with element accesses.
// Index arithmetic in 32 bits when the tensor has fewer than 2^31 elements (64-bit division was
// most of the time of the one-pair-per-thread kernel on MLA's queries).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/rope/rope_cuda.h"
#include "kernels/rope/rope_math.cuh"

namespace frugal::cuda {
namespace {

constexpr int kThreads = 256;

// kN consecutive elements (kN / 2 pairs) per thread; Index is uint32_t or int64_t.
template <class T, bool kVector, int kN, class Index>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(T* __restrict__ x, const float* __restrict__ cos_table,
                const float* __restrict__ sin_table, const int32_t* __restrict__ positions,
                Index runs_per_head, Index heads, Index head_stride, Index rope_offset,
                int64_t pairs, Index total, float sign) {
  const Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= total) return;
  const Index run = i % runs_per_head;
  const Index token_head = i / runs_per_head;  // token * heads + head
  const Index token = token_head / heads;
  const int64_t table_row =
      static_cast<int64_t>(positions[token]) * pairs + static_cast<int64_t>(run) * (kN / 2);
  T* part = x + token_head * head_stride + rope_offset + run * kN;
  float v[kN];
  detail::load_run<kVector, kN>(v, part);
#pragma unroll
  for (int p = 0; p < kN / 2; ++p)
    detail::rope_rotate_pair(v[2 * p], v[2 * p + 1], cos_table[table_row + p],
                             sin_table[table_row + p], sign);
  detail::store_run<kVector, kN>(part, v);
}

template <class T, bool kVector, int kN, class Index>
void launch(T* x, const float* cos, const float* sin, const int32_t* positions, int64_t tokens,
            int64_t heads, int64_t head_stride, int64_t rope_offset, int64_t rope_dim, float sign,
            cudaStream_t stream) {
  const int64_t runs_per_head = rope_dim / kN;
  const int64_t total = tokens * heads * runs_per_head;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  FRUGAL_CUDA_REQUIRE(blocks < INT_MAX, "rope: too many elements for one grid");
  rope_kernel<T, kVector, kN, Index><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x, cos, sin, positions, static_cast<Index>(runs_per_head), static_cast<Index>(heads),
      static_cast<Index>(head_stride), static_cast<Index>(rope_offset), rope_dim / 2,
      static_cast<Index>(total), sign);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T, bool kVector, int kN>
void launch_indexed(T* x, const float* cos, const float* sin, const int32_t* positions,
                    int64_t tokens, int64_t heads, int64_t head_stride, int64_t rope_offset,
                    int64_t rope_dim, float sign, cudaStream_t stream) {
  // 32-bit indices when every element offset (and the thread index) stays below 2^31.
  if (tokens * heads * head_stride < (int64_t{1} << 31))
    launch<T, kVector, kN, uint32_t>(x, cos, sin, positions, tokens, heads, head_stride,
                                     rope_offset, rope_dim, sign, stream);
  else
    launch<T, kVector, kN, int64_t>(x, cos, sin, positions, tokens, heads, head_stride, rope_offset,
                                    rope_dim, sign, stream);
}

template <class T>
void rope_launch(T* x, const float* cos, const float* sin, int64_t rope_dim,
                 const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_stride,
                 int64_t rope_offset, float sign, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rope_dim > 0 && rope_dim % 2 == 0,
                      "rope: rope_dim must be positive and even");
  FRUGAL_CUDA_REQUIRE(tokens >= 0 && heads >= 0, "rope: negative token or head count");
  FRUGAL_CUDA_REQUIRE(rope_offset >= 0 && rope_offset + rope_dim <= head_stride,
                      "rope: the rotated range does not fit in a head");
  if (tokens * heads == 0) return;
  FRUGAL_CUDA_REQUIRE(x != nullptr && cos != nullptr && sin != nullptr && positions != nullptr,
                      "rope: null tensor");
  constexpr int kVec = detail::kVectorElems<T>;
  const bool vector = rope_dim % kVec == 0 && rope_offset % kVec == 0 &&
                      (heads * tokens == 1 || head_stride % kVec == 0) && detail::aligned_to(x, 16);
  if (vector)
    launch_indexed<T, true, kVec>(x, cos, sin, positions, tokens, heads, head_stride, rope_offset,
                                  rope_dim, sign, stream);
  else
    launch_indexed<T, false, 2>(x, cos, sin, positions, tokens, heads, head_stride, rope_offset,
                                rope_dim, sign, stream);
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

#define FRUGAL_INSTANTIATE_ROPE(T)                                                            \
  template void rope_fwd<T>(T*, const float*, const float*, int64_t, const int32_t*, int64_t, \
                            int64_t, int64_t, int64_t, cudaStream_t);                         \
  template void rope_bwd<T>(T*, const float*, const float*, int64_t, const int32_t*, int64_t, \
                            int64_t, int64_t, int64_t, cudaStream_t);
FRUGAL_INSTANTIATE_ROPE(float)
FRUGAL_INSTANTIATE_ROPE(__nv_bfloat16)
#undef FRUGAL_INSTANTIATE_ROPE

}  // namespace frugal::cuda
