// CPU reference of FP8 E4M3 quantization: 1x128 activation tiles and 128x128 weight blocks
// (see quant.h for layouts and the exact rule). fp32 only: the recipe quantizes fp32 values, and
// the CUDA kernels must reproduce these codes and scales bit for bit.
#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "kernels/quant/quant.h"

namespace frugal::cpu {
namespace {

// max |x| over a span; std::fmax ignores NaN, as CUDA's fmaxf does.
float span_amax(const float* x, int64_t count, float amax) {
  for (int64_t j = 0; j < count; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  return amax;
}

void quantize_span(uint8_t* q, const float* x, int64_t count, float scale) {
  for (int64_t j = 0; j < count; ++j) q[j] = float_to_e4m3_bits(x[j] / scale);
}

void dequantize_span(float* x, const uint8_t* q, int64_t count, float scale) {
  for (int64_t j = 0; j < count; ++j) x[j] = e4m3_bits_to_float(q[j]) * scale;
}

}  // namespace

void quantize_act_1x128(uint8_t* q, float* scales, const float* x, int64_t rows, int64_t cols,
                        bool power_of_two_scale) {
  const int64_t tiles = fp8_block_count(cols);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t begin = row * cols + tile * kFp8BlockSize;
      const int64_t count = std::min(kFp8BlockSize, cols - tile * kFp8BlockSize);
      const float scale = fp8_scale_from_amax(span_amax(x + begin, count, 0.0f), power_of_two_scale);
      scales[tile * rows + row] = scale;  // [tiles, rows]
      quantize_span(q + begin, x + begin, count, scale);
    }
  }
}

void dequantize_act_1x128(float* x, const uint8_t* q, const float* scales, int64_t rows,
                          int64_t cols) {
  const int64_t tiles = fp8_block_count(cols);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t begin = row * cols + tile * kFp8BlockSize;
      const int64_t count = std::min(kFp8BlockSize, cols - tile * kFp8BlockSize);
      dequantize_span(x + begin, q + begin, count, scales[tile * rows + row]);
    }
  }
}

void quantize_weight_128x128(uint8_t* q, float* scales, const float* w, int64_t rows, int64_t cols,
                             bool power_of_two_scale) {
  const int64_t row_blocks = fp8_block_count(rows);
  const int64_t col_blocks = fp8_block_count(cols);
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < row_blocks * col_blocks; ++block) {
    const int64_t row0 = (block / col_blocks) * kFp8BlockSize;
    const int64_t col0 = (block % col_blocks) * kFp8BlockSize;
    const int64_t row_end = std::min(rows, row0 + kFp8BlockSize);
    const int64_t count = std::min(kFp8BlockSize, cols - col0);  // columns in this block
    float amax = 0.0f;
    for (int64_t row = row0; row < row_end; ++row) amax = span_amax(w + row * cols + col0, count, amax);
    const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
    scales[block] = scale;  // [row_blocks, col_blocks]
    for (int64_t row = row0; row < row_end; ++row)
      quantize_span(q + row * cols + col0, w + row * cols + col0, count, scale);
  }
}

void dequantize_weight_128x128(float* w, const uint8_t* q, const float* scales, int64_t rows,
                               int64_t cols) {
  const int64_t col_blocks = fp8_block_count(cols);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const float* row_scales = scales + (row / kFp8BlockSize) * col_blocks;
    for (int64_t block = 0; block < col_blocks; ++block) {
      const int64_t col0 = block * kFp8BlockSize;
      const int64_t count = std::min(kFp8BlockSize, cols - col0);
      dequantize_span(w + row * cols + col0, q + row * cols + col0, count, row_scales[block]);
    }
  }
}

}  // namespace frugal::cpu
