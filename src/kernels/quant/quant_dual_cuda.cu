// Both 1x128 quantizations of an activation that an FP8 Linear needs, in one pass over it
// (quantize_act_1x128_dual and its grouped form, see quant.h): the row-wise codes for Fprop/Dgrad
// (as quantize_act_1x128) and the transposed codes for Wgrad (as transpose_quantize_1x128), bit
// for bit the same as those two calls, which read x once each. From x [rows, cols] bf16:
//   q [rows, cols], scales [ceil(cols/128)][rows]             (1x128 tiles along the columns)
//   qT [cols, rows], scalesT [ceil(rows/128)][cols]            (1x128 tiles along the rows)
// grouped: group g's scales at scales + offsets[g]*tiles as [tiles][rows_g], its qT_g
// [cols, rows_g] at qT + offsets[g]*cols and scalesT [rows_g/128][cols] at
// scalesT + offsets[g]/128*cols.
//
// One 512-thread block per 128 x 128 tile of x (grid: row tiles x column tiles). Half-warp h (of
// 32) owns rows 4h .. 4h+3 of the tile and lane l of it columns 8l..8l+7: 4 rows x 8 columns per
// thread, held in registers as packed bf16 and never staged in shared memory.
//   loads    each thread issues its 4 16-byte loads at once, before the group lookup (element by
//            element, zeros past the matrix, when cols % 8 != 0 or x is not 16-byte aligned);
//   rows     for each of its 4 rows a half-warp is one 1x128 tile: amax over the half-warp, the
//            scale, codes stored 8 bytes per lane (byte by byte on the scalar path); the 4 row
//            scales are stored by lanes 0..3 in one instruction;
//   col amax each thread keeps the amax of its 8 columns over its 4 rows; lanes l and l^16 and then
//            the 16 warps (through shared memory, [warp][column]) combine them, and threads
//            0..127 make the 128 column scales and store them to scalesT;
//   codes    each thread quantizes its 4 x 8 values column by column (the 4 codes of a column are
//            4 consecutive bytes of qT) into a shared [128 columns][128 rows] code tile; its 4-byte
//            slot in a column is XOR-swizzled by its lane (slot = h ^ 2l), so the 16 lanes of a
//            half-warp and both halves of a warp hit distinct banks;
//   stores   the block writes each column's codes to qT as 8 segments of 16 rows, one 16-byte
//            store each (8-, 4- or 1-byte stores where qT's alignment or a partial tile needs
//            them); undoing the swizzle is a segment index XOR and a swap of 8-byte halves.
// The arithmetic is quant_tile.cuh's (half_warp_max, chunk_amax, fp8_scale_from_amax,
// ScaleDivider, quantize8); amax is exact in any order, so the codes and scales are bit for bit
// those of the CPU reference. bf16 input only (the FP8 recipe's activations).
// Gathered (grouped only): matrix row r is row row_assignment[r] / top_k of x, zeros where
// row_assignment[r] < 0 (as cuda::permute_rows would build the matrix, which is never written).
// Grouped: every group holds a multiple of 128 rows and starts on one (the FP8 permutation's
// padding, kFp8GroupRowAlign), so a tile lies in one group; tiles in no group are skipped (their
// outputs are not written), rows past the tile's group or the matrix count as zeros.
// Argument checks (frugal::Error): negative shapes or group counts, null pointers for a non-empty
// matrix, more than 65535 column tiles; empty shapes (or zero groups) launch nothing.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant.h"
#include "kernels/quant/quant_tile.cuh"

namespace frugal::cuda {
namespace {

using bf16 = __nv_bfloat16;
using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;
using detail::kLanesPerTile;

constexpr int kTile = detail::kTileSide;                // 128 rows x 128 columns per block
constexpr int kRowsPerThread = 4;
constexpr int kRowGroups = kTile / kRowsPerThread;      // half-warps: 32
constexpr int kThreads = kRowGroups * kLanesPerTile;    // 512
constexpr int kWarps = kThreads / 32;                   // 16
constexpr int kSegmentBytes = 16;                       // one global store of transposed codes
constexpr int kSegments = kTile / kSegmentBytes;        // per column: 8
constexpr int kWritesPerThread = kTile * kSegments / kThreads;  // 2
// A thread's 4-byte code slot in column c sits at slot (h ^ (l * kSwizzle)) for half-warp h,
// lane l of the half-warp: the 16 lanes of a half-warp write columns 8 apart (1024 bytes: one bank
// unswizzled) and land on distinct banks, and so do both halves of a warp (h even and odd).
constexpr int kSwizzle = 2;
static_assert(kTile * kSegments % kThreads == 0, "whole segments per thread");

struct DualShared {
  alignas(16) uint8_t codes[kTile * kTile];  // [column][128 row codes, 4-byte slots swizzled]
  alignas(16) float partial_amax[kWarps][kTile];
  alignas(16) float column_scale[kTile];
};

// 8 bf16 values as 4 words, value 2i in the low half of word i (the memory order).
struct Raw8 {
  uint32_t w[4];
};

// Value i of a chunk as fp32 (bf16 -> fp32 is the 16 bits moved up: exact).
__device__ __forceinline__ float raw_value(const Raw8& raw, int i) {
  return __uint_as_float(i % 2 == 0 ? raw.w[i / 2] << 16 : raw.w[i / 2] & 0xFFFF0000u);
}

// raw_value through a byte permute in inline asm (the same bits): the column phase uses it so that
// the compiler cannot share the row phase's widened values with it and keep 8 x 4 floats alive
// instead of the packed words.
__device__ __forceinline__ float raw_value_opaque(const Raw8& raw, int i) {
  uint32_t bits;
  if (i % 2 == 0)
    asm("prmt.b32 %0, %1, 0, 0x1044;" : "=r"(bits) : "r"(raw.w[i / 2]));  // low half moved up
  else
    asm("prmt.b32 %0, %1, 0, 0x3244;" : "=r"(bits) : "r"(raw.w[i / 2]));  // high half kept
  return __uint_as_float(bits);
}

__device__ __forceinline__ Raw8 zero_raw() { return Raw8{{0u, 0u, 0u, 0u}}; }

// The first `valid` (> 0) values at p, zeros after: one 16-byte load when kVector (cols % 8 == 0,
// so a chunk that exists is full, and x 16-byte aligned), else element by element.
template <bool kVector>
__device__ __forceinline__ Raw8 load_raw(const bf16* p, int64_t valid) {
  Raw8 raw;
  if constexpr (kVector) {
    const uint4 word = __ldg(reinterpret_cast<const uint4*>(p));
    raw.w[0] = word.x;
    raw.w[1] = word.y;
    raw.w[2] = word.z;
    raw.w[3] = word.w;
  } else {
    float v[kChunk];
    detail::load_partial(v, p, valid);
#pragma unroll
    for (int i = 0; i < 4; ++i)  // exact: the values are bf16
      raw.w[i] = (__float_as_uint(v[2 * i]) >> 16) | (__float_as_uint(v[2 * i + 1]) & 0xFFFF0000u);
  }
  return raw;
}

// 16 transposed codes (word: rows in memory order) of which the first `count` exist, at `out`.
__device__ __forceinline__ void store_code_segment(uint8_t* out, uint4 word, int count) {
  if (count >= kSegmentBytes) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(out);
    if (address % 16 == 0) {
      *reinterpret_cast<uint4*>(out) = word;
      return;
    }
    if (address % 8 == 0) {
      reinterpret_cast<uint2*>(out)[0] = make_uint2(word.x, word.y);
      reinterpret_cast<uint2*>(out)[1] = make_uint2(word.z, word.w);
      return;
    }
    if (address % 4 == 0) {
      reinterpret_cast<uint32_t*>(out)[0] = word.x;
      reinterpret_cast<uint32_t*>(out)[1] = word.y;
      reinterpret_cast<uint32_t*>(out)[2] = word.z;
      reinterpret_cast<uint32_t*>(out)[3] = word.w;
      return;
    }
  }
  const uint32_t words[4] = {word.x, word.y, word.z, word.w};
#pragma unroll
  for (int b = 0; b < kSegmentBytes; ++b)
    if (b < count) out[b] = static_cast<uint8_t>(words[b / 4] >> (8 * (b % 4)));
}

// q, scales: as quantize_act_1x128(_grouped); qT, scalesT: as transpose_quantize_1x128(_grouped).
// kVector: x rows readable 16 bytes and q rows writable 8 bytes at a time (cols % 8 == 0, x
// 16-byte and q 8-byte aligned). Grid (row tiles, column tiles).
template <bool kVector, bool kGrouped>
__global__ void __launch_bounds__(kThreads, 2)
    dual_quant_kernel(uint8_t* __restrict__ q, float* __restrict__ scales,
                      uint8_t* __restrict__ qT, float* __restrict__ scalesT,
                      const bf16* __restrict__ x, int64_t rows, int64_t cols,
                      const int64_t* __restrict__ offsets, int64_t groups,
                      const int32_t* __restrict__ gather, int64_t top_k,
                      bool power_of_two_scale) {
  __shared__ DualShared sh;
  const int64_t row_tile = blockIdx.x, col_tile = blockIdx.y, tiles = gridDim.y;
  const int64_t row0 = row_tile * kTile, col0 = col_tile * kTile;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int group = threadIdx.x / kLanesPerTile;  // half-warp
  const int chunk = threadIdx.x % kLanesPerTile;
  const int chunk_col = chunk * kChunk;            // within the tile
  const int first = kRowsPerThread * group;        // this thread's first row in the tile
  const int64_t valid = cols - (col0 + chunk_col);  // <= 0 past a partial tile

  // ---- loads: this thread's 4 chunks, zeros past the matrix ----
  Raw8 raw[kRowsPerThread];
#pragma unroll
  for (int p = 0; p < kRowsPerThread; ++p) {
    const int64_t row = row0 + first + p;
    int64_t source = row;  // gathered: row `gather[row] / top_k` of x, none (zeros) if negative
    if (gather != nullptr && row < rows) {
      const int32_t assignment = gather[row];
      source = assignment < 0 ? -1 : assignment / top_k;
    }
    raw[p] = row < rows && source >= 0 && valid > 0
                 ? load_raw<kVector>(x + source * cols + col0 + chunk_col, valid)
                 : zero_raw();
  }
  detail::TransposedTile t;
  if (!detail::transposed_tile<kGrouped>(offsets, groups, rows, row0, kTile, t)) return;
#pragma unroll
  for (int p = 0; p < kRowsPerThread; ++p)  // rows past the tile's group count as zeros
    if (first + p >= t.rows) raw[p] = zero_raw();

  // ---- rows: codes and scales along the columns; column amax over this thread's rows ----
  float column_amax[kChunk];
#pragma unroll
  for (int i = 0; i < kChunk; ++i) column_amax[i] = 0.0f;
  float my_row_scale = 0.0f;  // the scale of row first + chunk (lanes chunk < 4)
#pragma unroll
  for (int p = 0; p < kRowsPerThread; ++p) {
    float v[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = raw_value(raw[p], i);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) column_amax[i] = fmaxf(column_amax[i], fabsf(v[i]));
    const float scale =
        fp8_scale_from_amax(detail::half_warp_max(detail::chunk_amax(v, 0.0f)), power_of_two_scale);
    if (chunk == p) my_row_scale = scale;
    const int r = first + p;
    if (r < t.rows && valid > 0)
      detail::store_codes<kVector>(
          q + (row0 + r) * cols + col0 + chunk_col,
          detail::quantize8(v, detail::ScaleDivider(scale, power_of_two_scale)), valid);
  }
  if (chunk < kRowsPerThread && first + chunk < t.rows) {  // lane `chunk` stores that row's scale
    const int64_t row = row0 + first + chunk;
    scales[t.base * tiles + col_tile * t.group_rows + (row - t.base)] = my_row_scale;
  }

  // ---- columns: amax over the tile's rows -> scales ----
#pragma unroll
  for (int i = 0; i < kChunk; ++i)
    column_amax[i] = fmaxf(column_amax[i], __shfl_xor_sync(0xFFFFFFFFu, column_amax[i], 16));
  if (lane < kLanesPerTile) {
    float4* out = reinterpret_cast<float4*>(&sh.partial_amax[warp][chunk_col]);
    out[0] = make_float4(column_amax[0], column_amax[1], column_amax[2], column_amax[3]);
    out[1] = make_float4(column_amax[4], column_amax[5], column_amax[6], column_amax[7]);
  }
  __syncthreads();
  if (threadIdx.x < kTile) {
    const int c = threadIdx.x;
    float amax = sh.partial_amax[0][c];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) amax = fmaxf(amax, sh.partial_amax[w][c]);
    const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
    sh.column_scale[c] = scale;
    // the group's scalesT [rows_g/128][cols] at scalesT + base/128*cols
    if (col0 + c < cols) scalesT[(t.base / kTile + t.local0 / kTile) * cols + col0 + c] = scale;
  }
  __syncthreads();

  // ---- codes: this thread's 4 codes of each of its 8 columns into the shared code tile ----
  float column_scales[kChunk];
  {
    const float4 a = reinterpret_cast<const float4*>(&sh.column_scale[chunk_col])[0];
    const float4 b = reinterpret_cast<const float4*>(&sh.column_scale[chunk_col])[1];
    column_scales[0] = a.x, column_scales[1] = a.y, column_scales[2] = a.z, column_scales[3] = a.w;
    column_scales[4] = b.x, column_scales[5] = b.y, column_scales[6] = b.z, column_scales[7] = b.w;
  }
  const int slot = group ^ (chunk * kSwizzle);
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    float column[kChunk];  // rows first .. first+3 of column chunk_col + i, zeros after
#pragma unroll
    for (int p = 0; p < kChunk; ++p)
      column[p] = p < kRowsPerThread ? raw_value_opaque(raw[p % kRowsPerThread], i) : 0.0f;
    const uint2 codes =
        detail::quantize8(column, detail::ScaleDivider(column_scales[i], power_of_two_scale));
    *reinterpret_cast<uint32_t*>(&sh.codes[(chunk_col + i) * kTile + slot * kRowsPerThread]) =
        codes.x;
  }
  __syncthreads();

  // ---- stores: each column's codes to qT, 16 rows per store ----
  // Segment k of column c (rows 16k..16k+15, the slots of half-warps 4k..4k+3) is, after the
  // writers' swizzle (slot ^ 2m with m = c/8), the 16 bytes at k ^ (m/2), with its two 8-byte
  // halves swapped when m is odd.
  uint8_t* qT_group = qT + t.base * cols;
#pragma unroll
  for (int j = 0; j < kWritesPerThread; ++j) {
    const int item = static_cast<int>(threadIdx.x) + j * kThreads;
    const int c = item / kSegments, k = item % kSegments;
    const int m = c / kChunk;
    uint4 word =
        *reinterpret_cast<const uint4*>(&sh.codes[c * kTile + kSegmentBytes * (k ^ (m / 2))]);
    if (m % 2 == 1) word = make_uint4(word.z, word.w, word.x, word.y);
    const int count = t.rows - kSegmentBytes * k;
    if (col0 + c < cols && count > 0)
      store_code_segment(qT_group + (col0 + c) * t.group_rows + t.local0 + kSegmentBytes * k, word,
                         count);
  }
}

// Picks the kernel for the alignment and launches it; offsets == nullptr, groups == 0 when plain.
// gather == nullptr: row r of the matrix is row r of x; else row gather[r] / top_k (zeros when
// gather[r] < 0).
template <bool kGrouped>
void launch_dual(uint8_t* q, float* scales, uint8_t* qT, float* scalesT, const bf16* x,
                 const int64_t* offsets, int64_t groups, int64_t rows, int64_t cols,
                 bool power_of_two_scale, cudaStream_t stream, const int32_t* gather = nullptr,
                 int64_t top_k = 1) {
  const int64_t row_tiles = ceil_div(rows, kTile);
  const int64_t col_tiles = ceil_div(cols, kTile);
  FRUGAL_CUDA_REQUIRE(row_tiles <= 0x7FFFFFFF && col_tiles <= 65535,
                      "cuda::quantize_act_1x128_dual: matrix too large for one grid");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
  if (cols % kChunk == 0 && aligned_to(x, 16) && aligned_to(q, 8))
    dual_quant_kernel<true, kGrouped><<<grid, kThreads, 0, stream>>>(
        q, scales, qT, scalesT, x, rows, cols, offsets, groups, gather, top_k, power_of_two_scale);
  else
    dual_quant_kernel<false, kGrouped><<<grid, kThreads, 0, stream>>>(
        q, scales, qT, scalesT, x, rows, cols, offsets, groups, gather, top_k, power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void quantize_act_1x128_dual(uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                             const __nv_bfloat16* x, int64_t rows, int64_t cols,
                             bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::quantize_act_1x128_dual: negative shape");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && qT != nullptr && scalesT != nullptr &&
                          x != nullptr,
                      "cuda::quantize_act_1x128_dual: null pointer");
  launch_dual<false>(q, scales, qT, scalesT, x, nullptr, 0, rows, cols, power_of_two_scale,
                     stream);
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
  launch_dual<true>(q, scales, qT, scalesT, x, offsets, groups, rows, cols, power_of_two_scale,
                    stream);
}

void quantize_act_1x128_dual_grouped_gather(uint8_t* q, float* scales, uint8_t* qT,
                                            float* scalesT, const __nv_bfloat16* x,
                                            const int32_t* row_assignment, int64_t top_k,
                                            const int64_t* offsets, int64_t groups, int64_t rows,
                                            int64_t cols, bool power_of_two_scale,
                                            cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && groups >= 0 && top_k > 0,
                      "cuda::quantize_act_1x128_dual_grouped_gather: negative shape or group "
                      "count, or top_k < 1");
  if (rows == 0 || cols == 0 || groups == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && qT != nullptr && scalesT != nullptr &&
                          x != nullptr && offsets != nullptr && row_assignment != nullptr,
                      "cuda::quantize_act_1x128_dual_grouped_gather: null pointer");
  launch_dual<true>(q, scales, qT, scalesT, x, offsets, groups, rows, cols, power_of_two_scale,
                    stream, row_assignment, top_k);
}

}  // namespace frugal::cuda
