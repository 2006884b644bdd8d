// The one-pass FP8 quantizer of both Linear operands (cuda::quantize_act_1x128_dual and its
// grouped form, kernels/quant/quant.h) against the two quantizers it replaces, run on the same
// bf16 input: quantize_act_1x128(_grouped) for q, scales and transpose_quantize_1x128(_grouped)
// for qT, scalesT (both tested bit for bit against the CPU reference in test_quant_cuda.cc). Codes
// and scales must be identical, every output poisoned with 0xFF first (rows in no group stay
// poisoned in both), with and without power-of-two scales, on N(0, 1) and on values spread over
// 2^-20..2^20 (E4M3 subnormals), for odd and misaligned shapes (partial row and column tiles, the
// scalar path) and group layouts with empty groups and rows outside every group.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda_test_util.h"
#include "kernels/quant/quant.h"

namespace frugal {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceArray;

class QuantDualCuda : public testing::CudaTest {};

// rows x cols bf16 values: N(0, 1), or (wide) N(0, 1) * 2^U{-20..20} per element.
std::vector<float> dual_input(int64_t rows, int64_t cols, bool wide, uint64_t seed) {
  std::vector<float> x = testing::random_normal(rows * cols, seed);
  if (wide) {
    std::mt19937_64 gen(seed ^ 0x5EEDu);
    std::uniform_int_distribution<int> exponent(-20, 20);
    for (float& v : x) v = std::ldexp(v, exponent(gen));
  }
  return testing::representable<bf16>(x);
}

// One case: offsets empty = the plain form, else the grouped form over them.
struct DualCase {
  int64_t rows, cols;
  bool misaligned;
  std::vector<int64_t> offsets;
};

const DualCase kDualCases[] = {
    {1, 1, false, {}},
    {3, 129, false, {}},
    {130, 1000, false, {}},
    {256, 1024, false, {}},
    {200, 136, true, {}},  // partial tiles, misaligned: the scalar path
    {129, 77, false, {}},  // cols % 8 != 0: the scalar path
    {549, 100, false, {0, 128, 128, 384, 512}},   // an empty group, rows past the last group
    {700, 1024, false, {128, 256, 640}},          // rows before the first group too
    {384, 136, true, {0, 128, 256, 384}},
    {5, 64, false, {0, 0, 0}},                     // every group empty: nothing written
};

void check_dual(cudaStream_t stream, const DualCase& dc, bool wide, bool power_of_two) {
  const int64_t rows = dc.rows, cols = dc.cols, n = rows * cols;
  const int64_t tiles = fp8_block_count(cols), row_tiles = fp8_block_count(rows);
  const bool grouped = !dc.offsets.empty();
  const int64_t groups = grouped ? static_cast<int64_t>(dc.offsets.size()) - 1 : 0;
  const std::string text = testing::shape_text(rows, cols, dc.misaligned) +
                           (grouped ? " g" + std::to_string(groups) : "") +
                           (wide ? " wide" : " normal");
  const std::vector<float> x = dual_input(rows, cols, wide, testing::case_seed("dual " + text));
  DeviceArray<bf16> x_d(n, dc.misaligned);
  x_d.upload(testing::host_values<bf16>(x));
  DeviceArray<int64_t> offsets_d(grouped ? groups + 1 : 0);
  if (grouped) offsets_d.upload(dc.offsets);

  struct Outputs {
    DeviceArray<uint8_t> q, qT;
    DeviceArray<float> scales, scalesT;
    Outputs(int64_t n, int64_t s, int64_t sT, bool misaligned)
        : q(n, misaligned), qT(n, misaligned), scales(s, misaligned), scalesT(sT, misaligned) {
      q.poison();
      qT.poison();
      scales.poison();
      scalesT.poison();
    }
  };
  Outputs dual(n, rows * tiles, row_tiles * cols, dc.misaligned);
  Outputs separate(n, rows * tiles, row_tiles * cols, dc.misaligned);
  if (grouped) {
    cuda::quantize_act_1x128_dual_grouped(dual.q.get(), dual.scales.get(), dual.qT.get(),
                                          dual.scalesT.get(), x_d.get(), offsets_d.get(), groups,
                                          rows, cols, power_of_two, stream);
    cuda::quantize_act_1x128_grouped<bf16>(separate.q.get(), separate.scales.get(), x_d.get(),
                                           offsets_d.get(), groups, rows, cols, power_of_two,
                                           stream);
    cuda::transpose_quantize_1x128_grouped<bf16>(separate.qT.get(), separate.scalesT.get(),
                                                 x_d.get(), offsets_d.get(), groups, rows, cols,
                                                 power_of_two, stream);
  } else {
    cuda::quantize_act_1x128_dual(dual.q.get(), dual.scales.get(), dual.qT.get(),
                                  dual.scalesT.get(), x_d.get(), rows, cols, power_of_two, stream);
    cuda::quantize_act_1x128<bf16>(separate.q.get(), separate.scales.get(), x_d.get(), rows, cols,
                                   power_of_two, stream);
    cuda::transpose_quantize_1x128<bf16>(separate.qT.get(), separate.scalesT.get(), x_d.get(),
                                         rows, cols, power_of_two, stream);
  }
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::string suffix = power_of_two ? " pow2" : "";
  testing::expect_quant_identical("dual quantize rows" + suffix, text, x, dual.q.download(),
                                  separate.q.download(), dual.scales.download(),
                                  separate.scales.download());
  testing::expect_quant_identical("dual quantize transposed" + suffix, text, {},
                                  dual.qT.download(), separate.qT.download(),
                                  dual.scalesT.download(), separate.scalesT.download());
}

TEST_F(QuantDualCuda, EqualsTheTwoQuantizersItReplaces) {
  for (bool power_of_two : {false, true})
    for (bool wide : {false, true})
      for (const DualCase& dc : kDualCases) check_dual(stream_, dc, wide, power_of_two);
}

TEST_F(QuantDualCuda, RejectsBadArguments) {
  EXPECT_THROW(cuda::quantize_act_1x128_dual(nullptr, nullptr, nullptr, nullptr, nullptr, -1, 128,
                                             false, stream_),
               Error);
  EXPECT_THROW(cuda::quantize_act_1x128_dual(nullptr, nullptr, nullptr, nullptr, nullptr, 4, 128,
                                             false, stream_),
               Error);
  EXPECT_THROW(cuda::quantize_act_1x128_dual_grouped(nullptr, nullptr, nullptr, nullptr, nullptr,
                                                     nullptr, 2, 128, 128, false, stream_),
               Error);
  // Empty shapes launch nothing and succeed.
  cuda::quantize_act_1x128_dual(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 128, true,
                                stream_);
  cuda::quantize_act_1x128_dual_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0,
                                        128, 128, true, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
