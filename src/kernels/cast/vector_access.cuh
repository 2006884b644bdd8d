// Device helpers shared by the elementwise and row kernels (cast, rmsnorm, swiglu, quant, adamw,
// embedding, xent, permute, rope, the GPU model's glue kernels): loads and stores of consecutive
// float / __nv_bfloat16 values, widened to or narrowed from fp32.
//
// A "chunk" is 8 consecutive elements. The vector forms need the chunk's address 16-byte aligned
// (fp32: two 16-byte accesses, bf16: one) and all 8 elements present; the partial forms touch only
// the first `valid` elements (0..8) one by one and zero-fill the rest on load, so a kernel can run
// the same arithmetic on full and partial chunks. Narrowing to bf16 rounds to nearest even.
// Only for .cu files (nvcc).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace frugal::cuda::detail {

constexpr int kChunk = 8;  // elements per chunk

inline bool aligned_to(const void* pointer, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}
__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Blocks of a grid-stride loop over `work_items` with `threads` threads per block: one item per
// thread, but at most kMaxGridBlocks (the loop covers the rest).
constexpr int64_t kMaxGridBlocks = int64_t{1} << 20;
inline unsigned grid_stride_blocks(int64_t work_items, int threads) {
  const int64_t blocks = ceil_div(work_items, threads);
  return static_cast<unsigned>(blocks < kMaxGridBlocks ? blocks : kMaxGridBlocks);
}

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

template <class T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ float from_float<float>(float value) {
  return value;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float value) {
  return __float2bfloat16_rn(value);
}

// N consecutive T moved as one access of sizeof(T) * N bytes (the address must be aligned to that).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// N values at p (aligned to sizeof(T) * N) in one access, widened to fp32.
template <class T, int N>
__device__ __forceinline__ void load_pack(float (&v)[N], const T* p) {
  const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = to_float(pack.v[i]);
}

// N values narrowed to T and stored at p (aligned to sizeof(T) * N) in one access.
template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const float (&v)[N]) {
  Pack<T, N> pack;
#pragma unroll
  for (int i = 0; i < N; ++i) pack.v[i] = from_float<T>(v[i]);
  *reinterpret_cast<Pack<T, N>*>(p) = pack;
}

// 8 values at p (16-byte aligned) widened to fp32.
__device__ __forceinline__ void load8(float (&v)[kChunk], const float* p) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load8(float (&v)[kChunk], const __nv_bfloat16* p) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // bf16 -> fp32 is the 16 bits moved to the top of the word: exact.
    v[2 * i] = __uint_as_float(words[i] << 16);
    v[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}

// The first `valid` values at p, zeros after them.
template <class T>
__device__ __forceinline__ void load_partial(float (&v)[kChunk], const T* p, int64_t valid) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) v[i] = i < valid ? to_float(p[i]) : 0.0f;
}

// Full chunk when kVector and valid >= 8, else element by element.
template <bool kVector, class T>
__device__ __forceinline__ void load_chunk(float (&v)[kChunk], const T* p, int64_t valid) {
  if (kVector && valid >= kChunk)
    load8(v, p);
  else
    load_partial(v, p, valid);
}

__device__ __forceinline__ void store8(float* p, const float (&v)[kChunk]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float (&v)[kChunk]) {
  uint32_t words[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t low = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i]));
    const uint32_t high = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i + 1]));
    words[i] = low | (high << 16);
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
}

template <class T>
__device__ __forceinline__ void store_partial(T* p, const float (&v)[kChunk], int64_t valid) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i)
    if (i < valid) p[i] = from_float<T>(v[i]);
}

template <bool kVector, class T>
__device__ __forceinline__ void store_chunk(T* p, const float (&v)[kChunk], int64_t valid) {
  if (kVector && valid >= kChunk)
    store8(p, v);
  else
    store_partial(p, v, valid);
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024), returned to every
// thread. Fixed order: a shuffle tree in each warp, then the warp sums in warp order. Uses its own
// shared memory; two calls in a row are safe (the trailing barrier protects the slots).
__device__ __forceinline__ float block_sum(float value) {
  __shared__ float warp_sums[32];
  __shared__ float total;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) warp_sums[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) sum += warp_sums[i];
    total = sum;
  }
  __syncthreads();
  const float result = total;
  __syncthreads();
  return result;
}

}  // namespace frugal::cuda::detail
