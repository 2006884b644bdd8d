// FP8 E4M3 quantization with fine-grained scales (spec §4.1, DeepSeek-V3 recipe).
//
// Activations, 1x128 tiles along K:   x [rows, cols] fp32 row-major (rows = tokens, cols = K)
//   q      [rows, cols]                 E4M3 codes (uint8, e4m3fn)
//   scales [ceil(cols/128), rows]       fp32, rows fastest: the layout cuBLASLt's
//                                       CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F reads for B
// Weights, 128x128 blocks:            w [rows, cols] fp32 row-major (rows = N outputs, cols = K)
//   q      [rows, cols]                 E4M3 codes
//   scales [ceil(rows/128), ceil(cols/128)]   fp32, K-blocks fastest (cuBLASLt's BLK128x128_32F)
// A partial tile or block at the edge covers only the elements that exist.
//
// For each tile/block:  amax  = max |x|  (NaN ignored; 0 for a tile of zeros)
//                       scale = max(amax, 1e-4) / 448, optionally rounded up to a power of two
//                       q     = E4M3(x / scale)  rounded to nearest even, saturating to +-448
// and x ~= E4M3 value of q * scale. A power-of-two scale makes the dequantizing multiply exact.
// Inputs are expected finite: a tile holding +-inf gets an infinite scale and NaN/zero codes.
//
// The CPU and CUDA versions agree bit for bit (codes and scales): amax is exact whatever the
// order, the scale and x / scale are the same two IEEE fp32 divisions on both sides (CUDA's
// default -prec-div=true; never build this with --use_fast_math), and frugal::float_to_e4m3_bits
// equals __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3). fp8_scale_from_amax below is the
// one definition of the scale, compiled for both.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_runtime_api.h>  // cudaStream_t
#endif

#if defined(__CUDACC__)
#define FRUGAL_HOST_DEVICE __host__ __device__
#else
#define FRUGAL_HOST_DEVICE
#endif

namespace frugal {

constexpr int64_t kFp8BlockSize = 128;     // tile length and block side
constexpr float kE4M3MaxFinite = 448.0f;   // largest finite E4M3 value
constexpr float kFp8AmaxFloor = 1e-4f;     // amax is clamped to at least this

// Number of 128-element tiles (or 128-wide blocks) covering `extent` elements.
constexpr int64_t fp8_block_count(int64_t extent) {
  return (extent + kFp8BlockSize - 1) / kFp8BlockSize;
}

// The smallest power of two >= a positive finite or infinite `value` (infinity stays infinity).
// Exact: the exponent is bumped when any mantissa bit is set, which is 2^ceil(log2(value)) for
// normal floats, and every scale is normal (>= 1e-4 / 448).
FRUGAL_HOST_DEVICE inline float round_up_to_power_of_two(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x007FFFFFu) != 0) bits = (bits & 0xFF800000u) + 0x00800000u;
  float result;
  std::memcpy(&result, &bits, sizeof result);
  return result;
}

// The scale of a tile whose largest magnitude is `amax` (a NaN amax counts as 0).
FRUGAL_HOST_DEVICE inline float fp8_scale_from_amax(float amax, bool power_of_two_scale) {
  const float clamped = amax > kFp8AmaxFloor ? amax : kFp8AmaxFloor;
  const float scale = clamped / kE4M3MaxFinite;
  return power_of_two_scale ? round_up_to_power_of_two(scale) : scale;
}

}  // namespace frugal

namespace frugal::cpu {

// x [rows, cols] -> q [rows, cols], scales [ceil(cols/128), rows].
void quantize_act_1x128(uint8_t* q, float* scales, const float* x, int64_t rows, int64_t cols,
                        bool power_of_two_scale);
// q [rows, cols], scales [ceil(cols/128), rows] -> x [rows, cols] = E4M3 value * scale.
void dequantize_act_1x128(float* x, const uint8_t* q, const float* scales, int64_t rows,
                          int64_t cols);
// w [rows, cols] -> q [rows, cols], scales [ceil(rows/128), ceil(cols/128)].
void quantize_weight_128x128(uint8_t* q, float* scales, const float* w, int64_t rows, int64_t cols,
                             bool power_of_two_scale);
// q [rows, cols], scales [ceil(rows/128), ceil(cols/128)] -> w [rows, cols].
void dequantize_weight_128x128(float* w, const uint8_t* q, const float* scales, int64_t rows,
                               int64_t cols);

}  // namespace frugal::cpu

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_bf16.h>
namespace frugal::cuda {

// Device pointers; same layouts and results as the frugal::cpu versions. Asynchronous on `stream`.
// T is float or __nv_bfloat16 (a bf16 input is widened exactly, then quantized as fp32).
template <class T>
void quantize_act_1x128(uint8_t* q, float* scales, const T* x, int64_t rows, int64_t cols,
                        bool power_of_two_scale, cudaStream_t stream);
void quantize_weight_128x128(uint8_t* q, float* scales, const float* w, int64_t rows, int64_t cols,
                             bool power_of_two_scale, cudaStream_t stream);
// x [rows, cols] = E4M3 value * scale (scales [ceil(cols/128)][rows]); the FP8 activation caches
// of spec §4.4 (SwiGLU input, Linear inputs) are expanded with it in the backward.
template <class T>
void dequantize_act_1x128(T* x, const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                          cudaStream_t stream);
// Both the weight and its transpose in one pass (once per optimizer step, for Fprop and Dgrad):
// q/scales as quantize_weight_128x128; qT [cols, rows] and scalesT [ceil(cols/128)][ceil(rows/128)]
// are exactly their transposes (a block's amax does not depend on orientation).
void quantize_weight_128x128_with_transpose(uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                                            const float* w, int64_t rows, int64_t cols,
                                            bool power_of_two_scale, cudaStream_t stream);
// The same over a stack of `matrices` matrices in one launch (the experts of an MoE layer):
// w, q, qT [matrices][rows * cols], scales, scalesT [matrices][row blocks * column blocks], each
// matrix exactly as the call above would quantize it alone.
void quantize_weights_128x128_with_transpose(uint8_t* q, float* scales, uint8_t* qT,
                                             float* scalesT, const float* w, int64_t matrices,
                                             int64_t rows, int64_t cols, bool power_of_two_scale,
                                             cudaStream_t stream);
// x [rows, cols] -> qT [cols, rows] quantized in 1x128 tiles along rows (the spec's 128x1 tiles
// of x), scales [ceil(rows/128)][cols]: the Wgrad operands. Equals cpu::quantize_act_1x128 of the
// transposed matrix, bit for bit.
template <class T>
void transpose_quantize_1x128(uint8_t* qT, float* scales, const T* x, int64_t rows, int64_t cols,
                              bool power_of_two_scale, cudaStream_t stream);
// The per-expert forms over a permuted matrix x [rows, cols] whose groups start at the device
// offsets [groups+1] (multiples of 128, see gemm_cuda.h kFp8GroupRowAlign):
//   quantize_act_1x128_grouped: q [rows, cols]; group g's scales at scales + offsets[g]*ceil(cols/128),
//     laid out [ceil(cols/128)][rows_g]
//   transpose_quantize_1x128_grouped: group g's qT_g [cols, rows_g] at qT + offsets[g]*cols, scales
//     [rows_g/128][cols] at scales + offsets[g]/128*cols
template <class T>
void quantize_act_1x128_grouped(uint8_t* q, float* scales, const T* x, const int64_t* offsets,
                                int64_t groups, int64_t rows, int64_t cols,
                                bool power_of_two_scale, cudaStream_t stream);
template <class T>
void transpose_quantize_1x128_grouped(uint8_t* qT, float* scales, const T* x,
                                      const int64_t* offsets, int64_t groups, int64_t rows,
                                      int64_t cols, bool power_of_two_scale, cudaStream_t stream);
// Both operands an FP8 Linear makes of one bf16 activation, in one pass over it (quant_dual_cuda.cu):
// q, scales exactly as quantize_act_1x128 and qT, scalesT exactly as transpose_quantize_1x128 of
// the same x; the grouped form likewise as the two grouped calls (each group a multiple of 128
// rows starting on a multiple of 128, as the FP8 permutation pads them).
void quantize_act_1x128_dual(uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                             const __nv_bfloat16* x, int64_t rows, int64_t cols,
                             bool power_of_two_scale, cudaStream_t stream);
void quantize_act_1x128_dual_grouped(uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                                     const __nv_bfloat16* x, const int64_t* offsets,
                                     int64_t groups, int64_t rows, int64_t cols,
                                     bool power_of_two_scale, cudaStream_t stream);
// The grouped form of the rows cuda::permute_rows(xp, x, row_assignment, rows, top_k, cols) would
// gather (xp[r] = x[row_assignment[r] / top_k], zeros where row_assignment[r] < 0), without xp:
// the same bits as permute_rows then quantize_act_1x128_dual_grouped of xp. x [tokens, cols].
void quantize_act_1x128_dual_grouped_gather(uint8_t* q, float* scales, uint8_t* qT,
                                            float* scalesT, const __nv_bfloat16* x,
                                            const int32_t* row_assignment, int64_t top_k,
                                            const int64_t* offsets, int64_t groups, int64_t rows,
                                            int64_t cols, bool power_of_two_scale,
                                            cudaStream_t stream);

}  // namespace frugal::cuda
#endif
