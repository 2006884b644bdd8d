// CPU emulation of the block-scaled FP8 GEMM (gemm_fp8.h), the reference of the CUDA GEMM tests:
// hand-computed products with a partial second K tile, per-row tile scales and per-block weight
// scales, beta and ldc; block and tile scaling agreeing bit for bit when the tile scales repeat
// the block scales; and quantize -> emulated GEMM staying within FP8 error of the fp64 product.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/gemm/gemm.h"
#include "kernels/gemm/gemm_fp8.h"
#include "kernels/quant/quant.h"

namespace frugal {
namespace {

constexpr uint8_t kOne = 0x38;       // E4M3 1.0
constexpr uint8_t kTwo = 0x40;       // E4M3 2.0
constexpr uint8_t kHalf = 0x30;      // E4M3 0.5
constexpr uint8_t kMinusOne = 0xB8;  // E4M3 -1.0

// A [2,130]: row 0 all 1.0; row 1 is 2.0 in the first tile and -1.0 in the partial second tile.
// Tile scales [2][2]: row 0 (2, 0.5), row 1 (0.25, 4). B [3,130]: rows 0 and 1 all 1.0, row 2 0.5.
struct HandCase {
  static constexpr int64_t m = 2, n = 3, k = 130;
  std::vector<uint8_t> a, b;
  std::vector<float> a_scales{2.0f, 0.25f, 0.5f, 4.0f};  // [tile][row]
  HandCase() : a(m * k), b(n * k) {
    for (int64_t t = 0; t < k; ++t) {
      a[t] = kOne;
      a[k + t] = t < 128 ? kTwo : kMinusOne;
      b[t] = kOne;
      b[k + t] = kOne;
      b[2 * k + t] = kHalf;
    }
  }
};

TEST(GemmFp8Cpu, HandComputedBlockScaledWeights) {
  HandCase hand;
  const std::vector<float> b_scales{4.0f, 8.0f};  // [1 row block][2 K blocks]
  const int64_t ldc = 5;
  std::vector<float> c(HandCase::m * ldc, 10.0f);
  cpu::gemm_fp8_nt_emulated(HandCase::m, HandCase::n, HandCase::k, hand.a.data(),
                            hand.a_scales.data(), hand.b.data(), b_scales.data(), true, 0.5f,
                            c.data(), ldc);
  // row 0: 128*(1*2)*(1*4) + 2*(1*0.5)*(1*8) = 1032; with B = 0.5: 512 + 4 = 516.
  // row 1: 128*(2*0.25)*(1*4) + 2*(-1*4)*(1*8) = 192; with B = 0.5: 128 - 32 = 96.
  // beta 0.5 adds 5 to each.
  const float expected[2][3] = {{1037, 1037, 521}, {197, 197, 101}};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) EXPECT_EQ(c[i * ldc + j], expected[i][j]) << i << "," << j;
    for (int j = 3; j < ldc; ++j) EXPECT_EQ(c[i * ldc + j], 10.0f) << "padding " << i << "," << j;
  }
}

TEST(GemmFp8Cpu, HandComputedTileScaledB) {
  HandCase hand;
  const std::vector<float> b_scales{4.0f, 1.0f, 4.0f, 8.0f, 8.0f, 2.0f};  // [2 tiles][3 rows]
  std::vector<float> c(HandCase::m * HandCase::n, std::nanf(""));         // beta 0 ignores NaN
  cpu::gemm_fp8_nt_emulated(HandCase::m, HandCase::n, HandCase::k, hand.a.data(),
                            hand.a_scales.data(), hand.b.data(), b_scales.data(), false, 0.0f,
                            c.data(), HandCase::n);
  // row 0: j0 1024 + 8; j1 128*2*1 + 2*0.5*8 = 264; j2 128*2*0.5*4 + 2*0.5*0.5*2 = 513.
  // row 1: j0 256 - 64; j1 128*0.5*1 - 2*4*8 = 0; j2 128*0.5*0.5*4 - 2*4*0.5*2 = 120.
  const float expected[6] = {1032, 264, 513, 192, 0, 120};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(c[i], expected[i]) << i;
}

std::vector<float> normal_values(int64_t count, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> values(count);
  for (float& v : values) v = dist(gen);
  return values;
}

TEST(GemmFp8Cpu, BlockAndEqualTileScalesAgreeBitForBit) {
  const int64_t m = 24, n = 200, k = 300;  // two row blocks, three K blocks (the last partial)
  std::vector<uint8_t> a(m * k), b(n * k);
  std::vector<float> a_scales(fp8_block_count(k) * m), block_scales(2 * 3);
  cpu::quantize_act_1x128(a.data(), a_scales.data(), normal_values(m * k, 1).data(), m, k, false);
  cpu::quantize_weight_128x128(b.data(), block_scales.data(), normal_values(n * k, 2).data(), n, k,
                               false);
  std::vector<float> tile_scales(3 * n);  // [K tile][row] repeating each row's block scale
  for (int64_t kb = 0; kb < 3; ++kb)
    for (int64_t j = 0; j < n; ++j) tile_scales[kb * n + j] = block_scales[(j / 128) * 3 + kb];
  std::vector<float> c_block(m * n), c_tile(m * n);
  cpu::gemm_fp8_nt_emulated(m, n, k, a.data(), a_scales.data(), b.data(), block_scales.data(), true,
                            0.0f, c_block.data(), n);
  cpu::gemm_fp8_nt_emulated(m, n, k, a.data(), a_scales.data(), b.data(), tile_scales.data(), false,
                            0.0f, c_tile.data(), n);
  for (int64_t i = 0; i < m * n; ++i) ASSERT_EQ(c_block[i], c_tile[i]) << i;
}

TEST(GemmFp8Cpu, QuantizedProductStaysWithinFp8ErrorOfTheExactOne) {
  const int64_t m = 40, n = 136, k = 384;
  // Magnitudes that differ by powers of two from tile to tile and block to block, so that a scale
  // read from the wrong tile or block is off by a factor of 2 or more.
  std::vector<float> x = normal_values(m * k, 3), w = normal_values(n * k, 4);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t t = 0; t < k; ++t) x[i * k + t] *= std::exp2(float((i + 3 * (t / 128)) % 7 - 3));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t t = 0; t < k; ++t)
      w[j * k + t] *= std::exp2(float((j / 128 + 2 * (t / 128)) % 5 - 2));
  std::vector<uint8_t> xq(m * k), wq(n * k);
  std::vector<float> x_scales(3 * m), w_scales(2 * 3);
  cpu::quantize_act_1x128(xq.data(), x_scales.data(), x.data(), m, k, false);
  cpu::quantize_weight_128x128(wq.data(), w_scales.data(), w.data(), n, k, false);
  std::vector<float> c(m * n);
  cpu::gemm_fp8_nt_emulated(m, n, k, xq.data(), x_scales.data(), wq.data(), w_scales.data(), true,
                            0.0f, c.data(), n);
  std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), exact(m * n);
  cpu::matmul_nt(exact.data(), xd.data(), wd.data(), m, n, k, false);
  double max_ref = 0, max_err = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    max_ref = std::max(max_ref, std::fabs(exact[i]));
    max_err = std::max(max_err, std::fabs(exact[i] - c[i]));
  }
  // E4M3 keeps 3 mantissa bits (<= 6.25% per value, about 3.4% rms per product), and the rounding
  // errors of 384 products partly cancel: about 4% of max |C| here. A misplaced scale is a factor
  // 2+.
  EXPECT_LT(max_err / max_ref, 8e-2) << "max |err| " << max_err << " max |ref| " << max_ref;
  EXPECT_GT(max_err, 0.0);  // it is an approximation, not the fp64 product itself
}

}  // namespace
}  // namespace frugal
