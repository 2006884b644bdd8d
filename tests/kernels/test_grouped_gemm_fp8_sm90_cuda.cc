// The Hopper grouped FP8 GEMMs (kernels/gemm/grouped_gemm_fp8_sm90.h) on operands made by the
// project's own CUDA quantizers (quantize_act_1x128_grouped, transpose_quantize_1x128_grouped,
// quantize_weight_128x128), against:
//   (1) cpu::gemm_fp8_nt_emulated per group on the same codes and scales (downloaded):
//       nt (BF16 y) max |gpu - ref| / max |ref| <= 1e-2; wgrad (FP32 dW) <= 1e-3;
//   (2) the cuBLASLt grouped FP8 calls (gemm_cuda.h, host offsets) on the same device operands:
//       BF16 <= 1e-2, FP32 <= 1e-4 (relative to max |cuBLASLt|);
//   (3) a second run: identical bits.
// Rows at or past offsets[groups] hold E4M3 NaN codes (0x7F) and NaN scales in every operand, and
// the output rows there are poisoned (0xFF) and must keep their bytes. Wgrad runs without
// accumulate (dW poisoned first: every element written, an empty group gives zeros) and with it
// (random dW: added to; empty groups keep their bits).
// Group layouts (rows are multiples of 128): empty groups, 128-row groups, uneven groups, the last
// group ending exactly at max_rows and before it (max_rows not a multiple of 128 too), 40 groups
// (two passes of the offset scan), all groups empty; shapes of bench-1b's experts: gate/up
// W [768, 1024] and down W [1024, 384] Fprop, their Dgrad B = W^T [1024, 768] and [384, 1024].
// Inputs change from row to row and from one 128-column tile to the next by powers of two, so a
// scale applied to the wrong row, column or block shows.
#include "kernels/gemm/grouped_gemm_fp8_sm90.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/gemm/gemm_fp8.h"
#include "kernels/quant/quant.h"
#include "cuda_test_util.h"
#include "grouped_gemm_test_util.h"

namespace frugal {
namespace {

using cuda::DataType;
using testing::case_seed;
using testing::DeviceArray;
using testing::random_normal;

constexpr double kBf16OutTolerance = 1e-2;
constexpr double kF32OutTolerance = 1e-3;
constexpr double kF32VsCublasTolerance = 1e-4;
constexpr uint8_t kE4M3NaN = 0x7F;
constexpr uint16_t kBf16Poison = 0xFFFF;

class GroupedGemmFp8Sm90Test : public testing::CudaTest {
 protected:
  void SetUp() override {
    testing::CudaTest::SetUp();
    ASSERT_TRUE(cuda::grouped_gemm_fp8_sm90_supported(128, 128))
        << "grouped_gemm_fp8_sm90 needs an sm_90 device";
  }
  cuda::BlasHandle blas_;
};

using Case = testing::GroupedCase;
using testing::offsets_of;
using testing::shape_of;

// [rows, cols] normal values scaled by 2^((row + 3 * (col / 128)) % 7 - 3).
std::vector<float> random_tiled(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> x = random_normal(rows * cols, seed);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      x[i * cols + j] *= std::exp2(static_cast<float>((i + 3 * (j / 128)) % 7 - 3));
  return x;
}

template <class T>
std::vector<T> slice(const std::vector<T>& v, int64_t begin, int64_t count) {
  return std::vector<T>(v.begin() + begin, v.begin() + begin + count);
}

// Device E4M3 codes and scales, filled with NaN codes / NaN scales before the quantizer writes
// the group rows.
struct Fp8Operand {
  Fp8Operand(int64_t codes, int64_t scales) : q(codes), s(scales) {
    if (codes > 0) FRUGAL_CUDA_CHECK(cudaMemset(q.get(), kE4M3NaN, codes));
    s.poison();
  }
  DeviceArray<uint8_t> q;
  DeviceArray<float> s;
};

void run_case(cudaStream_t stream, cuda::BlasHandle& blas, const Case& c) {
  auto sync = [&] { FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream)); };
  const int64_t groups = static_cast<int64_t>(c.rows.size());
  const std::vector<int64_t> offsets = offsets_of(c.rows);
  const int64_t used = offsets.back();
  ASSERT_LE(used, c.max_rows);
  for (int64_t r : c.rows) ASSERT_EQ(r % 128, 0) << "test case rows must be multiples of 128";
  const int64_t n = c.n, k = c.k, max_rows = c.max_rows;
  const int64_t kb = k / 128, nb = n / 128, row_blocks = (max_rows + 127) / 128;
  const std::string shape = shape_of(c);
  const std::string label = c.name + " " + shape;
  ASSERT_LE(static_cast<double>(used) * n * k, 2.5e9) << "keep the CPU emulation fast";

  DeviceArray<int64_t> device_offsets(groups + 1);
  device_offsets.upload(offsets);
  // Activations x [max_rows, k], dy [max_rows, n] and weights W [groups * n, k], fp32.
  DeviceArray<float> x(max_rows * k), dy(max_rows * n), w(groups * n * k);
  x.upload(random_tiled(max_rows, k, case_seed(label, 1)));
  dy.upload(random_tiled(max_rows, n, case_seed(label, 2)));
  w.upload(random_tiled(groups * n, k, case_seed(label, 3)));

  // The project's quantizers (rows past offsets[groups] are not written: they keep NaN).
  Fp8Operand a(max_rows * k, max_rows * kb), b(groups * n * k, groups * nb * kb);
  Fp8Operand dyT(max_rows * n, row_blocks * n), xT(max_rows * k, row_blocks * k);
  cuda::quantize_act_1x128_grouped<float>(a.q.get(), a.s.get(), x.get(), device_offsets.get(),
                                          groups, max_rows, k, false, stream);
  cuda::quantize_weight_128x128(b.q.get(), b.s.get(), w.get(), groups * n, k, true, stream);
  cuda::transpose_quantize_1x128_grouped<float>(dyT.q.get(), dyT.s.get(), dy.get(),
                                                device_offsets.get(), groups, max_rows, n, true,
                                                stream);
  cuda::transpose_quantize_1x128_grouped<float>(xT.q.get(), xT.s.get(), x.get(),
                                                device_offsets.get(), groups, max_rows, k, false,
                                                stream);
  sync();
  const std::vector<uint8_t> a_q = a.q.download(), b_q = b.q.download();
  const std::vector<uint8_t> dyT_q = dyT.q.download(), xT_q = xT.q.download();
  const std::vector<float> a_s = a.s.download(), b_s = b.s.download();
  const std::vector<float> dyT_s = dyT.s.download(), xT_s = xT.s.download();

  // CPU emulation per group.
  std::vector<float> y_ref(used * n, 0.0f), dw_ref(groups * n * k, 0.0f);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t r0 = offsets[g], rows = c.rows[g];
    if (rows == 0) continue;
    cpu::gemm_fp8_nt_emulated(rows, n, k, &a_q[r0 * k], &a_s[r0 * kb], &b_q[g * n * k],
                              &b_s[g * nb * kb], true, 0.0f, &y_ref[r0 * n], n);
    cpu::gemm_fp8_nt_emulated(n, k, rows, &dyT_q[r0 * n], &dyT_s[r0 / 128 * n], &xT_q[r0 * k],
                              &xT_s[r0 / 128 * k], false, 0.0f, &dw_ref[g * n * k], k);
  }

  // The cuBLASLt grouped path on the same device operands (host offsets).
  DeviceArray<uint16_t> y_blas(max_rows * n);
  DeviceArray<float> dw_blas(groups * n * k);
  dw_blas.poison();
  cuda::grouped_gemm_fp8_nt(blas, groups, offsets.data(), n, k, a.q.get(), a.s.get(), b.q.get(),
                            b.s.get(), y_blas.get(), DataType::BF16, stream);
  cuda::grouped_gemm_fp8_wgrad(blas, groups, offsets.data(), n, k, dyT.q.get(), dyT.s.get(),
                               xT.q.get(), xT.s.get(), dw_blas.get(), false, stream);
  sync();

  // ---- nt: y [max_rows, n] bf16
  {
    DeviceArray<uint16_t> y(max_rows * n);
    std::vector<uint16_t> first;
    for (int run = 0; run < 2; ++run) {
      y.poison();
      cuda::grouped_gemm_fp8_sm90_nt(groups, device_offsets.get(), max_rows, n, k, a.q.get(),
                                     a.s.get(), b.q.get(), b.s.get(),
                                     testing::as_bf16(y.get()), stream);
      sync();
      const std::vector<uint16_t> out = y.download();
      if (run == 0) {
        const std::vector<float> head = testing::from_bf16_bits(slice(out, 0, used * n));
        testing::expect_close("fp8_sm90 nt " + c.name, shape, head, y_ref, kBf16OutTolerance);
        testing::expect_equal("fp8_sm90 nt tail " + c.name, shape,
                              slice(out, used * n, (max_rows - used) * n),
                              std::vector<uint16_t>((max_rows - used) * n, kBf16Poison));
        if (used > 0)
          testing::expect_close("fp8_sm90 nt vs cublas " + c.name, shape, head,
                                testing::from_bf16_bits(slice(y_blas.download(), 0, used * n)),
                                kBf16OutTolerance);
        first = out;
      } else {
        testing::expect_same_bits("fp8_sm90 nt " + c.name, shape, first, out);
      }
    }
  }
  // ---- wgrad: dW [groups, n, k] fp32, overwrite (twice) then accumulate
  testing::check_wgrad_runs("fp8_sm90 wgrad", c, dw_ref, dw_blas.download(), used > 0,
                            kF32OutTolerance, kF32VsCublasTolerance, case_seed(label, 4),
                            [&](float* dw, bool accumulate) {
                              cuda::grouped_gemm_fp8_sm90_wgrad(
                                  groups, device_offsets.get(), max_rows, n, k, dyT.q.get(),
                                  dyT.s.get(), xT.q.get(), xT.s.get(), dw, accumulate, stream);
                              sync();
                            });
}

}  // namespace

TEST_F(GroupedGemmFp8Sm90Test, MixedGroupsEndingBeforeMaxRows) {
  // Empty groups, single tiles, several tiles; the last group ends 200 rows before max_rows
  // (which is not a multiple of 128).
  run_case(stream_, blas_, {"mixed", {0, 128, 384, 0, 256, 128}, 896 + 200, 256, 384});
}

TEST_F(GroupedGemmFp8Sm90Test, LastGroupEndsAtMaxRows) {
  run_case(stream_, blas_, {"exact end", {256, 0, 128, 512}, 896, 384, 256});
}

TEST_F(GroupedGemmFp8Sm90Test, ManyRandomGroups) {
  // 40 groups of 0 to 3 tiles: the offset scan runs over two warps' worth of groups.
  std::mt19937_64 gen(case_seed("fp8 many groups"));
  std::vector<int64_t> rows(40);
  int64_t used = 0;
  for (int64_t& r : rows) {
    r = static_cast<int64_t>(gen() % 4) * 128;
    used += r;
  }
  run_case(stream_, blas_, {"many", rows, used + 128, 128, 256});
}

TEST_F(GroupedGemmFp8Sm90Test, AllGroupsEmpty) {
  run_case(stream_, blas_, {"all empty", {0, 0, 0}, 300, 128, 256});
}

TEST_F(GroupedGemmFp8Sm90Test, ExpertGateUpShapes) {
  // bench-1b gate/up: Fprop B = W [768, 1024]; Dgrad B = W^T [1024, 768].
  run_case(stream_, blas_, {"gate/up fprop", {384, 0, 640, 128}, 1152 + 64, 768, 1024});
  run_case(stream_, blas_, {"gate/up dgrad", {128, 640, 256}, 1024, 1024, 768});
}

TEST_F(GroupedGemmFp8Sm90Test, ExpertDownShapes) {
  // bench-1b down: Fprop B = W [1024, 384] (K = 3 x 128); Dgrad B = W^T [384, 1024].
  run_case(stream_, blas_, {"down fprop", {256, 512, 0, 128}, 896, 1024, 384});
  run_case(stream_, blas_, {"down dgrad", {512, 0, 384}, 896 + 128, 384, 1024});
}

TEST_F(GroupedGemmFp8Sm90Test, RefusesUnsupportedArguments) {
  DeviceArray<int64_t> offsets(2);
  offsets.upload({0, 0});
  DeviceArray<uint8_t> a(256 * 256 + 16), b(256 * 256);
  DeviceArray<float> s(1024), dw(256 * 256);
  DeviceArray<uint16_t> out(256 * 256);
  auto* y = testing::as_bf16(out.get());
  EXPECT_FALSE(cuda::grouped_gemm_fp8_sm90_supported(96, 128));
  EXPECT_FALSE(cuda::grouped_gemm_fp8_sm90_supported(128, 0));
  EXPECT_TRUE(cuda::grouped_gemm_fp8_sm90_supported(384, 1024));
  EXPECT_THROW(cuda::grouped_gemm_fp8_sm90_nt(1, offsets.get(), 0, 96, 128, a.get(), s.get(),
                                              b.get(), s.get(), y, stream_),
               Error);
  EXPECT_THROW(cuda::grouped_gemm_fp8_sm90_nt(257, offsets.get(), 0, 128, 128, a.get(), s.get(),
                                              b.get(), s.get(), y, stream_),
               Error);
  EXPECT_THROW(cuda::grouped_gemm_fp8_sm90_nt(1, offsets.get(), 128, 128, 128, a.get() + 8,
                                              s.get(), b.get(), s.get(), y, stream_),
               Error);
  EXPECT_THROW(cuda::grouped_gemm_fp8_sm90_wgrad(1, offsets.get(), 128, 128, 128, a.get(),
                                                 s.get() + 1, b.get(), s.get(), dw.get(), false,
                                                 stream_),
               Error);
  EXPECT_THROW(cuda::grouped_gemm_fp8_sm90_wgrad(1, nullptr, 128, 128, 128, a.get(), s.get(),
                                                 b.get(), s.get(), dw.get(), false, stream_),
               Error);
  std::printf("CHECK | fp8_sm90 argument checks      | n=96 g=257 misaligned   | refused | ok\n");
}

}  // namespace frugal
