// CPU FP8 E4M3 quantizers (1x128 activation tiles, 128x128 weight blocks): hand-computed codes,
// saturation of the largest element at 448, the 1e-4 amax clamp, power-of-two scales rounded up,
// scale layouts, partial edge tiles, NaN handling, and the dequantization round-trip error bound.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/quant/quant.h"

namespace frugal {
namespace {

bool is_power_of_two(float value) {
  return value > 0 && (std::bit_cast<uint32_t>(value) & 0x007FFFFFu) == 0;
}

std::vector<float> normal_values(int64_t count, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> values(count);
  for (float& v : values) v = dist(gen);
  return values;
}

TEST(Quant, HandComputedActivationCodes) {
  // One row of 128: amax 896 -> scale 2 (exact), so q = x / 2.
  std::vector<float> x(128, 0.0f);
  x[0] = 896.0f;   // 448    -> 0x7E (S=0, E=1111, M=110)
  x[1] = -3.0f;    // -1.5   -> 0xBC (S=1, E=0111, M=100)
  x[2] = 1.0f;     // 0.5    -> 0x30 (E=0110)
  x[3] = 0x1p-8f;  // 2^-9 -> the smallest subnormal (2^-6 * 1/8) -> 0x01
  x[4] = -0.0f;    // -0     -> 0x80
  x[5] = 40.0f;    // 20 = 1.25 * 2^4 -> E=1011, M=010 -> 0x5A
  x[6] = 37.0f;    // 18.5: between 18 and 20 (spacing 2), nearer 18 -> 1.125*2^4 -> 0x59
  x[7] = 34.0f;    // 17: tie between 16 (M=000) and 18 (M=001) -> even 16 -> 0x58
  std::vector<uint8_t> q(128, 0xAA);
  float scale = 0;
  cpu::quantize_act_1x128(q.data(), &scale, x.data(), 1, 128, false);
  EXPECT_EQ(scale, 2.0f);
  EXPECT_EQ(q[0], 0x7E);
  EXPECT_EQ(q[1], 0xBC);
  EXPECT_EQ(q[2], 0x30);
  EXPECT_EQ(q[3], 0x01);
  EXPECT_EQ(q[4], 0x80);
  EXPECT_EQ(q[5], 0x5A);
  EXPECT_EQ(q[6], 0x59);
  EXPECT_EQ(q[7], 0x58);
  for (int j = 8; j < 128; ++j) EXPECT_EQ(q[j], 0x00) << j;
}

TEST(Quant, LargestElementSaturatesTo448) {
  // scale = fl(amax / 448), so fl(amax / scale) can land just above 448; it must still encode as
  // the largest finite code 0x7E (never 0x7F, which is NaN in e4m3fn).
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> dist(1.0f, 2.0f);
  int above_448 = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    const float amax = dist(gen) * std::ldexp(1.0f, trial % 40 - 10);
    std::vector<float> x(128, 0.3f * amax);
    x[trial % 128] = (trial % 2) ? amax : -amax;
    std::vector<uint8_t> q(128);
    float scale;
    cpu::quantize_act_1x128(q.data(), &scale, x.data(), 1, 128, false);
    if (amax / scale > 448.0f) ++above_448;
    ASSERT_EQ(q[trial % 128], (trial % 2) ? 0x7E : 0xFE) << "amax " << amax;
  }
  std::printf("quant: %d of 4000 tiles had amax/scale > 448 (saturated to 448)\n", above_448);
  EXPECT_GT(above_448, 0);  // the rounding case is exercised
}

TEST(Quant, AmaxIsClampedTo1e4) {
  // All zeros: scale = 1e-4 / 448 and every code 0. A tile of 5e-5: q = 5e-5 / (1e-4/448) = 224.
  std::vector<float> x(256, 0.0f);
  for (int j = 128; j < 256; ++j) x[j] = (j % 2) ? 5e-5f : -5e-5f;
  std::vector<uint8_t> q(256, 0xAA);
  std::vector<float> scales(2);
  cpu::quantize_act_1x128(q.data(), scales.data(), x.data(), 1, 256, false);
  EXPECT_EQ(scales[0], 1e-4f / 448.0f);
  EXPECT_EQ(scales[1], 1e-4f / 448.0f);
  for (int j = 0; j < 128; ++j) EXPECT_EQ(q[j], 0x00);
  // 224 = 1.75 * 2^7: E = 14 (1110), M = 110 -> 0x76.
  for (int j = 128; j < 256; ++j) EXPECT_EQ(q[j], (j % 2) ? 0x76 : 0xF6) << j;
  // Just above the floor the clamp no longer applies.
  x.assign(128, 2e-4f);
  cpu::quantize_act_1x128(q.data(), scales.data(), x.data(), 1, 128, false);
  EXPECT_EQ(scales[0], 2e-4f / 448.0f);
  EXPECT_EQ(q[0], 0x7E);
}

TEST(Quant, PowerOfTwoScalesRoundUp) {
  EXPECT_EQ(round_up_to_power_of_two(1.0f), 1.0f);
  EXPECT_EQ(round_up_to_power_of_two(1.5f), 2.0f);
  EXPECT_EQ(round_up_to_power_of_two(0.75f), 1.0f);
  EXPECT_EQ(round_up_to_power_of_two(std::nextafter(2.0f, 3.0f)), 4.0f);
  EXPECT_EQ(round_up_to_power_of_two(std::nextafter(2.0f, 1.0f)), 2.0f);
  EXPECT_EQ(round_up_to_power_of_two(0x1.8p-100f), 0x1p-99f);
  // amax 896 -> 2 stays 2; 900 -> 2.0089 -> 4; 1344 -> 3 -> 4; 100 -> 0.2232 -> 0.25.
  EXPECT_EQ(fp8_scale_from_amax(896.0f, true), 2.0f);
  EXPECT_EQ(fp8_scale_from_amax(900.0f, true), 4.0f);
  EXPECT_EQ(fp8_scale_from_amax(1344.0f, true), 4.0f);
  EXPECT_EQ(fp8_scale_from_amax(100.0f, true), 0.25f);
  EXPECT_EQ(fp8_scale_from_amax(0.0f, true), 0x1p-22f);  // 1e-4/448 = 2.23e-7 -> 2^-22 = 2.38e-7

  // Random tiles: scale is the smallest power of two >= amax/448, and no code saturates past the
  // largest element's true value (amax / scale <= 448).
  const int64_t rows = 37, cols = 1000;
  std::vector<float> x = normal_values(rows * cols, 5, 3.0f);
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(fp8_block_count(cols) * rows), plain(scales.size());
  cpu::quantize_act_1x128(q.data(), scales.data(), x.data(), rows, cols, true);
  cpu::quantize_act_1x128(q.data(), plain.data(), x.data(), rows, cols, false);
  for (size_t i = 0; i < scales.size(); ++i) {
    ASSERT_TRUE(is_power_of_two(scales[i])) << scales[i];
    EXPECT_GE(scales[i], plain[i]);
    EXPECT_LT(scales[i] / 2, plain[i]);
  }
}

TEST(Quant, ActivationScaleLayoutAndPartialTiles) {
  // rows 3, cols 300 -> tiles of 128, 128, 44. Each (row, tile) gets its own amax = 10*row+tile+1.
  const int64_t rows = 3, cols = 300, tiles = fp8_block_count(cols);
  ASSERT_EQ(tiles, 3);
  std::vector<float> x(rows * cols, 0.25f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t last = std::min(cols, (t + 1) * 128) - 1;  // the tile's last column
      x[r * cols + last] = -static_cast<float>(10 * r + t + 1);
    }
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(tiles * rows);
  cpu::quantize_act_1x128(q.data(), scales.data(), x.data(), rows, cols, false);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < tiles; ++t) {
      EXPECT_EQ(scales[t * rows + r], static_cast<float>(10 * r + t + 1) / 448.0f) << r << "," << t;
      const int64_t last = std::min(cols, (t + 1) * 128) - 1;
      EXPECT_EQ(q[r * cols + last], 0xFE);
    }
}

TEST(Quant, WeightScaleLayoutAndPartialBlocks) {
  // 300 x 260 -> blocks 3 x 3 (edges of 44 rows and 4 columns). Block (b, c) has amax 7*b+c+1,
  // placed at its bottom-right element.
  const int64_t rows = 300, cols = 260;
  const int64_t row_blocks = fp8_block_count(rows), col_blocks = fp8_block_count(cols);
  std::vector<float> w(rows * cols, -0.125f);
  for (int64_t b = 0; b < row_blocks; ++b)
    for (int64_t c = 0; c < col_blocks; ++c) {
      const int64_t r = std::min(rows, (b + 1) * 128) - 1, k = std::min(cols, (c + 1) * 128) - 1;
      w[r * cols + k] = static_cast<float>(7 * b + c + 1);
    }
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(row_blocks * col_blocks);
  cpu::quantize_weight_128x128(q.data(), scales.data(), w.data(), rows, cols, false);
  for (int64_t b = 0; b < row_blocks; ++b)
    for (int64_t c = 0; c < col_blocks; ++c) {
      const float scale = scales[b * col_blocks + c];
      EXPECT_EQ(scale, static_cast<float>(7 * b + c + 1) / 448.0f) << b << "," << c;
      const int64_t r = std::min(rows, (b + 1) * 128) - 1, k = std::min(cols, (c + 1) * 128) - 1;
      EXPECT_EQ(q[r * cols + k], 0x7E);
      EXPECT_EQ(q[(b * 128) * cols + c * 128], float_to_e4m3_bits(-0.125f / scale));
    }
}

TEST(Quant, NaNIsIgnoredByAmaxAndEncodedAsNaN) {
  std::vector<float> x(128, 1.0f);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[9] = -8.0f;
  std::vector<uint8_t> q(128);
  float scale;
  cpu::quantize_act_1x128(q.data(), &scale, x.data(), 1, 128, false);
  EXPECT_EQ(scale, 8.0f / 448.0f);
  EXPECT_EQ(q[5], 0x7F);
  EXPECT_EQ(q[9], 0xFE);
}

// |dequant(quant(x)) - x| <= max(|x| / 16, scale / 1024): E4M3 keeps 3 mantissa bits (half a unit
// is 2^-4 of the value in the normal range) and its subnormal spacing is 2^-9 (half: 2^-10).
void check_round_trip(const std::vector<float>& x, const std::vector<float>& back,
                      const std::vector<float>& scale_of, const char* label) {
  double worst = 0;  // error / bound
  for (size_t i = 0; i < x.size(); ++i) {
    const double bound = std::max(std::fabs(double{x[i]}) / 16.0, double{scale_of[i]} / 1024.0);
    const double error = std::fabs(double{back[i]} - double{x[i]});
    worst = std::max(worst, error / bound);
    ASSERT_LE(error, bound * (1 + 1e-5)) << label << " element " << i << " x " << x[i];
  }
  std::printf("quant round trip %-28s max error / bound %.4f\n", label, worst);
  EXPECT_GT(worst, 0.5);  // the bound is tight: some element rounds by nearly half a unit
}

TEST(Quant, DequantizeRoundTripErrorIsBounded) {
  for (bool power_of_two : {false, true}) {
    // Activations with a wide dynamic range, so some values fall in E4M3's subnormals.
    const int64_t rows = 19, cols = 777;
    std::vector<float> x = normal_values(rows * cols, 21);
    std::mt19937 gen(3);
    std::uniform_int_distribution<int> exponent(-12, 12);
    for (float& v : x) v = std::ldexp(v, exponent(gen));
    const int64_t tiles = fp8_block_count(cols);
    std::vector<uint8_t> q(rows * cols);
    std::vector<float> scales(tiles * rows), back(rows * cols), scale_of(rows * cols);
    cpu::quantize_act_1x128(q.data(), scales.data(), x.data(), rows, cols, power_of_two);
    cpu::dequantize_act_1x128(back.data(), q.data(), scales.data(), rows, cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) scale_of[r * cols + c] = scales[(c / 128) * rows + r];
    check_round_trip(x, back, scale_of, power_of_two ? "act 1x128 pow2" : "act 1x128");

    const int64_t n = 259, k = 133;
    std::vector<float> w = normal_values(n * k, 22, 0.02f);
    const int64_t col_blocks = fp8_block_count(k);
    std::vector<uint8_t> wq(n * k);
    std::vector<float> wscales(fp8_block_count(n) * col_blocks), wback(n * k), wscale_of(n * k);
    cpu::quantize_weight_128x128(wq.data(), wscales.data(), w.data(), n, k, power_of_two);
    cpu::dequantize_weight_128x128(wback.data(), wq.data(), wscales.data(), n, k);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c)
        wscale_of[r * k + c] = wscales[(r / 128) * col_blocks + c / 128];
    check_round_trip(w, wback, wscale_of, power_of_two ? "weight 128x128 pow2" : "weight 128x128");
  }
}

}  // namespace
}  // namespace frugal
