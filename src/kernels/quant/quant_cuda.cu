// CUDA FP8 E4M3 quantization: 1x128 activation tiles and 128x128 weight blocks (see quant.h).
// Bit-identical to the CPU reference: same amax (exact), same fp32 divisions through the shared
// fp8_scale_from_amax, and the hardware cvt.rn.satfinite.e4m3x2.f32 that frugal's
// float_to_e4m3_bits reproduces.
//
// Activations: one warp per 1x128 tile; lane l holds columns 4l..4l+3 (one 16-byte load when the
// row is 16-byte aligned, else four masked loads), a shuffle reduction gives amax, and the codes go
// out as one 4-byte store per lane. Consecutive warps take consecutive rows of one column tile, so
// a block's scales land side by side in the [tiles, rows] layout.
// Weights: one 256-thread block per 128x128 block; the block reads its 64 KB twice (amax, then
// codes; the second read comes from L2). Weights are quantized once per step, off the hot path.
#include <cuda_fp8.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/quant/quant.h"

namespace frugal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kActWarpsPerBlock = 8;
constexpr int kWeightThreads = 256;
constexpr int kValuesPerLane = 4;  // 32 lanes x 4 = one 128-wide row of a tile
static_assert(kWarpSize * kValuesPerLane == kFp8BlockSize, "a warp covers one 128-wide row");

__device__ inline float warp_max(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xFFFFFFFFu, value, offset));
  return value;
}

// Loads the 4 values of this lane at x[0..3], zeros past `valid` (0..4 of them exist).
template <bool kAligned>
__device__ inline void load4(float (&v)[4], const float* x, int64_t valid) {
  if (kAligned && valid >= 4) {
    const float4 f = *reinterpret_cast<const float4*>(x);
    v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = i < valid ? x[i] : 0.0f;
  }
}

// Quantizes v / scale and stores the codes of the `valid` leading values at q[0..3].
template <bool kAligned>
__device__ inline void quantize_store4(uint8_t* q, const float (&v)[4], float scale, int64_t valid) {
  // x / scale: an IEEE division (the build never uses --use_fast_math), as on the CPU.
  const float2 low = make_float2(v[0] / scale, v[1] / scale);
  const float2 high = make_float2(v[2] / scale, v[3] / scale);
  const uint32_t codes_low = __nv_cvt_float2_to_fp8x2(low, __NV_SATFINITE, __NV_E4M3);
  const uint32_t codes_high = __nv_cvt_float2_to_fp8x2(high, __NV_SATFINITE, __NV_E4M3);
  const uint32_t packed = codes_low | (codes_high << 16);  // byte i = code of v[i]
  if (kAligned && valid >= 4) {
    *reinterpret_cast<uint32_t*>(q) = packed;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (i < valid) q[i] = static_cast<uint8_t>(packed >> (8 * i));
  }
}

__device__ inline float amax4(const float (&v)[4], float amax) {
#pragma unroll
  for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[i]));  // fmaxf ignores NaN
  return amax;
}

// kAligned: x rows start on 16 bytes and q rows on 4 bytes (cols % 4 == 0, aligned bases).
template <bool kAligned>
__global__ void quantize_act_1x128_kernel(uint8_t* __restrict__ q, float* __restrict__ scales,
                                          const float* __restrict__ x, int64_t rows, int64_t cols,
                                          int64_t tiles, bool power_of_two_scale) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kActWarpsPerBlock + threadIdx.x / kWarpSize;
  if (warp >= rows * tiles) return;  // the whole warp leaves together
  const int lane = threadIdx.x % kWarpSize;
  const int64_t tile = warp / rows;
  const int64_t row = warp % rows;
  const int64_t col = tile * kFp8BlockSize + lane * kValuesPerLane;
  const int64_t valid = cols - col;  // may be <= 0 for lanes past the end of a partial tile
  const int64_t offset = row * cols + col;

  float v[4];
  load4<kAligned>(v, x + offset, valid);
  const float amax = warp_max(amax4(v, 0.0f));
  const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
  if (valid > 0) quantize_store4<kAligned>(q + offset, v, scale, valid);
  if (lane == 0) scales[tile * rows + row] = scale;  // [tiles, rows]
}

template <bool kAligned>
__global__ void __launch_bounds__(kWeightThreads)
    quantize_weight_128x128_kernel(uint8_t* __restrict__ q, float* __restrict__ scales,
                                   const float* __restrict__ w, int64_t rows, int64_t cols,
                                   bool power_of_two_scale) {
  constexpr int kRowsPerPass = kWeightThreads / kWarpSize;  // 8 rows of 128 per pass
  __shared__ float warp_amax[kRowsPerPass];
  __shared__ float block_scale;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kFp8BlockSize;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kFp8BlockSize +
                      (threadIdx.x % kWarpSize) * kValuesPerLane;
  const int64_t valid = cols - col;
  const int64_t row_end = min(rows, row0 + kFp8BlockSize);
  const int first_row = threadIdx.x / kWarpSize;

  float amax = 0.0f;
  for (int64_t row = row0 + first_row; row < row_end; row += kRowsPerPass) {
    float v[4];
    load4<kAligned>(v, w + row * cols + col, valid);
    amax = amax4(v, amax);
  }
  amax = warp_max(amax);
  if (threadIdx.x % kWarpSize == 0) warp_amax[first_row] = amax;
  __syncthreads();
  if (threadIdx.x == 0) {
    float block_amax = warp_amax[0];
    for (int i = 1; i < kRowsPerPass; ++i) block_amax = fmaxf(block_amax, warp_amax[i]);
    block_scale = fp8_scale_from_amax(block_amax, power_of_two_scale);
    scales[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = block_scale;
  }
  __syncthreads();
  const float scale = block_scale;
  if (valid <= 0) return;
  for (int64_t row = row0 + first_row; row < row_end; row += kRowsPerPass) {
    float v[4];
    load4<kAligned>(v, w + row * cols + col, valid);
    quantize_store4<kAligned>(q + row * cols + col, v, scale, valid);
  }
}

bool aligned(const void* pointer, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

}  // namespace

void quantize_act_1x128(uint8_t* q, float* scales, const float* x, int64_t rows, int64_t cols,
                        bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::quantize_act_1x128: negative shape");
  if (rows == 0 || cols == 0) return;
  const int64_t tiles = fp8_block_count(cols);
  const int64_t blocks = (rows * tiles + kActWarpsPerBlock - 1) / kActWarpsPerBlock;
  FRUGAL_CUDA_REQUIRE(blocks <= 0x7FFFFFFF, "cuda::quantize_act_1x128: too many tiles for one grid");
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(kActWarpsPerBlock * kWarpSize);
  if (cols % 4 == 0 && aligned(x, 16) && aligned(q, 4))
    quantize_act_1x128_kernel<true><<<grid, block, 0, stream>>>(q, scales, x, rows, cols, tiles,
                                                                power_of_two_scale);
  else
    quantize_act_1x128_kernel<false><<<grid, block, 0, stream>>>(q, scales, x, rows, cols, tiles,
                                                                 power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void quantize_weight_128x128(uint8_t* q, float* scales, const float* w, int64_t rows, int64_t cols,
                             bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0, "cuda::quantize_weight_128x128: negative shape");
  if (rows == 0 || cols == 0) return;
  const int64_t row_blocks = fp8_block_count(rows);
  const int64_t col_blocks = fp8_block_count(cols);
  FRUGAL_CUDA_REQUIRE(row_blocks <= 65535 && col_blocks <= 0x7FFFFFFF,
                      "cuda::quantize_weight_128x128: weight too large for one grid");
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(row_blocks));
  const dim3 block(kWeightThreads);
  if (cols % 4 == 0 && aligned(w, 16) && aligned(q, 4))
    quantize_weight_128x128_kernel<true><<<grid, block, 0, stream>>>(q, scales, w, rows, cols,
                                                                     power_of_two_scale);
  else
    quantize_weight_128x128_kernel<false><<<grid, block, 0, stream>>>(q, scales, w, rows, cols,
                                                                      power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
