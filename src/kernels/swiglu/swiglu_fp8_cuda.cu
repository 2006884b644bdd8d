// SwiGLU of an MoE layer's expert rows fused with the FP8 quantizations around it (swiglu.h,
// swiglu_fwd_fp8_grouped / swiglu_bwd_fp8_grouped): bit for bit the unfused sequences
//   forward:  swiglu_fwd<bf16> -> h; quantize_act_1x128 of gu (the FP8 cache);
//             quantize_act_1x128_dual_grouped of h
//   backward: dequantize_act_1x128<bf16> of the cache -> gu; swiglu_bwd<bf16> -> dgu;
//             quantize_act_1x128_dual_grouped of dgu
// without storing h, dgu or the dequantized gu. The SwiGLU arithmetic is swiglu_math.cuh's (that of
// swiglu_cuda.cu), the values are rounded to bf16 where the unfused kernels store them, and the
// quantization is quant_tile.cuh's (the rule of quant.h), so every code and scale is the same.
//
// One 256-thread block per (128-row tile, 128-column tile j of h) - h is [rows, inter], inter a
// multiple of 128, and the g and u columns of the same index are columns j and inter/128 + j of gu
// (and of dgu), so a block owns whole 1x128 tiles of every matrix it touches:
//   rows     half-warp h takes rows h, h+16, ..., h+112 of the tile (16 lanes x 8 values = a 1x128
//            tile each); forward: it quantizes the g and u chunks for the cache (every row <
//            rows) and h (rows in a group), staging h (bf16) in shared memory; backward: it
//            expands the cached g and u, takes dg and du, quantizes both and stages both (two
//            tiles, dynamic shared memory);
//   columns  each staged tile is quantized along its columns (the 128x1 tiles of the Wgrad
//            operand): a column's amax over two halves of the rows, then one warp per column.
// Groups as quantize_act_1x128_dual_grouped takes them (multiples of 128 rows starting on a
// multiple of 128), so a row tile lies in one group or in none.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant.h"
#include "kernels/quant/quant_tile.cuh"
#include "kernels/swiglu/swiglu.h"
#include "kernels/swiglu/swiglu_math.cuh"

namespace frugal::cuda {
namespace {

using bf16 = __nv_bfloat16;
using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;
using detail::kLanesPerTile;

constexpr int kThreads = detail::kTileThreads;
constexpr int kTile = detail::kTileSide;  // 128 rows x 128 columns per block
constexpr int kStride = detail::kStagedStride;
constexpr int kHalves = detail::kTileHalves;
constexpr int kRowPasses = detail::kTileRowPasses;
// Row passes loaded before computing: forward 62 registers (4 blocks/SM), backward 72 registers
// and 69 KB of shared memory (3 blocks/SM).
constexpr int kFwdLoadsInFlight = 2;
constexpr int kBwdLoadsInFlight = 2;
constexpr int kBwdStagedBytes = 2 * kTile * kStride * static_cast<int>(sizeof(bf16));  // dg, du

using StagedTile = bf16[kTile][kStride];

// The shared scratch of the column phase.
struct ColumnScratch {
  float partial_amax[2][kTile];
  float column_scale[kTile];
  uint8_t warp_codes[kThreads / 32][kTile + 4];  // 4-byte aligned rows (after the floats)
};

// v as a bf16 store and load would give it back.
__device__ __forceinline__ float round_to_bf16(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

// The 1x128 quantization of the row chunk v held by this lane (its half-warp holds the row's
// tile): when `store`, the codes at q and, by the half's first lane, the scale at *scale_at. Every
// lane of the warp must call it (the amax is a half-warp shuffle).
template <bool kVector>
__device__ __forceinline__ void quantize_row_chunk(const float (&v)[kChunk], bool store, uint8_t* q,
                                                   float* scale_at, bool power_of_two_scale) {
  const float amax = detail::half_warp_max(detail::chunk_amax(v, 0.0f));
  const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
  if (!store) return;
  detail::store_codes<kVector>(
      q, detail::quantize8(v, detail::ScaleDivider(scale, power_of_two_scale)), kChunk);
  if (threadIdx.x % kLanesPerTile == 0) *scale_at = scale;
}

// Row r, columns chunk_col..chunk_col+7 of a staged tile (exact: the values are bf16 already).
__device__ __forceinline__ void stage_chunk(StagedTile& tile, int r, int chunk_col,
                                            const float (&v)[kChunk]) {
#pragma unroll
  for (int i = 0; i < kChunk; i += 2)
    *reinterpret_cast<__nv_bfloat162*>(&tile[r][chunk_col + i]) =
        __floats2bfloat162_rn(v[i], v[i + 1]);
}

// The fp32 values of 8 cached codes as dequantize_act_1x128<bf16> stores them (rounded to bf16).
template <bool kVector>
__device__ __forceinline__ void dequantize_chunk(float (&v)[kChunk], const uint8_t* q,
                                                 float scale) {
  uint8_t codes[kChunk];
  if (kVector) {
    const uint2 packed = *reinterpret_cast<const uint2*>(q);
#pragma unroll
    for (int i = 0; i < kChunk; ++i)
      codes[i] = static_cast<uint8_t>((i < 4 ? packed.x : packed.y) >> (8 * (i % 4)));
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) codes[i] = q[i];
  }
#pragma unroll
  for (int i = 0; i < kChunk; ++i) v[i] = round_to_bf16(detail::e4m3_to_float(codes[i]) * scale);
}

// The column quantization (128x1 tiles) of a staged 128 x 128 tile of a matrix with `cols`
// columns whose rows >= tile_rows are staged as zeros: column c's scale at scalesT_row[c] (the
// tile's row of the group's [rows_g/128][cols] scales, from column col0) and its codes at
// qT_group + (col0 + c) * group_rows + local0 + r for r < tile_rows. Every thread of the block
// calls it; it starts with a barrier (the tile is staged; a previous call is done with `s`).
__device__ void quantize_columns(const StagedTile& tile, ColumnScratch& s, int tile_rows,
                                 uint8_t* qT_group, float* scalesT_row, int64_t col0,
                                 int64_t group_rows, int64_t local0, bool power_of_two_scale) {
  __syncthreads();
  {
    const int c = threadIdx.x % kTile;
    const int part = threadIdx.x / kTile;
    float amax = 0.0f;
    for (int r = part * (kTile / 2); r < (part + 1) * (kTile / 2); ++r)
      amax = fmaxf(amax, fabsf(__bfloat162float(tile[r][c])));
    s.partial_amax[part][c] = amax;
  }
  __syncthreads();
  if (threadIdx.x < kTile) {
    const int c = threadIdx.x;
    const float scale =
        fp8_scale_from_amax(fmaxf(s.partial_amax[0][c], s.partial_amax[1][c]), power_of_two_scale);
    s.column_scale[c] = scale;
    scalesT_row[c] = scale;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  uint8_t* codes = s.warp_codes[warp];
  const bool word_stores =
      group_rows % 4 == 0 && local0 % 4 == 0 && reinterpret_cast<uintptr_t>(qT_group) % 4 == 0;
  for (int c = warp; c < kTile; c += kThreads / 32) {
    const detail::ScaleDivider divide(s.column_scale[c], power_of_two_scale);
#pragma unroll
    for (int k = 0; k < kTile / 32; ++k) {
      const int r = lane + 32 * k;
      codes[r] =
          __nv_cvt_float_to_fp8(divide(__bfloat162float(tile[r][c])), __NV_SATFINITE, __NV_E4M3);
    }
    __syncwarp();
    const int r = 4 * lane;
    if (r < tile_rows) {
      uint8_t* out = qT_group + (col0 + c) * group_rows + local0 + r;
      const uint32_t word = *reinterpret_cast<const uint32_t*>(&codes[r]);
      if (word_stores && r + 4 <= tile_rows) {
        *reinterpret_cast<uint32_t*>(out) = word;
      } else {
        for (int j = 0; j < 4 && r + j < tile_rows; ++j)
          out[j] = static_cast<uint8_t>(word >> (8 * j));
      }
    }
    __syncwarp();  // the byte row is rewritten for the warp's next column
  }
}

// Forward. Grid (row tiles, inter/128). kVector: gu readable 16 bytes and gu_q, h_q writable 8
// bytes at a time.
template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    swiglu_fwd_fp8_kernel(uint8_t* __restrict__ gu_q, float* __restrict__ gu_scales,
                          uint8_t* __restrict__ h_q, float* __restrict__ h_scales,
                          uint8_t* __restrict__ hT_q, float* __restrict__ hT_scales,
                          const bf16* __restrict__ gu, const int64_t* __restrict__ offsets,
                          int64_t groups, int64_t rows, int64_t inter, bool power_of_two_scale) {
  __shared__ __align__(16) StagedTile tile;
  __shared__ ColumnScratch scratch;

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t tile_index = blockIdx.y;  // h's column tile; gu's tiles tile_index and h_tiles + it
  const int64_t h_tiles = gridDim.y;      // inter / 128
  const int64_t col0 = tile_index * kTile;
  const int64_t ld = 2 * inter;
  int64_t base = 0, group_rows = 0;
  const bool in_group = detail::find_group(offsets, groups, row0, base, group_rows);  // uniform
  const int64_t local0 = row0 - base;
  const int cache_rows = static_cast<int>(detail::min64(kTile, rows - row0));
  const int h_rows =
      in_group ? static_cast<int>(detail::min64(cache_rows, group_rows - local0)) : 0;

  const int half = threadIdx.x / kLanesPerTile;
  const int chunk_col = (threadIdx.x % kLanesPerTile) * kChunk;  // within the tile
#pragma unroll
  for (int p0 = 0; p0 < kRowPasses; p0 += kFwdLoadsInFlight) {
    float g[kFwdLoadsInFlight][kChunk], u[kFwdLoadsInFlight][kChunk];
#pragma unroll
    for (int j = 0; j < kFwdLoadsInFlight; ++j) {
      const int r = half + kHalves * (p0 + j);
      if (r < cache_rows) {
        const bf16* at = gu + (row0 + r) * ld + col0 + chunk_col;
        detail::load_chunk<kVector>(g[j], at, kChunk);
        detail::load_chunk<kVector>(u[j], at + inter, kChunk);
      } else {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) g[j][i] = u[j][i] = 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < kFwdLoadsInFlight; ++j) {
      const int r = half + kHalves * (p0 + j);
      const int64_t row = row0 + r;
      // The cache: gu's tiles tile_index (g) and h_tiles + tile_index (u), scales [tiles][rows].
      uint8_t* cache_at = gu_q + row * ld + col0 + chunk_col;
      quantize_row_chunk<kVector>(g[j], r < cache_rows, cache_at,
                                  gu_scales + tile_index * rows + row, power_of_two_scale);
      quantize_row_chunk<kVector>(u[j], r < cache_rows, cache_at + inter,
                                  gu_scales + (h_tiles + tile_index) * rows + row,
                                  power_of_two_scale);
      if (!in_group) continue;
      float h[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i)
        h[i] = r < h_rows ? round_to_bf16(detail::swiglu_value(g[j][i], u[j][i])) : 0.0f;
      stage_chunk(tile, r, chunk_col, h);
      // h's grouped scales: group g's [h_tiles][rows_g] at base * h_tiles.
      quantize_row_chunk<kVector>(
          h, r < h_rows, h_q + row * inter + col0 + chunk_col,
          h_scales + base * h_tiles + tile_index * group_rows + (row - base), power_of_two_scale);
    }
  }
  if (!in_group) return;
  quantize_columns(tile, scratch, h_rows, hT_q + base * inter,
                   hT_scales + (base / kTile + local0 / kTile) * inter + col0, col0, group_rows,
                   local0, power_of_two_scale);
}

// Backward. Grid (row tiles, inter/128); dynamic shared memory kBwdStagedBytes (dg and du tiles).
// kVector: dh readable 16 bytes, gu_q readable and dgu_q writable 8 bytes at a time.
template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    swiglu_bwd_fp8_kernel(uint8_t* __restrict__ dgu_q, float* __restrict__ dgu_scales,
                          uint8_t* __restrict__ dguT_q, float* __restrict__ dguT_scales,
                          const bf16* __restrict__ dh, const uint8_t* __restrict__ gu_q,
                          const float* __restrict__ gu_scales, const int64_t* __restrict__ offsets,
                          int64_t groups, int64_t rows, int64_t inter, bool power_of_two_scale) {
  extern __shared__ __align__(16) unsigned char staged[];
  StagedTile& dg_tile = *reinterpret_cast<StagedTile*>(staged);
  StagedTile& du_tile = *reinterpret_cast<StagedTile*>(staged + sizeof(StagedTile));
  __shared__ ColumnScratch scratch;

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t tile_index = blockIdx.y;  // dg's tile; du's is h_tiles + tile_index
  const int64_t h_tiles = gridDim.y;
  const int64_t tiles = 2 * h_tiles;  // of gu and dgu
  const int64_t col0 = tile_index * kTile;
  const int64_t ld = 2 * inter;
  int64_t base = 0, group_rows = 0;
  if (!detail::find_group(offsets, groups, row0, base, group_rows)) return;  // block-uniform
  const int64_t local0 = row0 - base;
  const int tile_rows =
      static_cast<int>(detail::min64(kTile, detail::min64(group_rows - local0, rows - row0)));

  const int half = threadIdx.x / kLanesPerTile;
  const int chunk_col = (threadIdx.x % kLanesPerTile) * kChunk;
#pragma unroll
  for (int p0 = 0; p0 < kRowPasses; p0 += kBwdLoadsInFlight) {
    float dhv[kBwdLoadsInFlight][kChunk], g[kBwdLoadsInFlight][kChunk],
        u[kBwdLoadsInFlight][kChunk];
#pragma unroll
    for (int j = 0; j < kBwdLoadsInFlight; ++j) {
      const int r = half + kHalves * (p0 + j);
      if (r < tile_rows) {
        const int64_t row = row0 + r;
        detail::load_chunk<kVector>(dhv[j], dh + row * inter + col0 + chunk_col, kChunk);
        const uint8_t* cache_at = gu_q + row * ld + col0 + chunk_col;
        dequantize_chunk<kVector>(g[j], cache_at, gu_scales[tile_index * rows + row]);
        dequantize_chunk<kVector>(u[j], cache_at + inter,
                                  gu_scales[(h_tiles + tile_index) * rows + row]);
      } else {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) dhv[j][i] = g[j][i] = u[j][i] = 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < kBwdLoadsInFlight; ++j) {
      const int r = half + kHalves * (p0 + j);
      const int64_t row = row0 + r;
      const bool active = r < tile_rows;
      float dg[kChunk], du[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        float dg_value, du_value;
        detail::swiglu_grad(dhv[j][i], g[j][i], u[j][i], dg_value, du_value);
        dg[i] = active ? round_to_bf16(dg_value) : 0.0f;
        du[i] = active ? round_to_bf16(du_value) : 0.0f;
      }
      stage_chunk(dg_tile, r, chunk_col, dg);
      stage_chunk(du_tile, r, chunk_col, du);
      // dgu's grouped scales: group g's [tiles][rows_g] at base * tiles.
      uint8_t* codes_at = dgu_q + row * ld + col0 + chunk_col;
      float* scales_at = dgu_scales + base * tiles + (row - base);
      quantize_row_chunk<kVector>(dg, active, codes_at, scales_at + tile_index * group_rows,
                                  power_of_two_scale);
      quantize_row_chunk<kVector>(du, active, codes_at + inter,
                                  scales_at + (h_tiles + tile_index) * group_rows,
                                  power_of_two_scale);
    }
  }
  // dgu^T per group: [2*inter, rows_g] at base * 2*inter; scales [rows_g/128][2*inter].
  uint8_t* qT_group = dguT_q + base * ld;
  float* scalesT_row = dguT_scales + (base / kTile + local0 / kTile) * ld;
  quantize_columns(dg_tile, scratch, tile_rows, qT_group, scalesT_row + col0, col0, group_rows,
                   local0, power_of_two_scale);
  quantize_columns(du_tile, scratch, tile_rows, qT_group, scalesT_row + inter + col0, inter + col0,
                   group_rows, local0, power_of_two_scale);
}

// The grid of both kernels: (row tiles, inter/128), checked against the grid limits.
dim3 fused_grid(int64_t rows, int64_t inter, const char* who) {
  const int64_t row_tiles = ceil_div(rows, kTile);
  const int64_t col_tiles = inter / kTile;
  FRUGAL_CUDA_REQUIRE(row_tiles <= 0x7FFFFFFF && col_tiles <= 65535, who);
  return dim3(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
}

}  // namespace

void swiglu_fwd_fp8_grouped(uint8_t* gu_q, float* gu_scales, uint8_t* h_q, float* h_scales,
                            uint8_t* hT_q, float* hT_scales, const __nv_bfloat16* gu,
                            const int64_t* offsets, int64_t groups, int64_t rows, int64_t inter,
                            bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && inter >= 0 && groups >= 0,
                      "cuda::swiglu_fwd_fp8_grouped: negative shape or group count");
  FRUGAL_CUDA_REQUIRE(inter % kFp8BlockSize == 0,
                      "cuda::swiglu_fwd_fp8_grouped: the intermediate size must be a multiple of "
                      "128 (use swiglu_fwd and the separate quantizers otherwise)");
  if (rows == 0 || inter == 0) return;
  // The cache covers every row, so the kernel runs even without groups (then no h operands).
  FRUGAL_CUDA_REQUIRE(
      gu_q != nullptr && gu_scales != nullptr && gu != nullptr &&
          (groups == 0 || (offsets != nullptr && h_q != nullptr && h_scales != nullptr &&
                           hT_q != nullptr && hT_scales != nullptr)),
      "cuda::swiglu_fwd_fp8_grouped: null pointer");
  const dim3 grid = fused_grid(rows, inter, "cuda::swiglu_fwd_fp8_grouped: too large for one grid");
  const bool vector = aligned_to(gu, 16) && aligned_to(gu_q, 8) && aligned_to(h_q, 8);
  if (vector)
    swiglu_fwd_fp8_kernel<true><<<grid, kThreads, 0, stream>>>(gu_q, gu_scales, h_q, h_scales, hT_q,
                                                               hT_scales, gu, offsets, groups, rows,
                                                               inter, power_of_two_scale);
  else
    swiglu_fwd_fp8_kernel<false>
        <<<grid, kThreads, 0, stream>>>(gu_q, gu_scales, h_q, h_scales, hT_q, hT_scales, gu,
                                        offsets, groups, rows, inter, power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void swiglu_bwd_fp8_grouped(uint8_t* dgu_q, float* dgu_scales, uint8_t* dguT_q, float* dguT_scales,
                            const __nv_bfloat16* dh, const uint8_t* gu_q, const float* gu_scales,
                            const int64_t* offsets, int64_t groups, int64_t rows, int64_t inter,
                            bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && inter >= 0 && groups >= 0,
                      "cuda::swiglu_bwd_fp8_grouped: negative shape or group count");
  FRUGAL_CUDA_REQUIRE(inter % kFp8BlockSize == 0,
                      "cuda::swiglu_bwd_fp8_grouped: the intermediate size must be a multiple of "
                      "128 (use dequantize_act_1x128, swiglu_bwd and the separate quantizers "
                      "otherwise)");
  if (rows == 0 || inter == 0 || groups == 0) return;
  FRUGAL_CUDA_REQUIRE(dgu_q != nullptr && dgu_scales != nullptr && dguT_q != nullptr &&
                          dguT_scales != nullptr && dh != nullptr && gu_q != nullptr &&
                          gu_scales != nullptr && offsets != nullptr,
                      "cuda::swiglu_bwd_fp8_grouped: null pointer");
  const dim3 grid = fused_grid(rows, inter, "cuda::swiglu_bwd_fp8_grouped: too large for one grid");
  const bool vector = aligned_to(dh, 16) && aligned_to(gu_q, 8) && aligned_to(dgu_q, 8);
  if (vector) {
    FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(
        swiglu_bwd_fp8_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBwdStagedBytes));
    swiglu_bwd_fp8_kernel<true><<<grid, kThreads, kBwdStagedBytes, stream>>>(
        dgu_q, dgu_scales, dguT_q, dguT_scales, dh, gu_q, gu_scales, offsets, groups, rows, inter,
        power_of_two_scale);
  } else {
    FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(swiglu_bwd_fp8_kernel<false>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           kBwdStagedBytes));
    swiglu_bwd_fp8_kernel<false><<<grid, kThreads, kBwdStagedBytes, stream>>>(
        dgu_q, dgu_scales, dguT_q, dguT_scales, dh, gu_q, gu_scales, offsets, groups, rows, inter,
        power_of_two_scale);
  }
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
