// Variants 1..3 of the one-pass dual 1x128 FP8 activation quantizer (quant_dual_variant.h): the
// same codes and scales as variant 0 (quant_dual_cuda.cu), from x [rows, cols] bf16:
//   q [rows, cols], scales [ceil(cols/128)][rows]             (1x128 tiles along the columns)
//   qT [cols, rows], scalesT [ceil(rows/128)][cols]            (1x128 tiles along the rows)
// grouped: group g's scales at scales + offsets[g]*tiles as [tiles][rows_g], its qT_g
// [cols, rows_g] at qT + offsets[g]*cols and scalesT [rows_g/128][cols] at
// scalesT + offsets[g]/128*cols.
//
// A block quantizes a 128 x 128 tile of x held in registers (variants 1 and 2: loaded straight
// there, never staged in shared memory): half-warp h (of 128/R) owns rows R*h .. R*h+R-1 of the
// tile and lane l of it columns 8l..8l+7, so each thread issues its R 16-byte loads at once (all
// before the group lookup).
//   rows     for each of its R rows a half-warp is one 1x128 tile: amax over the half-warp, codes
//            stored 8 bytes per lane, the R row scales stored by lanes 0..R-1 in one instruction;
//   columns  each thread keeps the amax of its 8 columns over its R rows; lanes l and l^16 and
//            then the warps (through shared memory) combine them into the 128 column scales;
//            each thread then quantizes its R x 8 values column by column (R codes of a column are
//            R consecutive bytes of qT) into a shared [128 columns][128 rows] code tile, its
//            R-byte slots XOR-swizzled by the writer's lane so the stores are conflict-free;
//            then the block writes each column's 128 codes as eight 16-byte stores.
// The arithmetic is quant_tile.cuh's (half_warp_max, chunk_amax, fp8_scale_from_amax,
// ScaleDivider, quantize8); amax is exact in any order, so the codes and scales are bit for bit
// those of variant 0 and of the CPU reference.
//   variant 1: R = 8, 256 threads, one tile per block (grid: row tiles x column tiles)
//   variant 2: R = 4, 512 threads, one tile per block (half the serial work per thread)
//   variant 3: R = 4, 512 threads, persistent: a grid of the blocks that fit at once (2 per SM),
//              each walking tiles id, id + grid, ...; the values pass through two shared-memory
//              stages filled by cp.async, the next tile's copies issued before the current tile
//              is quantized (loads always in flight, 32 warps per SM, registers as variant 2).
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/attention/sm90_flash_common.cuh"  // cp.async
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

constexpr int kTile = detail::kTileSide;  // 128
constexpr int kSegmentBytes = 16;         // one global store of transposed codes
constexpr int kSegments = kTile / kSegmentBytes;

// The thread layout of a tile of which each thread owns kRows rows x 8 columns.
template <int kRowsPerThread>
struct DualLayout {
  static constexpr int kRows = kRowsPerThread;
  static constexpr int kRowGroups = kTile / kRows;  // half-warps
  static constexpr int kThreads = kRowGroups * kLanesPerTile;
  static constexpr int kWarps = kThreads / 32;
  // A thread's code slot (kRows bytes) of column c sits at slot (group ^ (lane16 * kSwizzle)):
  // the 16 lanes of a half-warp (one column each) hit distinct banks, and so do both halves of a
  // warp when the slots are 4 bytes.
  static constexpr int kSwizzle = 8 / kRows;
  static constexpr int kWritesPerThread = kTile * kSegments / kThreads;
  static_assert(kRows == 4 || kRows == 8, "slots of 4 or 8 bytes");
  static_assert(kTile * kSegments % kThreads == 0, "whole segments per thread");
};

template <int kRows>
struct DualShared {
  alignas(16) uint8_t codes[kTile * kTile];  // [column][128 row codes, slots swizzled]
  alignas(16) float partial_amax[DualLayout<kRows>::kWarps][kTile];
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
// the compiler cannot share the row phase's widened values with it and keep 8 x kRows floats alive
// instead of the packed words.
__device__ __forceinline__ float raw_value_opaque(const Raw8& raw, int i) {
  uint32_t bits;
  if (i % 2 == 0)
    asm("prmt.b32 %0, %1, 0, 0x1044;" : "=r"(bits) : "r"(raw.w[i / 2]));  // low half moved up
  else
    asm("prmt.b32 %0, %1, 0, 0x3244;" : "=r"(bits) : "r"(raw.w[i / 2]));  // high half kept
  return __uint_as_float(bits);
}

__device__ __forceinline__ void unpack(const Raw8& raw, float (&v)[kChunk]) {
#pragma unroll
  for (int i = 0; i < kChunk; ++i) v[i] = raw_value(raw, i);
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

// This thread's kRows chunks of the tile at (row0, col0); zeros past the matrix.
template <int kRows, bool kVector>
__device__ __forceinline__ void load_tile(Raw8 (&raw)[kRows], const bf16* __restrict__ x,
                                          int64_t rows, int64_t cols, int64_t row0,
                                          int64_t col0) {
  const int first = kRows * static_cast<int>(threadIdx.x / kLanesPerTile);
  const int64_t col = col0 + (threadIdx.x % kLanesPerTile) * kChunk;
  const int64_t valid = cols - col;
#pragma unroll
  for (int p = 0; p < kRows; ++p) {
    const int64_t row = row0 + first + p;
    raw[p] = row < rows && valid > 0 ? load_raw<kVector>(x + row * cols + col, valid) : zero_raw();
  }
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

// Everything about one tile once this thread's values are in `raw` (rows past the tile's group
// are zeroed here). Block-uniform: every thread calls it for the same tile. Returns without
// writing when the tile lies in no group. Ends after the last read of `sh` that a following call's
// writes could disturb is fenced by its own barriers (see the comments), so calls may follow each
// other without another barrier.
template <int kRows, bool kVector, bool kGrouped>
__device__ __forceinline__ void quantize_tile(DualShared<kRows>& sh, Raw8 (&raw)[kRows],
                                              int64_t row_tile, int64_t col_tile, int64_t tiles,
                                              uint8_t* __restrict__ q, float* __restrict__ scales,
                                              uint8_t* __restrict__ qT,
                                              float* __restrict__ scalesT, int64_t rows,
                                              int64_t cols, const int64_t* __restrict__ offsets,
                                              int64_t groups, bool power_of_two_scale) {
  using Layout = DualLayout<kRows>;
  const int64_t row0 = row_tile * kTile, col0 = col_tile * kTile;
  detail::TransposedTile t;
  if (!detail::transposed_tile<kGrouped>(offsets, groups, rows, row0, kTile, t)) return;

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int group = threadIdx.x / kLanesPerTile;
  const int chunk = threadIdx.x % kLanesPerTile;
  const int chunk_col = chunk * kChunk;
  const int first = kRows * group;  // this thread's first row in the tile
  const int64_t valid = cols - (col0 + chunk_col);
#pragma unroll
  for (int p = 0; p < kRows; ++p)
    if (first + p >= t.rows) raw[p] = zero_raw();

  // ---- rows: codes and scales along the columns; column amax over this thread's rows ----
  float column_amax[kChunk];
#pragma unroll
  for (int i = 0; i < kChunk; ++i) column_amax[i] = 0.0f;
  float my_row_scale = 0.0f;  // the scale of row first + chunk (lanes chunk < kRows)
#pragma unroll
  for (int p = 0; p < kRows; ++p) {
    float v[kChunk];
    unpack(raw[p], v);
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
  if (chunk < kRows && first + chunk < t.rows) {  // lane `chunk` stores row first + chunk's scale
    const int64_t row = row0 + first + chunk;
    scales[t.base * tiles + col_tile * t.group_rows + (row - t.base)] = my_row_scale;
  }

  // ---- columns: amax over the tile's rows -> scales ----
#pragma unroll
  for (int i = 0; i < kChunk; ++i)
    column_amax[i] = fmaxf(column_amax[i], __shfl_xor_sync(0xFFFFFFFFu, column_amax[i], 16));
  // (the previous tile's reads of partial_amax ended before its second barrier)
  if (lane < kLanesPerTile) {
    float4* out = reinterpret_cast<float4*>(&sh.partial_amax[warp][chunk_col]);
    out[0] = make_float4(column_amax[0], column_amax[1], column_amax[2], column_amax[3]);
    out[1] = make_float4(column_amax[4], column_amax[5], column_amax[6], column_amax[7]);
  }
  __syncthreads();
  // (the previous tile's reads of column_scale ended before its third barrier)
  if (threadIdx.x < kTile) {
    const int c = threadIdx.x;
    float amax = sh.partial_amax[0][c];
#pragma unroll
    for (int w = 1; w < Layout::kWarps; ++w) amax = fmaxf(amax, sh.partial_amax[w][c]);
    const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
    sh.column_scale[c] = scale;
    if (col0 + c < cols) scalesT[(t.base / kTile + t.local0 / kTile) * cols + col0 + c] = scale;
  }
  __syncthreads();

  // ---- columns: this thread's kRows codes of each of its 8 columns into the shared code tile ----
  // (the previous tile's reads of codes ended before this tile's first barrier)
  float column_scales[kChunk];
  {
    const float4 a = reinterpret_cast<const float4*>(&sh.column_scale[chunk_col])[0];
    const float4 b = reinterpret_cast<const float4*>(&sh.column_scale[chunk_col])[1];
    column_scales[0] = a.x, column_scales[1] = a.y, column_scales[2] = a.z, column_scales[3] = a.w;
    column_scales[4] = b.x, column_scales[5] = b.y, column_scales[6] = b.z, column_scales[7] = b.w;
  }
  const int slot = group ^ (chunk * Layout::kSwizzle);
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    float column[kChunk];  // rows first .. first+kRows-1 of column chunk_col + i (zeros after)
#pragma unroll
    for (int p = 0; p < kChunk; ++p)
      column[p] = p < kRows ? raw_value_opaque(raw[p % kRows], i) : 0.0f;
    const uint2 codes =
        detail::quantize8(column, detail::ScaleDivider(column_scales[i], power_of_two_scale));
    uint8_t* at = &sh.codes[(chunk_col + i) * kTile + slot * kRows];
    if constexpr (kRows == 8)
      *reinterpret_cast<uint2*>(at) = codes;
    else
      *reinterpret_cast<uint32_t*>(at) = codes.x;
  }
  __syncthreads();

  // ---- columns: each column's codes to qT, 16 rows per store ----
  // Segment k of column c (rows 16k..16k+15) is, after the writers' swizzle (slot ^ m*kSwizzle with
  // m = c/8), the 16 bytes at k ^ (m/2), with its two 8-byte halves swapped when m is odd.
  uint8_t* qT_group = qT + t.base * cols;
#pragma unroll
  for (int j = 0; j < Layout::kWritesPerThread; ++j) {
    const int item = static_cast<int>(threadIdx.x) + j * Layout::kThreads;
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

// Variants 1 and 2: one tile per block, grid (row tiles, column tiles).
template <int kRows, bool kVector, bool kGrouped>
__global__ void __launch_bounds__(DualLayout<kRows>::kThreads, kRows == 8 ? 3 : 2)
    dual_tile_kernel(uint8_t* __restrict__ q, float* __restrict__ scales,
                     uint8_t* __restrict__ qT, float* __restrict__ scalesT,
                     const bf16* __restrict__ x, int64_t rows, int64_t cols,
                     const int64_t* __restrict__ offsets, int64_t groups,
                     bool power_of_two_scale) {
  __shared__ DualShared<kRows> sh;
  Raw8 raw[kRows];
  load_tile<kRows, kVector>(raw, x, rows, cols, static_cast<int64_t>(blockIdx.x) * kTile,
                            static_cast<int64_t>(blockIdx.y) * kTile);
  quantize_tile<kRows, kVector, kGrouped>(sh, raw, blockIdx.x, blockIdx.y, gridDim.y, q, scales,
                                          qT, scalesT, rows, cols, offsets, groups,
                                          power_of_two_scale);
}

// Variant 3: persistent blocks of kPersistentRows-row threads over tile ids (row tile * col_tiles
// + column tile). A tile's values go through shared memory, two stages: the next tile's copies
// (cp.async, 16 bytes each; plain loads on the scalar path) are issued before the current tile is
// quantized. A thread reads back only the chunks it copied itself ([stage][p][thread]: 16-byte
// reads without conflicts), so waiting on its own copies is enough.
constexpr int kPersistentRows = 4;
using PersistentLayout = DualLayout<kPersistentRows>;
constexpr int kStageChunks = kPersistentRows * PersistentLayout::kThreads;  // uint4 per stage
constexpr size_t kPersistentShared =
    sizeof(DualShared<kPersistentRows>) + 2 * kStageChunks * sizeof(uint4);
static_assert(sizeof(DualShared<kPersistentRows>) % 16 == 0, "stages 16-byte aligned");

// Issues this thread's copies of the tile at (row0, col0) into `stage` ([p][thread] chunks);
// zeros past the matrix.
template <bool kVector>
__device__ __forceinline__ void stage_tile(uint4* stage, const bf16* __restrict__ x, int64_t rows,
                                           int64_t cols, int64_t row0, int64_t col0) {
  const int first = kPersistentRows * static_cast<int>(threadIdx.x / kLanesPerTile);
  const int64_t col = col0 + (threadIdx.x % kLanesPerTile) * kChunk;
  const int64_t valid = cols - col;
#pragma unroll
  for (int p = 0; p < kPersistentRows; ++p) {
    const int64_t row = row0 + first + p;
    const bool present = row < rows && valid > 0;
    uint4* at = &stage[p * PersistentLayout::kThreads + threadIdx.x];
    if constexpr (kVector) {  // a present chunk is full and 16-byte aligned
      flash::sm90::cp_async_16(flash::sm90::shared_address(at), present ? x + row * cols + col : x,
                               present);
    } else {
      const Raw8 raw = present ? load_raw<false>(x + row * cols + col, valid) : zero_raw();
      *at = make_uint4(raw.w[0], raw.w[1], raw.w[2], raw.w[3]);
    }
  }
}

template <bool kVector, bool kGrouped>
__global__ void __launch_bounds__(PersistentLayout::kThreads, 2)
    dual_persistent_kernel(uint8_t* __restrict__ q, float* __restrict__ scales,
                           uint8_t* __restrict__ qT, float* __restrict__ scalesT,
                           const bf16* __restrict__ x, int64_t rows, int64_t cols,
                           int col_tiles, int total_tiles,
                           const int64_t* __restrict__ offsets, int64_t groups,
                           bool power_of_two_scale) {
  extern __shared__ __align__(16) uint8_t dynamic_shared[];
  auto& sh = *reinterpret_cast<DualShared<kPersistentRows>*>(dynamic_shared);
  uint4* stages = reinterpret_cast<uint4*>(dynamic_shared + sizeof(DualShared<kPersistentRows>));
  int id = static_cast<int>(blockIdx.x);
  if (id >= total_tiles) return;
  stage_tile<kVector>(stages, x, rows, cols, int64_t{id / col_tiles} * kTile,
                      int64_t{id % col_tiles} * kTile);
  flash::sm90::cp_async_commit();
  for (int stage = 0; id < total_tiles; id += static_cast<int>(gridDim.x), stage ^= 1) {
    const int next = id + static_cast<int>(gridDim.x);  // < 2^31: total_tiles + grid is checked
    if (next < total_tiles)  // into the other stage, which this thread finished reading last tile
      stage_tile<kVector>(stages + (stage ^ 1) * kStageChunks, x, rows, cols,
                          int64_t{next / col_tiles} * kTile, int64_t{next % col_tiles} * kTile);
    flash::sm90::cp_async_commit();
    flash::sm90::cp_async_wait<1>();  // this tile's copies have landed
    Raw8 raw[kPersistentRows];
#pragma unroll
    for (int p = 0; p < kPersistentRows; ++p) {
      const uint4 word =
          stages[stage * kStageChunks + p * PersistentLayout::kThreads + threadIdx.x];
      raw[p] = Raw8{{word.x, word.y, word.z, word.w}};
    }
    quantize_tile<kPersistentRows, kVector, kGrouped>(sh, raw, id / col_tiles, id % col_tiles,
                                                      col_tiles, q, scales, qT, scalesT, rows,
                                                      cols, offsets, groups, power_of_two_scale);
  }
}

// Blocks of `kernel` (threads each, `shared` bytes of dynamic shared memory, which it is allowed
// here) resident on one SM, times the SMs: variant 3's grid. Queried once per kernel (one device
// model per process is assumed).
template <class Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t shared) {
  static const int64_t blocks = [&] {
    int device = 0, sms = 0, per_sm = 0;
    FRUGAL_CUDA_CHECK(cudaGetDevice(&device));
    FRUGAL_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared)));
    FRUGAL_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared));
    FRUGAL_CUDA_REQUIRE(per_sm > 0, "cuda::quantize_act_1x128_dual: kernel cannot be resident");
    return static_cast<int64_t>(sms) * per_sm;
  }();
  return blocks;
}

template <bool kVector, bool kGrouped>
void launch_variant(int variant, uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                    const bf16* x, const int64_t* offsets, int64_t groups, int64_t rows,
                    int64_t cols, bool power_of_two_scale, cudaStream_t stream) {
  const int64_t row_tiles = ceil_div(rows, kTile);
  const int64_t col_tiles = ceil_div(cols, kTile);
  FRUGAL_CUDA_REQUIRE(row_tiles <= 0x7FFFFFFF && col_tiles <= 65535,
                      "cuda::quantize_act_1x128_dual: matrix too large for one grid");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
  if (variant == 1) {
    dual_tile_kernel<8, kVector, kGrouped><<<grid, DualLayout<8>::kThreads, 0, stream>>>(
        q, scales, qT, scalesT, x, rows, cols, offsets, groups, power_of_two_scale);
  } else if (variant == 2) {
    dual_tile_kernel<4, kVector, kGrouped><<<grid, DualLayout<4>::kThreads, 0, stream>>>(
        q, scales, qT, scalesT, x, rows, cols, offsets, groups, power_of_two_scale);
  } else {
    FRUGAL_CUDA_REQUIRE(variant == 3, "cuda::quantize_act_1x128_dual: unknown kernel variant");
    const int64_t total = row_tiles * col_tiles;
    const int threads = PersistentLayout::kThreads;
    const int64_t blocks = detail::min64(
        total, resident_blocks(dual_persistent_kernel<kVector, kGrouped>, threads,
                               kPersistentShared));
    FRUGAL_CUDA_REQUIRE(total + blocks <= 0x7FFFFFFF,
                        "cuda::quantize_act_1x128_dual: too many tiles for variant 3");
    dual_persistent_kernel<kVector, kGrouped>
        <<<static_cast<unsigned>(blocks), threads, kPersistentShared, stream>>>(
            q, scales, qT, scalesT, x, rows, cols, static_cast<int>(col_tiles),
            static_cast<int>(total), offsets, groups, power_of_two_scale);
  }
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace detail {

void launch_dual_quant_fast(int variant, uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                            const bf16* x, const int64_t* offsets, int64_t groups, int64_t rows,
                            int64_t cols, bool power_of_two_scale, cudaStream_t stream) {
  const bool vector = cols % kChunk == 0 && aligned_to(x, 16) && aligned_to(q, 8);
  const bool grouped = offsets != nullptr;
  if (vector && grouped)
    launch_variant<true, true>(variant, q, scales, qT, scalesT, x, offsets, groups, rows, cols,
                               power_of_two_scale, stream);
  else if (vector)
    launch_variant<true, false>(variant, q, scales, qT, scalesT, x, offsets, groups, rows, cols,
                                power_of_two_scale, stream);
  else if (grouped)
    launch_variant<false, true>(variant, q, scales, qT, scalesT, x, offsets, groups, rows, cols,
                                power_of_two_scale, stream);
  else
    launch_variant<false, false>(variant, q, scales, qT, scalesT, x, offsets, groups, rows, cols,
                                 power_of_two_scale, stream);
}

}  // namespace detail
}  // namespace frugal::cuda
