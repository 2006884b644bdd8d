// Both 1x128 quantizations of an activation that an FP8 Linear needs, in one pass over it
// (quantize_act_1x128_dual and its grouped form, see quant.h): the row-wise codes for Fprop/Dgrad
// (as quantize_act_1x128) and the transposed codes for Wgrad (as transpose_quantize_1x128), bit
// for bit the same as those two calls, which read x once each.
//
// One 256-thread block per 128 x 128 tile of x (row tile, column tile):
//   rows     half-warp h takes rows h, h+16, ..., h+112 of the tile (16 lanes x 8 values = one
//            1x128 tile each), quantizes them as quant_tile.cuh does (amax over the half-warp) and
//            writes their codes and scales; it also stages the values (exact bf16) in shared
//            memory [128][130] (a row is 65 words: column reads are conflict-free);
//   columns  thread t takes the amax of column t % 128 over half the rows, two halves combined;
//            then warp w quantizes columns w, w+8, ...: lane l codes rows l, l+32, l+64, l+96 into
//            the warp's byte row, then stores rows 4l..4l+3 of the column's qT segment (4 bytes).
// bf16 input only (the FP8 recipe's activations). Grouped: every group holds a multiple of 128
// rows and starts on one (the FP8 permutation's padding, kFp8GroupRowAlign), so a tile lies in one
// group; tiles in no group are skipped.
// This kernel is variant 0 of quant_dual_variant.h; the entry points below run the selected one
// (variants 1..3: quant_dual_fast.cu).
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant.h"
#include "kernels/quant/quant_dual_variant.h"
#include "kernels/quant/quant_tile.cuh"

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
constexpr int kLoadsInFlight = 4;                       // row passes loaded before quantizing

// q, scales: as quantize_act_1x128(_grouped); qT, scalesT: as transpose_quantize_1x128(_grouped).
// kVector: x rows readable and q rows writable 8 values at a time (cols % 8 == 0, x 16-byte and q
// 8-byte aligned).
template <bool kVector, bool kGrouped>
__global__ void __launch_bounds__(kThreads)
    dual_quant_kernel(uint8_t* __restrict__ q, float* __restrict__ scales,
                      uint8_t* __restrict__ qT, float* __restrict__ scalesT,
                      const bf16* __restrict__ x, int64_t rows, int64_t cols,
                      const int64_t* __restrict__ offsets, int64_t groups,
                      bool power_of_two_scale) {
  __shared__ __align__(16) bf16 tile[kTile][kStride];
  __shared__ __align__(4) uint8_t warp_codes[kThreads / 32][kTile + 4];
  __shared__ float partial_amax[2][kTile];
  __shared__ float column_scale[kTile];

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t tile_index = blockIdx.y;  // the 1x128 tile of every row, the 128 columns here
  const int64_t col0 = tile_index * kTile;
  const int64_t tiles = gridDim.y;
  detail::TransposedTile t;
  if (!detail::transposed_tile<kGrouped>(offsets, groups, rows, row0, kTile, t)) return;
  const int64_t base = t.base, group_rows = t.group_rows, local0 = t.local0;
  const int tile_rows = t.rows;
  const int tile_cols = static_cast<int>(detail::min64(kTile, cols - col0));

  // ---- rows: codes and scales along the columns; the values staged for the columns ----
  const int half = threadIdx.x / kLanesPerTile;
  const int chunk_col = (threadIdx.x % kLanesPerTile) * kChunk;  // within the tile
  const int64_t valid = cols - (col0 + chunk_col);                // <= 0 past a partial tile
#pragma unroll
  for (int p0 = 0; p0 < kRowPasses; p0 += kLoadsInFlight) {
    float v[kLoadsInFlight][kChunk];
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j) {
      const int r = half + kHalves * (p0 + j);
      if (r < tile_rows && valid > 0)
        detail::load_chunk<kVector>(v[j], x + (row0 + r) * cols + col0 + chunk_col, valid);
      else
#pragma unroll
        for (int i = 0; i < kChunk; ++i) v[j][i] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kLoadsInFlight; ++j) {
      const int r = half + kHalves * (p0 + j);
#pragma unroll
      for (int i = 0; i < kChunk; i += 2)  // exact: the values are bf16
        *reinterpret_cast<__nv_bfloat162*>(&tile[r][chunk_col + i]) =
            __floats2bfloat162_rn(v[j][i], v[j][i + 1]);
      const float amax = detail::half_warp_max(detail::chunk_amax(v[j], 0.0f));
      const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
      if (r >= tile_rows) continue;
      const int64_t row = row0 + r;
      if (valid > 0)
        detail::store_codes<kVector>(
            q + row * cols + col0 + chunk_col,
            detail::quantize8(v[j], detail::ScaleDivider(scale, power_of_two_scale)), valid);
      if (chunk_col == 0) scales[base * tiles + tile_index * group_rows + (row - base)] = scale;
    }
  }
  __syncthreads();

  // ---- columns: amax, scale, codes of the transposed tile ----
  {
    const int c = threadIdx.x % kTile;
    const int part = threadIdx.x / kTile;
    float amax = 0.0f;
    for (int r = part * (kTile / 2); r < (part + 1) * (kTile / 2); ++r)
      amax = fmaxf(amax, fabsf(__bfloat162float(tile[r][c])));
    partial_amax[part][c] = amax;
  }
  __syncthreads();
  if (threadIdx.x < kTile) {
    const int c = threadIdx.x;
    const float scale = fp8_scale_from_amax(fmaxf(partial_amax[0][c], partial_amax[1][c]),
                                            power_of_two_scale);
    column_scale[c] = scale;
    // scales_g = scalesT + base/128*cols, [rows_g/128][cols]
    if (c < tile_cols) scalesT[(base / kTile + local0 / kTile) * cols + col0 + c] = scale;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  uint8_t* codes = warp_codes[warp];
  uint8_t* qT_group = qT + base * cols;
  const bool word_stores = group_rows % 4 == 0 && local0 % 4 == 0 &&
                           reinterpret_cast<uintptr_t>(qT_group) % 4 == 0;
  for (int c = warp; c < tile_cols; c += kThreads / 32) {
    const detail::ScaleDivider divide(column_scale[c], power_of_two_scale);
#pragma unroll
    for (int k = 0; k < kTile / 32; ++k) {
      const int r = lane + 32 * k;
      codes[r] = __nv_cvt_float_to_fp8(divide(__bfloat162float(tile[r][c])), __NV_SATFINITE,
                                       __NV_E4M3);
    }
    __syncwarp();
    detail::store_code_column(qT_group + (col0 + c) * group_rows + local0, codes, t, word_stores,
                              lane);
    __syncwarp();  // the byte row is rewritten for the warp's next column
  }
}

template <bool kGrouped>
void launch_dual(uint8_t* q, float* scales, uint8_t* qT, float* scalesT, const bf16* x,
                 const int64_t* offsets, int64_t groups, int64_t rows, int64_t cols,
                 bool power_of_two_scale, cudaStream_t stream) {
  const int64_t row_tiles = ceil_div(rows, kTile);
  const int64_t col_tiles = ceil_div(cols, kTile);
  FRUGAL_CUDA_REQUIRE(row_tiles <= 0x7FFFFFFF && col_tiles <= 65535,
                      "cuda::quantize_act_1x128_dual: matrix too large for one grid");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
  if (cols % kChunk == 0 && aligned_to(x, 16) && aligned_to(q, 8))
    dual_quant_kernel<true, kGrouped><<<grid, kThreads, 0, stream>>>(
        q, scales, qT, scalesT, x, rows, cols, offsets, groups, power_of_two_scale);
  else
    dual_quant_kernel<false, kGrouped><<<grid, kThreads, 0, stream>>>(
        q, scales, qT, scalesT, x, rows, cols, offsets, groups, power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

// FRUGAL_DUAL_QUANT_VARIANT, read once: unset or empty = 0; anything but a variant number throws.
int environment_variant() {
  static const int variant = [] {
    const char* text = std::getenv("FRUGAL_DUAL_QUANT_VARIANT");
    if (text == nullptr || *text == '\0') return 0;
    char* end = nullptr;
    const long value = std::strtol(text, &end, 10);
    FRUGAL_CUDA_REQUIRE(*end == '\0' && value >= 0 && value < kDualQuantVariants,
                        "FRUGAL_DUAL_QUANT_VARIANT: not a dual quantizer variant (0..3)");
    return static_cast<int>(value);
  }();
  return variant;
}

std::atomic<int> selected_variant{-1};  // -1: the environment's

}  // namespace

int dual_quant_variant() {
  const int selected = selected_variant.load(std::memory_order_relaxed);
  return selected >= 0 ? selected : environment_variant();
}

void set_dual_quant_variant(int variant) {
  FRUGAL_CUDA_REQUIRE(variant >= -1 && variant < kDualQuantVariants,
                      "cuda::set_dual_quant_variant: no such variant");
  selected_variant.store(variant, std::memory_order_relaxed);
}

void quantize_act_1x128_dual(uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                             const __nv_bfloat16* x, int64_t rows, int64_t cols,
                             bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::quantize_act_1x128_dual: negative shape");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && qT != nullptr && scalesT != nullptr &&
                          x != nullptr,
                      "cuda::quantize_act_1x128_dual: null pointer");
  const int variant = dual_quant_variant();
  if (variant == 0)
    launch_dual<false>(q, scales, qT, scalesT, x, nullptr, 0, rows, cols, power_of_two_scale,
                       stream);
  else
    detail::launch_dual_quant_fast(variant, q, scales, qT, scalesT, x, nullptr, 0, rows, cols,
                                   power_of_two_scale, stream);
}

void quantize_act_1x128_dual_grouped(uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                                     const __nv_bfloat16* x, const int64_t* offsets,
                                     int64_t groups, int64_t rows, int64_t cols,
                                     bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && groups >= 0,
                      "cuda::quantize_act_1x128_dual_grouped: negative shape or group count");
  if (rows == 0 || cols == 0 || groups == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && qT != nullptr && scalesT != nullptr &&
                          x != nullptr && offsets != nullptr,
                      "cuda::quantize_act_1x128_dual_grouped: null pointer");
  const int variant = dual_quant_variant();
  if (variant == 0)
    launch_dual<true>(q, scales, qT, scalesT, x, offsets, groups, rows, cols, power_of_two_scale,
                      stream);
  else
    detail::launch_dual_quant_fast(variant, q, scales, qT, scalesT, x, offsets, groups, rows, cols,
                                   power_of_two_scale, stream);
}

}  // namespace frugal::cuda
