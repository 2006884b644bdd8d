// Device arithmetic of one RoPE pair, shared by every kernel that rotates (rope_cuda.cu and the MLA
// glue kernels in kernels/attention/mla_glue_cuda.cu), so they all produce the same bits:
//   x0' = x0 c - x1 s,   x1' = x0 s + x1 c      (s = +sin forward, -sin backward)
// Products and sums rounded separately (no fused multiply-add), as on the CPU. Also the loads and
// stores of a run of N consecutive elements that these kernels share: one 16-byte access when
// kVector (address aligned to sizeof(T) * N), element by element otherwise.
// Only for .cu files (nvcc).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cast/vector_access.cuh"

namespace frugal::cuda::detail {

// Elements of T in one 16-byte access.
template <class T>
constexpr int kVectorElems = static_cast<int>(16 / sizeof(T));

// sign is +1 (rope_fwd) or -1 (rope_bwd); cos/sin are the table values of the pair.
__device__ __forceinline__ void rope_rotate_pair(float& x0, float& x1, float cos_value,
                                                 float sin_value, float sign) {
  const float s = sign * sin_value;
  const float r0 = __fsub_rn(__fmul_rn(x0, cos_value), __fmul_rn(x1, s));
  const float r1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, cos_value));
  x0 = r0;
  x1 = r1;
}

template <bool kVector, int N, class T>
__device__ __forceinline__ void load_run(float (&v)[N], const T* p) {
  if constexpr (kVector) {
    load_pack<T, N>(v, p);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_float(p[i]);
  }
}

template <bool kVector, int N, class T>
__device__ __forceinline__ void store_run(T* p, const float (&v)[N]) {
  if constexpr (kVector) {
    store_pack<T, N>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = from_float<T>(v[i]);
  }
}

// Raw copy of N consecutive T (no conversion: bit for bit, NaN payloads included).
template <bool kVector, int N, class T>
__device__ __forceinline__ void copy_run(T* __restrict__ out, const T* __restrict__ in) {
  if constexpr (kVector) {
    static_assert(sizeof(T) * N == 16, "copy_run: a vector run is one 16-byte access");
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(in);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = in[i];
  }
}

}  // namespace frugal::cuda::detail
