// Device side of the FP8 1x128 activation quantizer, shared by quant_cuda.cu and the fused
// producers (swiglu_fwd_quant, rmsnorm_fwd_quant) so that every path makes the same codes and
// scales as cpu::quantize_act_1x128 (see quant.h for the rule).
//
// A 1x128 tile is 16 chunks of 8 values held by the 16 lanes of a half-warp (lane l of the half
// holds columns 8l..8l+7 of the tile). amax is a max over the half-warp (exact in any order),
// the scale is fp8_scale_from_amax, each code is the hardware E4M3 conversion of an IEEE x / scale.
// Only for .cu files (nvcc).
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant.h"

namespace frugal::cuda::detail {

constexpr int kLanesPerTile = 16;  // a half-warp: 16 lanes x 8 values = one 128-wide tile
static_assert(kLanesPerTile * kChunk == kFp8BlockSize, "a half-warp covers one tile");

// max |v| over the chunk; fmaxf ignores NaN, as the CPU's std::fmax does.
__device__ __forceinline__ float chunk_amax(const float (&v)[kChunk], float amax) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) amax = fmaxf(amax, fabsf(v[i]));
  return amax;
}

// Max over the 16 lanes of this thread's half-warp. Every lane of the warp must call it.
__device__ __forceinline__ float half_warp_max(float value) {
#pragma unroll
  for (int offset = kLanesPerTile / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xFFFFFFFFu, value, offset));
  return value;
}

// The codes of v / scale, byte i of the result = code of v[i]. x / scale is an IEEE division (the
// build never uses --use_fast_math), as on the CPU.
__device__ __forceinline__ uint2 quantize8(const float (&v)[kChunk], float scale) {
  uint32_t words[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float2 low = make_float2(v[4 * half] / scale, v[4 * half + 1] / scale);
    const float2 high = make_float2(v[4 * half + 2] / scale, v[4 * half + 3] / scale);
    const uint32_t codes_low = __nv_cvt_float2_to_fp8x2(low, __NV_SATFINITE, __NV_E4M3);
    const uint32_t codes_high = __nv_cvt_float2_to_fp8x2(high, __NV_SATFINITE, __NV_E4M3);
    words[half] = codes_low | (codes_high << 16);
  }
  return make_uint2(words[0], words[1]);
}

// Stores the first `valid` codes at q: one 8-byte store when kVector and the chunk is full
// (q 8-byte aligned), else byte by byte.
template <bool kVector>
__device__ __forceinline__ void store_codes(uint8_t* q, uint2 codes, int64_t valid) {
  if (kVector && valid >= kChunk) {
    *reinterpret_cast<uint2*>(q) = codes;
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i)
      if (i < valid) q[i] = static_cast<uint8_t>((i < 4 ? codes.x : codes.y) >> (8 * (i % 4)));
  }
}

// The E4M3 value of a code (exact: through fp16).
__device__ __forceinline__ float e4m3_to_float(uint8_t code) {
  const __half_raw half = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(half));
}

// Group of `row` in offsets [groups+1] (monotone): the largest g < groups with offsets[g] <= row;
// false when the row lies in no group (before offsets[0] or at/after offsets[groups]).
__device__ __forceinline__ bool find_group(const int64_t* offsets, int64_t groups, int64_t row,
                                           int64_t& base, int64_t& group_rows) {
  if (groups <= 0 || row < offsets[0] || row >= offsets[groups]) return false;
  int64_t lo = 0, hi = groups;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= row) lo = mid; else hi = mid;
  }
  base = offsets[lo];
  group_rows = offsets[lo + 1] - base;
  return row < offsets[lo + 1];
}

// The 1x128 activation quantizer over a [rows, cols] matrix whose values come from `source`
// (source.load(v, row, col, valid) fills v with the fp32 values of columns col..col+valid-1 of
// `row`, zeros after). Units are (tile, row) pairs in tile-major order, so consecutive half-warps
// take consecutive rows of one tile and write adjacent scales. Grid-stride over pairs of units (one
// warp); both halves of a warp always run the shuffles together.
//   kGrouped false: scales [tiles][rows]
//   kGrouped true:  rows in group g = [offsets[g], offsets[g+1]) have their scales at
//                   scales + offsets[g]*tiles laid out [tiles][rows_g]; rows in no group are skipped
// kVector: q rows may be written 8 bytes at a time (cols % 8 == 0 and q 8-byte aligned).
template <class Source, bool kVector, bool kGrouped>
__global__ void __launch_bounds__(256)
    act_quant_kernel(uint8_t* __restrict__ q, float* __restrict__ scales, Source source,
                     int64_t rows, int64_t cols, const int64_t* __restrict__ offsets,
                     int64_t groups, bool power_of_two_scale) {
  const int64_t tiles = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
  const int64_t units = tiles * rows;
  const int lane = threadIdx.x % 32;
  const int half = lane / kLanesPerTile;
  const int64_t warps_total = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  for (int64_t unit0 = 2 * warp; unit0 < units; unit0 += 2 * warps_total) {
    const int64_t unit = unit0 + half;
    bool active = unit < units;
    const int64_t tile = active ? unit / rows : 0;
    const int64_t row = active ? unit % rows : 0;
    int64_t base = 0, group_rows = rows;
    if (kGrouped && active) active = find_group(offsets, groups, row, base, group_rows);
    const int64_t col = tile * kFp8BlockSize + (lane % kLanesPerTile) * kChunk;
    const int64_t valid = active ? cols - col : 0;  // <= 0 past the end of a partial tile

    float v[kChunk];
    if (valid > 0)
      source.load(v, row, col, valid);
    else
#pragma unroll
      for (int i = 0; i < kChunk; ++i) v[i] = 0.0f;
    const float amax = half_warp_max(chunk_amax(v, 0.0f));
    const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
    if (valid > 0) store_codes<kVector>(q + row * cols + col, quantize8(v, scale), valid);
    if (active && lane % kLanesPerTile == 0) {
      if (kGrouped)
        scales[base * tiles + tile * group_rows + (row - base)] = scale;
      else
        scales[unit] = scale;  // [tiles][rows]
    }
  }
}

// Blocks for act_quant_kernel: one warp per two units, capped (grid-stride beyond).
inline unsigned act_quant_blocks(int64_t rows, int64_t cols) {
  const int64_t units = fp8_block_count(cols) * rows;
  const int64_t blocks = ceil_div(units, 2 * 8);  // 8 warps per 256-thread block
  return static_cast<unsigned>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
}

}  // namespace frugal::cuda::detail
