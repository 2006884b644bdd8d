// The one-pass FP8 quantizer of both Linear operands (cuda::quantize_act_1x128_dual and its
// grouped form, kernels/quant/quant.h), bit for bit against the CPU reference:
// cpu::quantize_act_1x128 of x for q, scales and of x^T (per group when grouped) for qT, scalesT.
// The two quantizers it replaces (quantize_act_1x128(_grouped), transpose_quantize_1x128(_grouped))
// are checked against the same reference on the same input.
// Codes and scales must be identical, every output poisoned with 0xFF first (rows in no group stay
// poisoned), with and without power-of-two scales, on N(0, 1) and on values spread over
// 2^-20..2^20 (E4M3 subnormals), for odd and misaligned shapes (partial row and column tiles, the
// scalar path), qT columns only 8- or 4-byte aligned, group layouts with empty groups and rows
// outside every group, and matrices of many tiles (more than the blocks resident on an H200). The
// gathered grouped form (rows read through a permute_rows row assignment, padding rows zero) on
// the grouped cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <cstring>
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
    {264, 384, false, {}},  // qT columns 8-byte aligned only
    {260, 200, false, {}},  // qT columns 4-byte aligned only
    {549, 100, false, {0, 128, 128, 384, 512}},   // an empty group, rows past the last group
    {700, 1024, false, {128, 256, 640}},          // rows before the first group too
    {384, 136, true, {0, 128, 256, 384}},
    {5, 64, false, {0, 0, 0}},                     // every group empty: nothing written
    // many tiles: more than the blocks resident at once (2 x 132 SMs on an H200)
    {8300, 1000, false, {}},
    {8192, 2048, false, {}},
    {12800, 768, false, {0, 1280, 1280, 6400, 12672}},
    {9000, 264, true, {0, 3072, 8960}},
};

// The CPU reference's outputs (0xFF bytes where nothing is written), as the dual quantizer lays
// them out: the plain form is one group of all rows.
struct DualExpected {
  std::vector<uint8_t> q, qT;
  std::vector<float> scales, scalesT;
};

DualExpected cpu_dual(const std::vector<float>& x, int64_t rows, int64_t cols,
                      const std::vector<int64_t>& offsets, bool power_of_two) {
  const int64_t tiles = fp8_block_count(cols), n = rows * cols;
  float poison_scale;
  const uint32_t poison_bits = 0xFFFFFFFFu;
  std::memcpy(&poison_scale, &poison_bits, sizeof poison_scale);
  DualExpected e{std::vector<uint8_t>(n, 0xFF), std::vector<uint8_t>(n, 0xFF),
                 std::vector<float>(rows * tiles, poison_scale),
                 std::vector<float>(fp8_block_count(rows) * cols, poison_scale)};
  const std::vector<int64_t> bounds = offsets.empty() ? std::vector<int64_t>{0, rows} : offsets;
  for (size_t g = 0; g + 1 < bounds.size(); ++g) {
    const int64_t base = bounds[g], group_rows = bounds[g + 1] - base;
    if (group_rows == 0) continue;
    cpu::quantize_act_1x128(e.q.data() + base * cols, e.scales.data() + base * tiles,
                            x.data() + base * cols, group_rows, cols, power_of_two);
    std::vector<float> transposed(group_rows * cols);  // [cols, group_rows]
    for (int64_t r = 0; r < group_rows; ++r)
      for (int64_t c = 0; c < cols; ++c) transposed[c * group_rows + r] = x[(base + r) * cols + c];
    cpu::quantize_act_1x128(e.qT.data() + base * cols,
                            e.scalesT.data() + base / kFp8BlockSize * cols, transposed.data(),
                            cols, group_rows, power_of_two);
  }
  return e;
}

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
  const std::string suffix = power_of_two ? " pow2" : "";
  const DualExpected expected = cpu_dual(x, rows, cols, dc.offsets, power_of_two);
  auto expect_outputs = [&](const std::string& op, Outputs& out) {
    testing::expect_quant_identical(op + " rows" + suffix, text, x, out.q.download(), expected.q,
                                    out.scales.download(), expected.scales);
    testing::expect_quant_identical(op + " transposed" + suffix, text, {}, out.qT.download(),
                                    expected.qT, out.scalesT.download(), expected.scalesT);
  };

  // The two quantizers the dual one replaces, on the same input.
  {
    Outputs separate(n, rows * tiles, row_tiles * cols, dc.misaligned);
    if (grouped) {
      cuda::quantize_act_1x128_grouped<bf16>(separate.q.get(), separate.scales.get(), x_d.get(),
                                             offsets_d.get(), groups, rows, cols, power_of_two,
                                             stream);
      cuda::transpose_quantize_1x128_grouped<bf16>(separate.qT.get(), separate.scalesT.get(),
                                                   x_d.get(), offsets_d.get(), groups, rows, cols,
                                                   power_of_two, stream);
    } else {
      cuda::quantize_act_1x128<bf16>(separate.q.get(), separate.scales.get(), x_d.get(), rows,
                                     cols, power_of_two, stream);
      cuda::transpose_quantize_1x128<bf16>(separate.qT.get(), separate.scalesT.get(), x_d.get(),
                                           rows, cols, power_of_two, stream);
    }
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    expect_outputs("separate quantize", separate);
  }
  {
    Outputs dual(n, rows * tiles, row_tiles * cols, dc.misaligned);
    if (grouped)
      cuda::quantize_act_1x128_dual_grouped(dual.q.get(), dual.scales.get(), dual.qT.get(),
                                            dual.scalesT.get(), x_d.get(), offsets_d.get(),
                                            groups, rows, cols, power_of_two, stream);
    else
      cuda::quantize_act_1x128_dual(dual.q.get(), dual.scales.get(), dual.qT.get(),
                                    dual.scalesT.get(), x_d.get(), rows, cols, power_of_two,
                                    stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    expect_outputs("dual", dual);
  }
}

// The gathered grouped form: x of a grouped case is made the permutation of a shuffled source
// matrix (row r = src[perm[r]], reached through row_assignment[r] = perm[r] * top_k + r % top_k),
// with every 7th row a padding row (row_assignment -1, zeros in x); codes and scales as the CPU
// reference of x.
void check_gather(cudaStream_t stream, const DualCase& dc, bool power_of_two) {
  const int64_t rows = dc.rows, cols = dc.cols, n = rows * cols, top_k = 3;
  const int64_t tiles = fp8_block_count(cols), row_tiles = fp8_block_count(rows);
  const int64_t groups = static_cast<int64_t>(dc.offsets.size()) - 1;
  const std::string text = testing::shape_text(rows, cols, dc.misaligned) + " g" +
                           std::to_string(groups) + " gathered";
  std::vector<float> x = dual_input(rows, cols, false, testing::case_seed("gather " + text));
  std::vector<int64_t> perm(rows);
  for (int64_t r = 0; r < rows; ++r) perm[r] = r;
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(testing::case_seed("perm " + text)));
  std::vector<float> src(n);
  std::vector<int32_t> assignment(rows);
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 7 == 3) {  // a padding row
      assignment[r] = -1;
      std::fill(x.begin() + r * cols, x.begin() + (r + 1) * cols, 0.0f);
      continue;
    }
    assignment[r] = static_cast<int32_t>(perm[r] * top_k + r % top_k);
    std::copy(x.begin() + r * cols, x.begin() + (r + 1) * cols, src.begin() + perm[r] * cols);
  }
  DeviceArray<bf16> src_d(n, dc.misaligned);
  src_d.upload(testing::host_values<bf16>(src));
  DeviceArray<int32_t> assignment_d(rows);
  assignment_d.upload(assignment);
  DeviceArray<int64_t> offsets_d(groups + 1);
  offsets_d.upload(dc.offsets);
  DeviceArray<uint8_t> q(n, dc.misaligned), qT(n, dc.misaligned);
  DeviceArray<float> scales(rows * tiles, dc.misaligned), scalesT(row_tiles * cols, dc.misaligned);
  q.poison();
  qT.poison();
  scales.poison();
  scalesT.poison();
  cuda::quantize_act_1x128_dual_grouped_gather(q.get(), scales.get(), qT.get(), scalesT.get(),
                                               src_d.get(), assignment_d.get(), top_k,
                                               offsets_d.get(), groups, rows, cols, power_of_two,
                                               stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const DualExpected expected = cpu_dual(x, rows, cols, dc.offsets, power_of_two);
  const std::string suffix = power_of_two ? " pow2" : "";
  testing::expect_quant_identical("dual gathered rows" + suffix, text, x, q.download(), expected.q,
                                  scales.download(), expected.scales);
  testing::expect_quant_identical("dual gathered transposed" + suffix, text, {}, qT.download(),
                                  expected.qT, scalesT.download(), expected.scalesT);
}

TEST_F(QuantDualCuda, GatheredEqualsTheCpuReferenceOfThePermutedRows) {
  for (bool power_of_two : {false, true})
    for (const DualCase& dc : kDualCases)
      if (!dc.offsets.empty()) check_gather(stream_, dc, power_of_two);
}

TEST_F(QuantDualCuda, EqualsTheCpuReference) {
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
  EXPECT_THROW(cuda::quantize_act_1x128_dual_grouped(nullptr, nullptr, nullptr, nullptr, nullptr,
                                                     nullptr, -1, 128, 128, false, stream_),
               Error);
  EXPECT_THROW(cuda::quantize_act_1x128_dual_grouped_gather(nullptr, nullptr, nullptr, nullptr,
                                                            nullptr, nullptr, 0, nullptr, 1, 128,
                                                            128, false, stream_),
               Error);  // top_k 0
  EXPECT_THROW(cuda::quantize_act_1x128_dual_grouped_gather(nullptr, nullptr, nullptr, nullptr,
                                                            nullptr, nullptr, 2, nullptr, 1, 128,
                                                            128, false, stream_),
               Error);  // null pointers
  // Empty shapes launch nothing and succeed.
  cuda::quantize_act_1x128_dual(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 128, true,
                                stream_);
  cuda::quantize_act_1x128_dual_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0,
                                        128, 128, true, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
