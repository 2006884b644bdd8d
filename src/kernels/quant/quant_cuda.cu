// CUDA FP8 E4M3 quantization (see quant.h for layouts and the exact rule): 1x128 activation tiles
// (plain, grouped per expert, transposed), 128x128 weight blocks (with an optional transposed copy)
// and the activation dequantizer. Bit-identical to the CPU reference: same amax (exact), the same
// fp32 divisions through the shared fp8_scale_from_amax, and the hardware cvt.rn.satfinite.e4m3x2
// that frugal's float_to_e4m3_bits reproduces. bf16 inputs are widened exactly to fp32 first.
//
// Activations [rows, cols]: one half-warp per (tile, row) unit, 8 values per lane (quant_tile.cuh).
// Transposed activations: one 256-thread block per 128 rows x 64 columns of x; the block stages the
//   tile in shared memory as fp32 [128][65] (padded: conflict-free column reads), takes each
//   column's amax, writes the codes column by column into a byte tile, and stores each qT row
//   segment (128 codes) 4 bytes per lane.
// Weights: one 256-thread block per 128x128 block; each thread keeps its 16 rows x 4 columns in
//   registers (one global read), then detail::quantize_weight_block (quant_weight_block.cuh, also
//   used by the AdamW update fused with it) reduces amax, writes q and, for the transposed copy,
//   stages the codes in shared memory [128][132] to write qT 4 bytes per lane.
// Dequantization: elementwise over chunks of 8 codes.
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant.h"
#include "kernels/quant/quant_tile.cuh"
#include "kernels/quant/quant_weight_block.cuh"

namespace frugal::cuda {
namespace {

using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;

constexpr int kThreads = 256;

// Values of x [rows, cols] for act_quant_kernel.
template <class T, bool kVector>
struct MatrixSource {
  const T* x;
  int64_t cols;
  __device__ void load(float (&v)[kChunk], int64_t row, int64_t col, int64_t valid) const {
    detail::load_chunk<kVector>(v, x + row * cols + col, valid);
  }
};

template <class T, bool kGrouped>
void launch_act_quant(uint8_t* q, float* scales, const T* x, const int64_t* offsets, int64_t groups,
                      int64_t rows, int64_t cols, bool power_of_two_scale, cudaStream_t stream) {
  const dim3 blocks = detail::act_quant_grid(rows, cols);
  if (cols % kChunk == 0 && aligned_to(x, 16) && aligned_to(q, 8))
    detail::act_quant_kernel<MatrixSource<T, true>, true, kGrouped>
        <<<blocks, detail::kActQuantThreads, 0, stream>>>(q, scales, MatrixSource<T, true>{x, cols},
                                                          rows, cols, offsets, groups,
                                                          power_of_two_scale);
  else
    detail::act_quant_kernel<MatrixSource<T, false>, false, kGrouped>
        <<<blocks, detail::kActQuantThreads, 0, stream>>>(
            q, scales, MatrixSource<T, false>{x, cols}, rows, cols, offsets, groups,
            power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

// ---- dequantization ----------------------------------------------------------------------------

template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    dequantize_act_kernel(T* __restrict__ x, const uint8_t* __restrict__ q,
                          const float* __restrict__ scales, int64_t rows, int64_t cols) {
  const int64_t chunks_per_row = ceil_div(cols, kChunk);
  const int64_t total = rows * chunks_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t row = i / chunks_per_row;
    const int64_t col = (i % chunks_per_row) * kChunk;
    const int64_t valid = cols - col;
    const float scale = scales[(col / kFp8BlockSize) * rows + row];
    const uint8_t* codes = q + row * cols + col;
    uint8_t c[kChunk];
    if (kVector && valid >= kChunk) {
      const uint2 packed = *reinterpret_cast<const uint2*>(codes);
#pragma unroll
      for (int j = 0; j < kChunk; ++j)
        c[j] = static_cast<uint8_t>((j < 4 ? packed.x : packed.y) >> (8 * (j % 4)));
    } else {
#pragma unroll
      for (int j = 0; j < kChunk; ++j) c[j] = j < valid ? codes[j] : 0;
    }
    float v[kChunk];
#pragma unroll
    for (int j = 0; j < kChunk; ++j) v[j] = detail::e4m3_to_float(c[j]) * scale;
    detail::store_chunk<kVector>(x + row * cols + col, v, valid);
  }
}

// ---- transposed activations --------------------------------------------------------------------

constexpr int kTransposeRows = 128;  // one tile along rows
constexpr int kTransposeCols = 64;

// x [rows, cols] -> per group g (ungrouped: one group of all rows) qT_g [cols, rows_g] at
// qT + base*cols, scales_g [rows_g/128][cols] at scales + base/128*cols. Block (row tile, column
// block). kVector: x rows readable 8 values at a time (cols % 8 == 0, x 16-byte aligned).
template <class T, bool kVector, bool kGrouped>
__global__ void __launch_bounds__(kThreads)
    transpose_quant_kernel(uint8_t* __restrict__ qT, float* __restrict__ scales,
                           const T* __restrict__ x, int64_t rows, int64_t cols,
                           const int64_t* __restrict__ offsets, int64_t groups,
                           bool power_of_two_scale) {
  __shared__ float tile[kTransposeRows][kTransposeCols + 1];
  __shared__ __align__(4) uint8_t codes[kTransposeCols][kTransposeRows + 4];
  __shared__ float partial_amax[kThreads / kTransposeCols][kTransposeCols];
  __shared__ float column_scale[kTransposeCols];

  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTransposeRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTransposeCols;
  detail::TransposedTile t;
  if (!detail::transposed_tile<kGrouped>(offsets, groups, rows, row0, kTransposeRows, t)) return;
  const int64_t base = t.base, group_rows = t.group_rows, local0 = t.local0;
  const int tile_rows = t.rows;
  const int tile_cols = static_cast<int>(detail::min64(kTransposeCols, cols - col0));

  // Stage: thread t reads row t/8 (+32 per pass), columns (t%8)*8 .. +7.
  constexpr int kChunksPerRow = kTransposeCols / kChunk;
  const int stage_col = (threadIdx.x % kChunksPerRow) * kChunk;
  constexpr int kStageRowsPerPass = kThreads / kChunksPerRow;  // 32
#pragma unroll
  for (int pass = 0; pass < kTransposeRows / kStageRowsPerPass; ++pass) {
    const int r = threadIdx.x / kChunksPerRow + pass * kStageRowsPerPass;
    float v[kChunk];
    const int valid = tile_cols - stage_col;
    if (r < tile_rows && valid > 0)
      detail::load_chunk<kVector>(v, x + (row0 + r) * cols + col0 + stage_col, valid);
    else
#pragma unroll
      for (int j = 0; j < kChunk; ++j) v[j] = 0.0f;
#pragma unroll
    for (int j = 0; j < kChunk; ++j) tile[r][stage_col + j] = v[j];
  }
  __syncthreads();

  // Column amax: thread t scans rows (t/64)*32 .. +31 of column t%64.
  {
    const int c = threadIdx.x % kTransposeCols;
    const int part = threadIdx.x / kTransposeCols;
    constexpr int kRowsPerPart = kTransposeRows / (kThreads / kTransposeCols);
    float amax = 0.0f;
    for (int r = part * kRowsPerPart; r < (part + 1) * kRowsPerPart; ++r)
      amax = fmaxf(amax, fabsf(tile[r][c]));
    partial_amax[part][c] = amax;
  }
  __syncthreads();
  if (threadIdx.x < kTransposeCols) {
    const int c = threadIdx.x;
    float amax = partial_amax[0][c];
    for (int part = 1; part < kThreads / kTransposeCols; ++part)
      amax = fmaxf(amax, partial_amax[part][c]);
    const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
    column_scale[c] = scale;
    // scales_g = scales + base/128*cols, [rows_g/128][cols]
    if (c < tile_cols)
      scales[(base / kFp8BlockSize + local0 / kFp8BlockSize) * cols + col0 + c] = scale;
  }
  __syncthreads();

  // Codes: warp w takes columns w, w+8, ...; lane l quantizes rows l, l+32, l+64, l+96 into the
  // byte tile, then stores rows 4l..4l+3 of the column's qT segment.
  const int lane = threadIdx.x % 32;
  uint8_t* qT_group = qT + base * cols;
  const bool word_stores = group_rows % 4 == 0 && local0 % 4 == 0 &&
                           reinterpret_cast<uintptr_t>(qT_group) % 4 == 0;
  for (int c = threadIdx.x / 32; c < tile_cols; c += kThreads / 32) {
    const detail::ScaleDivider divide(column_scale[c], power_of_two_scale);
#pragma unroll
    for (int k = 0; k < kTransposeRows / 32; ++k) {
      const int r = lane + 32 * k;
      codes[c][r] = __nv_cvt_float_to_fp8(divide(tile[r][c]), __NV_SATFINITE, __NV_E4M3);
    }
    __syncwarp();
    detail::store_code_column(qT_group + (col0 + c) * group_rows + local0, codes[c], t,
                              word_stores, lane);
  }
}

// ---- weights -----------------------------------------------------------------------------------

using detail::kWeightPasses;
using detail::kWeightRowsPerPass;
static_assert(detail::kWeightBlockThreads == kThreads, "one 256-thread block per weight block");

// 4 values at p (kVector: 16-byte aligned and all 4 present), zeros past `valid`.
template <bool kVector>
__device__ __forceinline__ void load4(float (&v)[4], const float* p, int64_t valid) {
  if (kVector && valid >= 4) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = i < valid ? p[i] : 0.0f;
  }
}

// Block (column block, row block, matrix) of a stack of matrices w [matrices][rows, cols], loaded
// in the layout of detail::quantize_weight_block and quantized by it. kVector: cols % 4 == 0, w 16-byte aligned and
// q 4-byte aligned. kTranspose also writes qT [cols, rows] and scalesT [col_blocks][row_blocks].
template <bool kVector, bool kTranspose>
__global__ void __launch_bounds__(kThreads)
    quantize_weight_kernel(uint8_t* __restrict__ q, float* __restrict__ scales,
                           uint8_t* __restrict__ qT, float* __restrict__ scalesT,
                           const float* __restrict__ w, int64_t rows, int64_t cols,
                           bool power_of_two_scale) {
  // Matrix blockIdx.z of a stack: every array advances by one matrix.
  const int64_t matrix = static_cast<int64_t>(blockIdx.z);
  const int64_t matrix_blocks = static_cast<int64_t>(gridDim.x) * gridDim.y;
  w += matrix * rows * cols;
  q += matrix * rows * cols;
  scales += matrix * matrix_blocks;
  if (kTranspose) {
    qT += matrix * rows * cols;
    scalesT += matrix * matrix_blocks;
  }
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kFp8BlockSize;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kFp8BlockSize;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t col = col0 + lane * 4;
  const int64_t valid = cols - col;  // <= 0 for lanes past the end of a partial block
  const int block_rows = static_cast<int>(detail::min64(kFp8BlockSize, rows - row0));
  const int block_cols = static_cast<int>(detail::min64(kFp8BlockSize, cols - col0));

  float v[kWeightPasses][4];
#pragma unroll
  for (int k = 0; k < kWeightPasses; ++k) {
    const int r = warp + kWeightRowsPerPass * k;
    if (r < block_rows && valid > 0) {
      load4<kVector>(v[k], w + (row0 + r) * cols + col, valid);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) v[k][i] = 0.0f;
    }
  }
  float* scale = scales + static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  float* scale_transposed =
      kTranspose ? scalesT + static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y : nullptr;
  uint8_t* block_qT = kTranspose ? qT + col0 * rows + row0 : nullptr;
  detail::quantize_weight_block<kVector, kTranspose>(v, q + row0 * cols + col0, cols, scale,
                                                     block_qT, rows, scale_transposed, block_rows,
                                                     block_cols, power_of_two_scale);
}

template <bool kTranspose>
void launch_weight_quant(uint8_t* q, float* scales, uint8_t* qT, float* scalesT, const float* w,
                         int64_t matrices, int64_t rows, int64_t cols, bool power_of_two_scale,
                         cudaStream_t stream) {
  const int64_t row_blocks = fp8_block_count(rows);
  const int64_t col_blocks = fp8_block_count(cols);
  FRUGAL_CUDA_REQUIRE(row_blocks <= 65535 && col_blocks <= 0x7FFFFFFF && matrices <= 65535,
                      "cuda::quantize_weight_128x128: weight too large for one grid");
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && w != nullptr,
                      "cuda::quantize_weight_128x128: null pointer");
  if (kTranspose)
    FRUGAL_CUDA_REQUIRE(qT != nullptr && scalesT != nullptr,
                        "cuda::quantize_weight_128x128_with_transpose: null transposed output");
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks),
                  static_cast<unsigned>(matrices));
  // The vector path: every matrix's rows start 16-byte aligned (w) and 4-byte aligned (q).
  if (cols % 4 == 0 && aligned_to(w, 16) && aligned_to(q, 4))
    quantize_weight_kernel<true, kTranspose><<<grid, kThreads, 0, stream>>>(
        q, scales, qT, scalesT, w, rows, cols, power_of_two_scale);
  else
    quantize_weight_kernel<false, kTranspose><<<grid, kThreads, 0, stream>>>(
        q, scales, qT, scalesT, w, rows, cols, power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T, bool kGrouped>
void launch_transpose_quant(uint8_t* qT, float* scales, const T* x, const int64_t* offsets,
                            int64_t groups, int64_t rows, int64_t cols, bool power_of_two_scale,
                            cudaStream_t stream) {
  const int64_t row_tiles = ceil_div(rows, kTransposeRows);
  const int64_t col_blocks = ceil_div(cols, kTransposeCols);
  FRUGAL_CUDA_REQUIRE(row_tiles <= 0x7FFFFFFF && col_blocks <= 65535,
                      "cuda::transpose_quantize_1x128: matrix too large for one grid");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_blocks));
  if (cols % kChunk == 0 && aligned_to(x, 16))
    transpose_quant_kernel<T, true, kGrouped><<<grid, kThreads, 0, stream>>>(
        qT, scales, x, rows, cols, offsets, groups, power_of_two_scale);
  else
    transpose_quant_kernel<T, false, kGrouped><<<grid, kThreads, 0, stream>>>(
        qT, scales, x, rows, cols, offsets, groups, power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void quantize_act_1x128(uint8_t* q, float* scales, const T* x, int64_t rows, int64_t cols,
                        bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::quantize_act_1x128: negative shape");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && x != nullptr,
                      "cuda::quantize_act_1x128: null pointer");
  launch_act_quant<T, false>(q, scales, x, nullptr, 0, rows, cols, power_of_two_scale, stream);
}

template <class T>
void quantize_act_1x128_grouped(uint8_t* q, float* scales, const T* x, const int64_t* offsets,
                                int64_t groups, int64_t rows, int64_t cols,
                                bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && groups >= 0,
                      "cuda::quantize_act_1x128_grouped: negative shape or group count");
  if (rows == 0 || cols == 0 || groups == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && x != nullptr && offsets != nullptr,
                      "cuda::quantize_act_1x128_grouped: null pointer");
  launch_act_quant<T, true>(q, scales, x, offsets, groups, rows, cols, power_of_two_scale, stream);
}

template <class T>
void dequantize_act_1x128(T* x, const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                          cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::dequantize_act_1x128: negative shape");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && x != nullptr,
                      "cuda::dequantize_act_1x128: null pointer");
  const int64_t chunks = rows * ceil_div(cols, kChunk);
  const unsigned blocks = detail::grid_stride_blocks(chunks, kThreads);
  if (cols % kChunk == 0 && aligned_to(q, 8) && aligned_to(x, 16))
    dequantize_act_kernel<T, true><<<blocks, kThreads, 0, stream>>>(x, q, scales, rows, cols);
  else
    dequantize_act_kernel<T, false><<<blocks, kThreads, 0, stream>>>(x, q, scales, rows, cols);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void quantize_weight_128x128(uint8_t* q, float* scales, const float* w, int64_t rows, int64_t cols,
                             bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::quantize_weight_128x128: negative shape");
  if (rows == 0 || cols == 0) return;
  launch_weight_quant<false>(q, scales, nullptr, nullptr, w, 1, rows, cols, power_of_two_scale,
                             stream);
}

void quantize_weight_128x128_with_transpose(uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                                            const float* w, int64_t rows, int64_t cols,
                                            bool power_of_two_scale, cudaStream_t stream) {
  quantize_weights_128x128_with_transpose(q, scales, qT, scalesT, w, 1, rows, cols,
                                          power_of_two_scale, stream);
}

void quantize_weights_128x128_with_transpose(uint8_t* q, float* scales, uint8_t* qT,
                                             float* scalesT, const float* w, int64_t matrices,
                                             int64_t rows, int64_t cols, bool power_of_two_scale,
                                             cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(matrices >= 0 && rows >= 0 && cols >= 0,
                      "cuda::quantize_weight_128x128_with_transpose: negative shape");
  if (matrices == 0 || rows == 0 || cols == 0) return;
  launch_weight_quant<true>(q, scales, qT, scalesT, w, matrices, rows, cols, power_of_two_scale,
                            stream);
}

template <class T>
void transpose_quantize_1x128(uint8_t* qT, float* scales, const T* x, int64_t rows, int64_t cols,
                              bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::transpose_quantize_1x128: negative shape");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(qT != nullptr && scales != nullptr && x != nullptr,
                      "cuda::transpose_quantize_1x128: null pointer");
  launch_transpose_quant<T, false>(qT, scales, x, nullptr, 0, rows, cols, power_of_two_scale,
                                   stream);
}

template <class T>
void transpose_quantize_1x128_grouped(uint8_t* qT, float* scales, const T* x,
                                      const int64_t* offsets, int64_t groups, int64_t rows,
                                      int64_t cols, bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && groups >= 0,
                      "cuda::transpose_quantize_1x128_grouped: negative shape or group count");
  if (rows == 0 || cols == 0 || groups == 0) return;
  FRUGAL_CUDA_REQUIRE(qT != nullptr && scales != nullptr && x != nullptr && offsets != nullptr,
                      "cuda::transpose_quantize_1x128_grouped: null pointer");
  launch_transpose_quant<T, true>(qT, scales, x, offsets, groups, rows, cols, power_of_two_scale,
                                  stream);
}

#define FRUGAL_INSTANTIATE_QUANT(T)                                                                \
  template void quantize_act_1x128<T>(uint8_t*, float*, const T*, int64_t, int64_t, bool,         \
                                      cudaStream_t);                                               \
  template void quantize_act_1x128_grouped<T>(uint8_t*, float*, const T*, const int64_t*, int64_t, \
                                              int64_t, int64_t, bool, cudaStream_t);               \
  template void dequantize_act_1x128<T>(T*, const uint8_t*, const float*, int64_t, int64_t,       \
                                        cudaStream_t);                                             \
  template void transpose_quantize_1x128<T>(uint8_t*, float*, const T*, int64_t, int64_t, bool,   \
                                            cudaStream_t);                                         \
  template void transpose_quantize_1x128_grouped<T>(uint8_t*, float*, const T*, const int64_t*,   \
                                                    int64_t, int64_t, int64_t, bool, cudaStream_t);
FRUGAL_INSTANTIATE_QUANT(float)
FRUGAL_INSTANTIATE_QUANT(__nv_bfloat16)
#undef FRUGAL_INSTANTIATE_QUANT

}  // namespace frugal::cuda
