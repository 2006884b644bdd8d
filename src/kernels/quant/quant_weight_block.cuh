// Device side of the FP8 128x128 weight-block quantizer, shared by quantize_weight_128x128(_with_
// transpose) (quant_cuda.cu) and the AdamW update fused with it (adamw_fp8_cuda.cu), so both make
// the same codes and scales as cpu::quantize_weight_128x128 (see quant.h for the rule).
//
// A 256-thread block owns one 128x128 block of w [rows, cols]: lane l of warp k holds columns
// 4l..4l+3 of rows k, k+8, ..., k+120 of the block in registers (v[pass][i], zeros outside the
// matrix). The block reduces amax (fmaxf: exact in any order), takes fp8_scale_from_amax, writes
// the codes row by row (4 bytes per lane) and, for the transposed copy, stages them in shared
// memory [128][132] to write qT (column c of the block = row c of qT) 4 bytes per lane.
// Only for .cu files (nvcc).
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant.h"
#include "kernels/quant/quant_tile.cuh"

namespace frugal::cuda::detail {

constexpr int kWeightBlockThreads = 256;
constexpr int kWeightRowsPerPass = kWeightBlockThreads / 32;      // a warp per row of 128
constexpr int kWeightPasses = kFp8BlockSize / kWeightRowsPerPass;  // 16 rows per thread

// Quantizes the block whose values this thread holds in v (layout above) and stores it.
//   q         the block's first code: element (r, c) of the block at q[r * q_stride + c]
//   scale     where the block's scale goes (written by thread 0); scale_transposed likewise
//   qT        (kTranspose) the transposed block's first code: element (r, c) at
//             qT[c * qT_stride + r]
//   block_rows, block_cols: the block's extent inside the matrix (1..128)
//   kVector:  q 4-byte aligned, q_stride % 4 == 0 and block_cols == 128 or the lane's 4 columns
//             complete (the caller's choice, as for its loads)
// Every thread of the block must call it (it synchronizes the block).
template <bool kVector, bool kTranspose>
__device__ __forceinline__ void quantize_weight_block(const float (&v)[kWeightPasses][4],
                                                      uint8_t* __restrict__ q, int64_t q_stride,
                                                      float* scale, uint8_t* __restrict__ qT,
                                                      int64_t qT_stride, float* scale_transposed,
                                                      int block_rows, int block_cols,
                                                      bool power_of_two_scale) {
  __shared__ float warp_amax[kWeightRowsPerPass];
  __shared__ float block_scale;
  __shared__ __align__(4) uint8_t codes[kTranspose ? kFp8BlockSize : 1][kFp8BlockSize + 4];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int col = lane * 4;                 // the lane's first column inside the block
  const int valid = block_cols - col;       // <= 0 for lanes past the end of a partial block

  float amax = 0.0f;
#pragma unroll
  for (int k = 0; k < kWeightPasses; ++k)
#pragma unroll
    for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[k][i]));
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, offset));
  if (lane == 0) warp_amax[warp] = amax;
  __syncthreads();
  if (threadIdx.x == 0) {
    float block_amax = warp_amax[0];
    for (int i = 1; i < kWeightRowsPerPass; ++i) block_amax = fmaxf(block_amax, warp_amax[i]);
    const float s = fp8_scale_from_amax(block_amax, power_of_two_scale);
    block_scale = s;
    *scale = s;
    if (kTranspose) *scale_transposed = s;
  }
  __syncthreads();
  const ScaleDivider divide(block_scale, power_of_two_scale);

#pragma unroll
  for (int k = 0; k < kWeightPasses; ++k) {
    const int r = warp + kWeightRowsPerPass * k;
    if (r >= block_rows || valid <= 0) continue;
    const float2 low = make_float2(divide(v[k][0]), divide(v[k][1]));
    const float2 high = make_float2(divide(v[k][2]), divide(v[k][3]));
    const uint32_t packed =
        static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(low, __NV_SATFINITE, __NV_E4M3)) |
        (static_cast<uint32_t>(__nv_cvt_float2_to_fp8x2(high, __NV_SATFINITE, __NV_E4M3)) << 16);
    uint8_t* out = q + r * q_stride + col;
    if (kVector && valid >= 4) {
      *reinterpret_cast<uint32_t*>(out) = packed;
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (i < valid) out[i] = static_cast<uint8_t>(packed >> (8 * i));
    }
    if (kTranspose) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (i < valid) codes[col + i][r] = static_cast<uint8_t>(packed >> (8 * i));
    }
  }
  if (!kTranspose) return;
  __syncthreads();
  // qT row c (of the block) holds the block's column c: rows 0 .. block_rows - 1.
  const bool word_stores = qT_stride % 4 == 0 && reinterpret_cast<uintptr_t>(qT) % 4 == 0;
  for (int c = warp; c < block_cols; c += kWeightRowsPerPass) {
    const int r = 4 * lane;
    if (r >= block_rows) continue;
    const uint32_t word = *reinterpret_cast<const uint32_t*>(&codes[c][r]);
    uint8_t* out = qT + c * qT_stride + r;
    if (word_stores && r + 4 <= block_rows) {
      *reinterpret_cast<uint32_t*>(out) = word;
    } else {
      for (int j = 0; j < 4 && r + j < block_rows; ++j)
        out[j] = static_cast<uint8_t>(word >> (8 * j));
    }
  }
  // The shared slots are reused by the block's next call: everyone is done with them.
  __syncthreads();
}

}  // namespace frugal::cuda::detail
