// CUDA FP8 quantizers against the CPU reference (kernels/quant): codes AND scales bit-identical,
// outputs poisoned with 0xFF first, with and without power-of-two scales, on four input patterns
// (see quant_input) and odd shapes (rows 1, 3, 130; cols 1, 100, 129, 7168; misaligned pointers):
//   quantize_act_1x128 <f32, bf16>   == cpu::quantize_act_1x128 of the (widened) input
//   dequantize_act_1x128 <f32, bf16> == cpu::dequantize_act_1x128 (bf16: then rounded)
//   transpose_quantize_1x128         == cpu::quantize_act_1x128 of the host-transposed matrix
//   quantize_weight_128x128 (+ _with_transpose): q, scales == cpu::quantize_weight_128x128; qT,
//     scalesT == their host transposes; quantize_weights_128x128_with_transpose (a stack of
//     matrices in one launch) == the CPU quantizer of each matrix
//   the _grouped forms: per group, == the CPU quantizer of the group's slice (transposed for the
//     Wgrad form) at the documented offsets; rows in no group (and empty groups) leave the outputs
//     untouched
#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/quant/quant.h"

namespace frugal {
namespace {

using testing::DeviceArray;

enum class Pattern { kNormal, kWideRange, kTiny, kMidpoints };
const Pattern kPatterns[] = {Pattern::kNormal, Pattern::kWideRange, Pattern::kTiny,
                             Pattern::kMidpoints};

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::kNormal: return "normal";
    case Pattern::kWideRange: return "wide";
    case Pattern::kTiny: return "tiny";
    case Pattern::kMidpoints: return "midpoints";
  }
  return "?";
}

// Quantizer inputs [rows, cols] (tiles run along a row):
//   normal     N(0, 1)
//   wide       N(0, 1) * 2^U{-20..20} per element: E4M3 subnormals and every rounding case
//   tiny       N(0, 1e-6), every third row zero: the 1e-4 amax clamp
//   midpoints  per row a power of two 2^k; column c % 128 == 0 holds +-448 * 2^k (so the scale is
//              exactly 2^k), every other column the exact midpoint between two adjacent E4M3 codes
//              times 2^k: x / scale is a tie, which must round to even on both sides
// Every value is also a bf16 value except for `normal` and `wide` (the bf16 tests round them).
std::vector<float> quant_input(Pattern pattern, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-20, 20);
  std::uniform_int_distribution<int> code_pick(0, 125);  // midpoint of codes c, c+1 <= 0x7E
  std::vector<float> x(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int row_exponent = exponent(gen) / 2;
    for (int64_t c = 0; c < cols; ++c) {
      float& v = x[r * cols + c];
      const bool negative = (gen() & 1) != 0;
      switch (pattern) {
        case Pattern::kNormal: v = normal(gen); break;
        case Pattern::kWideRange: v = std::ldexp(normal(gen), exponent(gen)); break;
        case Pattern::kTiny: v = r % 3 == 2 ? 0.0f : 1e-6f * normal(gen); break;
        case Pattern::kMidpoints: {
          float magnitude = 448.0f;
          if (c % kFp8BlockSize != 0) {
            const int code = code_pick(gen);
            magnitude = 0.5f * (e4m3_bits_to_float(static_cast<uint8_t>(code)) +
                                e4m3_bits_to_float(static_cast<uint8_t>(code + 1)));
          }
          v = std::ldexp(negative ? -magnitude : magnitude, row_exponent);
          break;
        }
      }
    }
  }
  return x;
}

template <class T>
std::vector<T> transpose(const std::vector<T>& x, int64_t rows, int64_t cols) {
  std::vector<T> out(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = x[r * cols + c];
  return out;
}

struct QuantCase {
  int64_t rows, cols;
  bool misaligned;
};

const QuantCase kActShapes[] = {{1, 1, false},    {1, 128, false},   {3, 129, false},
                                {3, 100, false},  {7, 300, false},   {64, 1024, false},
                                {33, 1001, false}, {130, 7168, false}, {130, 1, false},
                                {1, 7168, false}, {5, 4096, true},   {9, 130, true}};
const QuantCase kTransposeShapes[] = {{1, 1, false},    {3, 100, false},   {130, 129, false},
                                      {128, 64, false}, {257, 1024, false}, {300, 1001, false},
                                      {130, 1, false},  {1, 7168, false},  {256, 136, true},
                                      {129, 130, true}};
const QuantCase kWeightShapes[] = {{1, 1, false},      {128, 128, false},  {129, 130, false},
                                   {300, 260, false},  {1000, 1030, false}, {512, 7168, false},
                                   {257, 512, true},   {130, 131, true},   {3, 100, false}};

template <class T>
std::string case_text(const QuantCase& shape, Pattern pattern) {
  return testing::shape_text(shape.rows, shape.cols, shape.misaligned) + " " +
         pattern_name(pattern) + " " + testing::type_name<T>();
}

class QuantCuda : public testing::CudaTest {};

template <class T>
void check_quantize_act(cudaStream_t stream, const QuantCase& shape, Pattern pattern,
                        bool power_of_two) {
  const int64_t rows = shape.rows, cols = shape.cols, tiles = fp8_block_count(cols);
  const std::string text = case_text<T>(shape, pattern);
  const std::vector<float> x = testing::representable<T>(
      quant_input(pattern, rows, cols, testing::case_seed("act " + text, power_of_two)));
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(tiles * rows);
  cpu::quantize_act_1x128(q.data(), scales.data(), x.data(), rows, cols, power_of_two);

  DeviceArray<T> x_d(rows * cols, shape.misaligned);
  DeviceArray<float> scales_d(tiles * rows, shape.misaligned);
  DeviceArray<uint8_t> q_d(rows * cols, shape.misaligned);
  x_d.upload(testing::host_values<T>(x));
  q_d.poison();
  scales_d.poison();
  cuda::quantize_act_1x128<T>(q_d.get(), scales_d.get(), x_d.get(), rows, cols, power_of_two, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<uint8_t> q_gpu = q_d.download();
  const std::vector<float> scales_gpu = scales_d.download();
  testing::expect_quant_identical(power_of_two ? "quantize_act pow2" : "quantize_act", text, x, q_gpu,
                                  q, scales_gpu, scales);

  // Dequantize the CPU's codes: the same products as the CPU (bf16: then rounded).
  if (power_of_two) return;  // one dequantization check per case is enough
  std::vector<float> x_back(rows * cols);
  cpu::dequantize_act_1x128(x_back.data(), q.data(), scales.data(), rows, cols);
  DeviceArray<uint8_t> q_in_d(rows * cols, shape.misaligned);
  DeviceArray<float> scales_in_d(tiles * rows, shape.misaligned);
  DeviceArray<T> back_d(rows * cols, shape.misaligned);
  q_in_d.upload(q);
  scales_in_d.upload(scales);
  back_d.poison();
  cuda::dequantize_act_1x128<T>(back_d.get(), q_in_d.get(), scales_in_d.get(), rows, cols, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  testing::expect_identical_bits("dequantize_act", text, testing::to_float(back_d.download()),
                                 testing::representable<T>(x_back));
}

TEST_F(QuantCuda, QuantizeActivationIsBitIdentical) {
  for (bool power_of_two : {false, true})
    for (Pattern pattern : kPatterns)
      for (const QuantCase& shape : kActShapes) {
        check_quantize_act<float>(stream_, shape, pattern, power_of_two);
        check_quantize_act<__nv_bfloat16>(stream_, shape, pattern, power_of_two);
      }
}

template <class T>
void check_transpose_quantize(cudaStream_t stream, const QuantCase& shape, Pattern pattern,
                              bool power_of_two) {
  const int64_t rows = shape.rows, cols = shape.cols;
  const std::string text = case_text<T>(shape, pattern);
  // The pattern is laid out along the tiles, i.e. along the columns of xT [cols, rows].
  const std::vector<float> xT = testing::representable<T>(
      quant_input(pattern, cols, rows, testing::case_seed("transpose " + text, power_of_two)));
  const std::vector<float> x = transpose(xT, cols, rows);  // [rows, cols]
  const int64_t tiles = fp8_block_count(rows);
  std::vector<uint8_t> qT(cols * rows);
  std::vector<float> scales(tiles * cols);
  cpu::quantize_act_1x128(qT.data(), scales.data(), xT.data(), cols, rows, power_of_two);

  DeviceArray<T> x_d(rows * cols, shape.misaligned);
  DeviceArray<uint8_t> qT_d(cols * rows, shape.misaligned);
  DeviceArray<float> scales_d(tiles * cols, shape.misaligned);
  x_d.upload(testing::host_values<T>(x));
  qT_d.poison();
  scales_d.poison();
  cuda::transpose_quantize_1x128<T>(qT_d.get(), scales_d.get(), x_d.get(), rows, cols, power_of_two,
                                    stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  testing::expect_quant_identical(power_of_two ? "transpose_quantize pow2" : "transpose_quantize",
                                  text, xT, qT_d.download(), qT, scales_d.download(), scales);
}

TEST_F(QuantCuda, TransposeQuantizeIsBitIdentical) {
  for (bool power_of_two : {false, true})
    for (Pattern pattern : kPatterns)
      for (const QuantCase& shape : kTransposeShapes) {
        check_transpose_quantize<float>(stream_, shape, pattern, power_of_two);
        check_transpose_quantize<__nv_bfloat16>(stream_, shape, pattern, power_of_two);
      }
}

void check_quantize_weight(cudaStream_t stream, const QuantCase& shape, Pattern pattern,
                           bool power_of_two) {
  const int64_t rows = shape.rows, cols = shape.cols;
  const int64_t row_blocks = fp8_block_count(rows), col_blocks = fp8_block_count(cols);
  const int64_t blocks = row_blocks * col_blocks;
  const std::string text = case_text<float>(shape, pattern);
  const std::vector<float> w =
      quant_input(pattern, rows, cols, testing::case_seed("weight " + text, power_of_two));
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(blocks);
  cpu::quantize_weight_128x128(q.data(), scales.data(), w.data(), rows, cols, power_of_two);
  const std::vector<uint8_t> qT = transpose(q, rows, cols);
  const std::vector<float> scalesT = transpose(scales, row_blocks, col_blocks);

  DeviceArray<float> w_d(rows * cols, shape.misaligned), scales_d(blocks, shape.misaligned),
      scalesT_d(blocks, shape.misaligned);
  DeviceArray<uint8_t> q_d(rows * cols, shape.misaligned), qT_d(rows * cols, shape.misaligned);
  w_d.upload(w);
  const std::string suffix = power_of_two ? " pow2" : "";
  for (bool with_transpose : {false, true}) {
    q_d.poison();
    scales_d.poison();
    qT_d.poison();
    scalesT_d.poison();
    if (with_transpose)
      cuda::quantize_weight_128x128_with_transpose(q_d.get(), scales_d.get(), qT_d.get(),
                                                   scalesT_d.get(), w_d.get(), rows, cols,
                                                   power_of_two, stream);
    else
      cuda::quantize_weight_128x128(q_d.get(), scales_d.get(), w_d.get(), rows, cols, power_of_two,
                                    stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::string op = (with_transpose ? "quantize_weight+T" : "quantize_weight") + suffix;
    testing::expect_quant_identical(op, text, w, q_d.download(), q, scales_d.download(), scales);
    if (with_transpose)
      testing::expect_quant_identical(op + " T", text, transpose(w, rows, cols), qT_d.download(), qT,
                                      scalesT_d.download(), scalesT);
  }
}

TEST_F(QuantCuda, QuantizeWeightIsBitIdentical) {
  for (bool power_of_two : {false, true})
    for (Pattern pattern : kPatterns)
      for (const QuantCase& shape : kWeightShapes)
        check_quantize_weight(stream_, shape, pattern, power_of_two);
}

// A stack of matrices in one launch equals the CPU quantizer of each matrix (and its transpose).
void check_quantize_weight_stack(cudaStream_t stream, int64_t matrices, int64_t rows, int64_t cols,
                                 bool misaligned, bool power_of_two) {
  const int64_t row_blocks = fp8_block_count(rows), col_blocks = fp8_block_count(cols);
  const int64_t blocks = row_blocks * col_blocks, matrix = rows * cols;
  const std::string text = std::to_string(matrices) + " x " +
                           testing::shape_text(rows, cols, misaligned);
  const std::vector<float> w = quant_input(Pattern::kWideRange, matrices * rows, cols,
                                           testing::case_seed("weight stack " + text, power_of_two));
  std::vector<uint8_t> q(matrices * matrix), qT(matrices * matrix);
  std::vector<float> scales(matrices * blocks), scalesT(matrices * blocks);
  for (int64_t g = 0; g < matrices; ++g) {
    std::vector<uint8_t> q_g(matrix);
    std::vector<float> scales_g(blocks);
    cpu::quantize_weight_128x128(q_g.data(), scales_g.data(), w.data() + g * matrix, rows, cols,
                                 power_of_two);
    const std::vector<uint8_t> qT_g = transpose(q_g, rows, cols);
    const std::vector<float> scalesT_g = transpose(scales_g, row_blocks, col_blocks);
    std::copy(q_g.begin(), q_g.end(), q.begin() + g * matrix);
    std::copy(qT_g.begin(), qT_g.end(), qT.begin() + g * matrix);
    std::copy(scales_g.begin(), scales_g.end(), scales.begin() + g * blocks);
    std::copy(scalesT_g.begin(), scalesT_g.end(), scalesT.begin() + g * blocks);
  }
  DeviceArray<float> w_d(matrices * matrix, misaligned), scales_d(matrices * blocks, misaligned),
      scalesT_d(matrices * blocks, misaligned);
  DeviceArray<uint8_t> q_d(matrices * matrix, misaligned), qT_d(matrices * matrix, misaligned);
  w_d.upload(w);
  q_d.poison();
  scales_d.poison();
  qT_d.poison();
  scalesT_d.poison();
  cuda::quantize_weights_128x128_with_transpose(q_d.get(), scales_d.get(), qT_d.get(),
                                                scalesT_d.get(), w_d.get(), matrices, rows, cols,
                                                power_of_two, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::string op = std::string("quantize_weights stack") + (power_of_two ? " pow2" : "");
  testing::expect_quant_identical(op, text, w, q_d.download(), q, scales_d.download(), scales);
  testing::expect_quant_identical(op + " T", text, {}, qT_d.download(), qT, scalesT_d.download(),
                                  scalesT);
}

TEST_F(QuantCuda, QuantizeWeightStackEqualsEachMatrix) {
  for (bool power_of_two : {false, true}) {
    check_quantize_weight_stack(stream_, 3, 256, 384, false, power_of_two);
    check_quantize_weight_stack(stream_, 4, 200, 136, false, power_of_two);  // partial blocks
    check_quantize_weight_stack(stream_, 2, 129, 77, true, power_of_two);    // the scalar path
  }
  cuda::quantize_weights_128x128_with_transpose(nullptr, nullptr, nullptr, nullptr, nullptr, 0,
                                                128, 128, true, stream_);  // no matrix: nothing
  EXPECT_THROW(cuda::quantize_weights_128x128_with_transpose(nullptr, nullptr, nullptr, nullptr,
                                                             nullptr, -1, 128, 128, true, stream_),
               Error);
}

// ---- grouped forms -------------------------------------------------------------------------------

struct GroupCase {
  std::vector<int64_t> offsets;  // [groups + 1]
  int64_t rows, cols;            // rows may exceed offsets.back(): those rows are in no group
  bool misaligned;
  bool transposed = true;  // false: groups not multiples of 128 rows (the transposed form needs them)
};

const GroupCase kGroupCases[] = {
    {{0, 128, 128, 384, 512}, 549, 100, false},  // an empty group, 37 rows past the last group
    {{0, 256}, 256, 7168, false},
    {{0, 128, 256, 384}, 384, 129, true},
    {{128, 256, 640}, 700, 1024, false},  // rows before the first group too
    {{0, 0, 0}, 5, 64, false},            // every group empty: nothing written
    // Groups of any size (the plain form takes them): the quantizer's blocks of 64 rows straddle
    // groups, whose rows then look their groups up one by one.
    {{0, 5, 70, 200, 200, 333}, 340, 300, false, false},
    {{3, 64, 65, 191}, 200, 136, true, false},
};

template <class T>
void check_grouped(cudaStream_t stream, const GroupCase& gc, Pattern pattern, bool power_of_two) {
  const int64_t groups = static_cast<int64_t>(gc.offsets.size()) - 1;
  const int64_t rows = gc.rows, cols = gc.cols, tiles = fp8_block_count(cols);
  std::string text = testing::shape_text(rows, cols, gc.misaligned) + " g" + std::to_string(groups) +
                     " " + pattern_name(pattern) + " " + testing::type_name<T>();
  const std::vector<float> x = testing::representable<T>(
      quant_input(pattern, rows, cols, testing::case_seed("grouped " + text, power_of_two)));

  // Expected outputs: 0xFF poison everywhere no group writes.
  std::vector<uint8_t> q(rows * cols, 0xFF), qT(rows * cols, 0xFF);
  const float poison = std::bit_cast<float>(0xFFFFFFFFu);
  std::vector<float> scales(rows * tiles, poison), scalesT(fp8_block_count(rows) * cols, poison);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t base = gc.offsets[g], group_rows = gc.offsets[g + 1] - base;
    if (group_rows == 0) continue;
    const float* x_group = x.data() + base * cols;
    cpu::quantize_act_1x128(q.data() + base * cols, scales.data() + base * tiles, x_group, group_rows,
                            cols, power_of_two);
    if (!gc.transposed) continue;
    const std::vector<float> group_T =
        transpose(std::vector<float>(x_group, x_group + group_rows * cols), group_rows, cols);
    cpu::quantize_act_1x128(qT.data() + base * cols, scalesT.data() + base / kFp8BlockSize * cols,
                            group_T.data(), cols, group_rows, power_of_two);
  }

  DeviceArray<T> x_d(rows * cols, gc.misaligned);
  DeviceArray<int64_t> offsets_d(groups + 1);
  DeviceArray<uint8_t> q_d(rows * cols, gc.misaligned), qT_d(rows * cols, gc.misaligned);
  DeviceArray<float> scales_d(rows * tiles, gc.misaligned),
      scalesT_d(fp8_block_count(rows) * cols, gc.misaligned);
  x_d.upload(testing::host_values<T>(x));
  offsets_d.upload(gc.offsets);
  q_d.poison();
  qT_d.poison();
  scales_d.poison();
  scalesT_d.poison();
  cuda::quantize_act_1x128_grouped<T>(q_d.get(), scales_d.get(), x_d.get(), offsets_d.get(), groups,
                                      rows, cols, power_of_two, stream);
  if (gc.transposed)
    cuda::transpose_quantize_1x128_grouped<T>(qT_d.get(), scalesT_d.get(), x_d.get(),
                                              offsets_d.get(), groups, rows, cols, power_of_two,
                                              stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::string suffix = power_of_two ? " pow2" : "";
  testing::expect_quant_identical("quantize_act_grouped" + suffix, text, x, q_d.download(), q,
                                  scales_d.download(), scales);
  if (gc.transposed)
    testing::expect_quant_identical("transpose_quantize_grouped" + suffix, text, {},
                                    qT_d.download(), qT, scalesT_d.download(), scalesT);
}

TEST_F(QuantCuda, GroupedQuantizersMatchPerGroupCpu) {
  for (bool power_of_two : {false, true})
    for (Pattern pattern : {Pattern::kNormal, Pattern::kMidpoints})
      for (const GroupCase& gc : kGroupCases) {
        check_grouped<float>(stream_, gc, pattern, power_of_two);
        check_grouped<__nv_bfloat16>(stream_, gc, pattern, power_of_two);
      }
}

TEST_F(QuantCuda, QuantLaunchersRejectBadArguments) {
  EXPECT_THROW(cuda::quantize_act_1x128<float>(nullptr, nullptr, nullptr, -1, 128, false, stream_),
               Error);
  EXPECT_THROW(cuda::quantize_act_1x128<float>(nullptr, nullptr, nullptr, 4, 128, false, stream_),
               Error);
  EXPECT_THROW(cuda::transpose_quantize_1x128<__nv_bfloat16>(nullptr, nullptr, nullptr, 4, 128,
                                                             false, stream_),
               Error);
  EXPECT_THROW(cuda::quantize_act_1x128_grouped<float>(nullptr, nullptr, nullptr, nullptr, -1, 4,
                                                       128, false, stream_),
               Error);
  EXPECT_THROW(cuda::quantize_weight_128x128_with_transpose(nullptr, nullptr, nullptr, nullptr,
                                                            nullptr, 128, 128, false, stream_),
               Error);
  // Empty shapes launch nothing and succeed.
  cuda::quantize_weight_128x128(nullptr, nullptr, nullptr, 0, 128, true, stream_);
  cuda::dequantize_act_1x128<float>(nullptr, nullptr, nullptr, 5, 0, stream_);
  cuda::transpose_quantize_1x128_grouped<float>(nullptr, nullptr, nullptr, nullptr, 0, 128, 128,
                                                false, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
