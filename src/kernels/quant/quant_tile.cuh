// Device side of the FP8 1x128 activation quantizer, shared by quant_cuda.cu and the fused
// producers (swiglu_fwd_quant, rmsnorm_fwd_quant) so that every path makes the same codes and
// scales as cpu::quantize_act_1x128 (see quant.h for the rule).
//
// A 1x128 tile is 16 chunks of 8 values held by the 16 lanes of a half-warp (lane l of the half
// holds columns 8l..8l+7 of the tile). amax is a max over the half-warp (exact in any order),
// the scale is fp8_scale_from_amax, each code is the hardware E4M3 conversion of x / scale (the code
// of the IEEE quotient: ScaleDivider).
// Only for .cu files (nvcc).
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda_check.h"
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

// x / scale for every value of a tile or block, for its E4M3 code: the code has the same bits as
// that of the IEEE division the CPU does.
// - A power-of-two (or infinite) scale has an exact reciprocal: x * (1/scale) is the correctly
//   rounded x / scale.
// - Other scales: from the correctly rounded reciprocal r, q0 = x r, e = fma(-q0, scale, x) (exact)
//   and q = fma(e, r, q0) is the correctly rounded x / scale (Markstein's division) whenever the
//   residual e does not underflow; where it does, |x| < 2^-100, so with the scale floor
//   (fp8_scale_from_amax: scale > 2^-22) |x / scale| < 2^-78 and both quotients have E4M3 code +-0 (tools: an exhaustive check over every bf16 x and 20000 scales, and 3e8 random
//   fp32 x, found no differing code). A non-finite result (x or scale not finite) takes the
//   division itself. Three instructions instead of IEEE division's ~8 and its range check.
// Only for values that are converted to E4M3 next: below 2^-78 the quotient may differ by ulps.
struct ScaleDivider {
  float scale, inverse;
  bool exact_inverse;
  __device__ __forceinline__ ScaleDivider(float s, bool power_of_two_scale)
      : scale(s), inverse(1.0f / s), exact_inverse(power_of_two_scale) {}
  __device__ __forceinline__ float operator()(float x) const {
    if (exact_inverse) return x * inverse;
    const float q0 = __fmul_rn(x, inverse);
    const float residual = __fmaf_rn(-q0, scale, x);
    const float q = __fmaf_rn(residual, inverse, q0);
    return isfinite(q) ? q : x / scale;
  }
};

// The codes of v / scale, byte i of the result = code of v[i] (the build never uses
// --use_fast_math: the reciprocal and any fallback division are IEEE, as on the CPU).
__device__ __forceinline__ uint2 quantize8(const float (&v)[kChunk], const ScaleDivider& divide) {
  uint32_t words[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float2 low = make_float2(divide(v[4 * half]), divide(v[4 * half + 1]));
    const float2 high = make_float2(divide(v[4 * half + 2]), divide(v[4 * half + 3]));
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

// The staged 128 x 128 tile kernels (swiglu_fp8_cuda.cu): 256 threads, values staged
// as bf16 rows of 130 (65 words: column reads are conflict-free), 16 rows (one per half-warp) per
// pass, 8 passes.
constexpr int kTileThreads = 256;
constexpr int kTileSide = static_cast<int>(kFp8BlockSize);
constexpr int kStagedStride = kTileSide + 2;
constexpr int kTileHalves = kTileThreads / kLanesPerTile;
constexpr int kTileRowPasses = kTileSide / kTileHalves;

// The rows a transposed quantizer's tile of `height` rows starting at row0 covers: its group
// (kGrouped: the group holding row0; else one group of all rows), the tile's first row inside it
// and its row count. False when the tile lies in no group (the block has nothing to do).
struct TransposedTile {
  int64_t base = 0, group_rows = 0, local0 = 0;
  int rows = 0;
};
template <bool kGrouped>
__device__ __forceinline__ bool transposed_tile(const int64_t* offsets, int64_t groups,
                                                int64_t rows, int64_t row0, int height,
                                                TransposedTile& t) {
  t.base = 0;
  t.group_rows = rows;
  if (kGrouped && !find_group(offsets, groups, row0, t.base, t.group_rows)) return false;
  t.local0 = row0 - t.base;
  t.rows = static_cast<int>(min64(height, min64(t.group_rows - t.local0, rows - row0)));
  return true;
}

// One warp stores the codes of rows 0 .. t.rows-1 of one column of a transposed tile (codes[r],
// 4-byte aligned, in shared memory) at `out` (the column's first code: qT_g + column * rows_g +
// local0): lane l writes rows 4l..4l+3, one 4-byte store when `word_stores` allows.
__device__ __forceinline__ void store_code_column(uint8_t* out, const uint8_t* codes,
                                                  const TransposedTile& t, bool word_stores,
                                                  int lane) {
  const int r = 4 * lane;
  if (r >= t.rows) return;
  const uint32_t word = *reinterpret_cast<const uint32_t*>(codes + r);
  if (word_stores && r + 4 <= t.rows) {
    *reinterpret_cast<uint32_t*>(out + r) = word;
  } else {
    for (int j = 0; j < 4 && r + j < t.rows; ++j) out[r + j] = static_cast<uint8_t>(word >> (8 * j));
  }
}

// The 1x128 activation quantizer over a [rows, cols] matrix whose values come from `source`
// (source.load(v, row, col, valid) fills v with the fp32 values of columns col..col+valid-1 of
// `row`, zeros after). Block (row block, tile): the 16 half-warps of the block take rows
// first + h + 16 j (j < kActQuantRowsPerHalf) of one tile, so each thread has 4 loads in flight
// and the scales of 16 consecutive rows are adjacent. Both halves of a warp always run the
// shuffles together.
//   kGrouped false: scales [tiles][rows]
//   kGrouped true:  rows in group g = [offsets[g], offsets[g+1]) have their scales at
//                   scales + offsets[g]*tiles laid out [tiles][rows_g]; rows in no group are skipped
// kVector: q rows may be written 8 bytes at a time (cols % 8 == 0 and q 8-byte aligned).
constexpr int kActQuantThreads = 256;
constexpr int kActQuantHalves = kActQuantThreads / kLanesPerTile;  // 16
constexpr int kActQuantRowsPerHalf = 4;
constexpr int kActQuantRowsPerBlock = kActQuantHalves * kActQuantRowsPerHalf;  // 64

template <class Source, bool kVector, bool kGrouped>
__global__ void __launch_bounds__(kActQuantThreads)
    act_quant_kernel(uint8_t* __restrict__ q, float* __restrict__ scales, Source source,
                     int64_t rows, int64_t cols, const int64_t* __restrict__ offsets,
                     int64_t groups, bool power_of_two_scale) {
  const int64_t tiles = gridDim.y;
  const int64_t tile = blockIdx.y;
  const int half = threadIdx.x / kLanesPerTile;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kActQuantRowsPerBlock;
  const int64_t col = tile * kFp8BlockSize + (threadIdx.x % kLanesPerTile) * kChunk;
  const int64_t valid = cols - col;  // <= 0 past the end of a partial tile

  // Grouped: the block's group, found once when all its rows lie in one (the usual case: the
  // groups hold multiples of 128 rows); otherwise each row looks its group up.
  __shared__ int64_t block_base, block_group_rows;
  __shared__ bool block_in_one_group;
  if (kGrouped) {
    if (threadIdx.x == 0) {
      int64_t base = 0, group_rows = 0;
      const int64_t last = (first + kActQuantRowsPerBlock < rows ? first + kActQuantRowsPerBlock
                                                                 : rows) - 1;
      block_in_one_group = find_group(offsets, groups, first, base, group_rows) &&
                           last < base + group_rows;
      block_base = base;
      block_group_rows = group_rows;
    }
    __syncthreads();
  }

  float v[kActQuantRowsPerHalf][kChunk];
  int64_t scale_at[kActQuantRowsPerHalf];  // -1: the row is not quantized
#pragma unroll
  for (int j = 0; j < kActQuantRowsPerHalf; ++j) {
    const int64_t row = first + half + kActQuantHalves * j;
    bool active = row < rows;
    int64_t at = tile * rows + row;
    if (kGrouped) {
      int64_t base = block_base, group_rows = block_group_rows;
      if (!block_in_one_group && active) active = find_group(offsets, groups, row, base, group_rows);
      at = base * tiles + tile * group_rows + (row - base);
    }
    scale_at[j] = active ? at : -1;
    if (active && valid > 0)
      source.load(v[j], row, col, valid);
    else
#pragma unroll
      for (int i = 0; i < kChunk; ++i) v[j][i] = 0.0f;
  }
#pragma unroll
  for (int j = 0; j < kActQuantRowsPerHalf; ++j) {
    const float amax = half_warp_max(chunk_amax(v[j], 0.0f));
    const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
    if (scale_at[j] < 0) continue;
    const int64_t row = first + half + kActQuantHalves * j;
    if (valid > 0)
      store_codes<kVector>(q + row * cols + col,
                           quantize8(v[j], ScaleDivider(scale, power_of_two_scale)), valid);
    if (threadIdx.x % kLanesPerTile == 0) scales[scale_at[j]] = scale;
  }
}

// The grid of act_quant_kernel: (row blocks, tiles); checked against the grid limits.
inline dim3 act_quant_grid(int64_t rows, int64_t cols) {
  const int64_t row_blocks = ceil_div(rows, kActQuantRowsPerBlock);
  const int64_t tiles = fp8_block_count(cols);
  FRUGAL_CUDA_REQUIRE(row_blocks <= 0x7FFFFFFF && tiles <= 65535,
                      "1x128 FP8 quantizer: matrix too large for one grid");
  return dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(tiles));
}

}  // namespace frugal::cuda::detail
