// The fused FP8 SwiGLU kernels of the MoE experts (cuda::swiglu_fwd_fp8_grouped and
// swiglu_bwd_fp8_grouped, kernels/swiglu/swiglu.h) against the unfused sequences of GPU kernels
// they replace, run on the same bf16 inputs:
//   forward:  swiglu_fwd<bf16> -> h; quantize_act_1x128<bf16> of gu (the cache: codes + scales);
//             quantize_act_1x128_dual_grouped of h (h's codes + scales and h^T's)
//   backward: dequantize_act_1x128<bf16> of the cache -> gu; swiglu_bwd<bf16> -> dgu = [dg | du];
//             quantize_act_1x128_dual_grouped of dgu
// Every code and scale must be identical (the unfused kernels are tested bit for bit against the
// CPU reference in test_quant_cuda.cc / test_quant_dual_cuda.cc and against the CPU in
// test_swiglu_cuda.cc). Every output is poisoned with 0xFF first on both sides (rows in no group
// keep the poison in h's and dgu's operands on both). Cases: inter 128 and 384 (one and three
// column tiles per row tile), power-of-two scales on and off, N(0, 1) inputs and values spread over
// 2^-20..2^20, group layouts with empty groups, rows before the first and after the last group (a
// partial last row tile), no groups at all, and misaligned arrays (the scalar paths). Also: the
// refusal of an intermediate size that is not a multiple of 128, and the other bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda_test_util.h"
#include "kernels/quant/quant.h"
#include "kernels/swiglu/swiglu.h"

namespace frugal {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceArray;

class SwigluFp8Cuda : public testing::CudaTest {};

// count bf16 values: N(0, 1), or (wide) N(0, 1) * 2^U{-20..20} per element.
std::vector<float> bf16_input(int64_t count, bool wide, uint64_t seed) {
  std::vector<float> x = testing::random_normal(count, seed);
  if (wide) {
    std::mt19937_64 gen(seed ^ 0x5EEDu);
    std::uniform_int_distribution<int> exponent(-20, 20);
    for (float& v : x) v = std::ldexp(v, exponent(gen));
  }
  return testing::representable<bf16>(x);
}

struct FusedCase {
  int64_t rows, inter;
  bool misaligned;
  std::vector<int64_t> offsets;  // [groups+1]; {0}: no groups
};

const FusedCase kCases[] = {
    {256, 128, false, {0, 128, 256}},
    {256, 384, false, {0, 256}},
    {549, 384, false, {0, 128, 128, 384, 512}},  // an empty group, rows past the last group
    {700, 128, false, {128, 256, 640}},          // rows before the first group too
    {384, 384, true, {0, 128, 256, 384}},        // misaligned: the scalar paths
    {200, 128, true, {0, 128}},                  // misaligned, a partial tile in no group
    {5, 128, false, {0, 0, 0}},                  // every group empty: only the cache
    {130, 256, false, {0}},                      // no groups: only the cache
};

// The 1x128 operands of a matrix [rows, cols] under quantize_act_1x128_dual_grouped, poisoned.
struct DualOperands {
  DeviceArray<uint8_t> q, qT;
  DeviceArray<float> scales, scalesT;
  DualOperands(int64_t rows, int64_t cols, bool misaligned)
      : q(rows * cols, misaligned),
        qT(rows * cols, misaligned),
        scales(rows * fp8_block_count(cols), misaligned),
        scalesT(fp8_block_count(rows) * cols, misaligned) {
    q.poison();
    qT.poison();
    scales.poison();
    scalesT.poison();
  }
};

// The FP8 cache of gu [rows, 2*inter] (quantize_act_1x128 layout), poisoned.
struct CacheOperands {
  DeviceArray<uint8_t> q;
  DeviceArray<float> scales;
  CacheOperands(int64_t rows, int64_t cols, bool misaligned)
      : q(rows * cols, misaligned), scales(rows * fp8_block_count(cols), misaligned) {
    q.poison();
    scales.poison();
  }
};

std::string case_text(const FusedCase& fc, bool wide) {
  return testing::shape_text(fc.rows, fc.inter, fc.misaligned) + " g" +
         std::to_string(fc.offsets.size() - 1) + (wide ? " wide" : " normal");
}

void expect_dual_identical(const std::string& what, const std::string& text, DualOperands& got,
                           DualOperands& want) {
  testing::expect_quant_identical(what + " rows", text, {}, got.q.download(), want.q.download(),
                                  got.scales.download(), want.scales.download());
  testing::expect_quant_identical(what + " transposed", text, {}, got.qT.download(),
                                  want.qT.download(), got.scalesT.download(),
                                  want.scalesT.download());
}

void check_forward(cudaStream_t stream, const FusedCase& fc, bool wide, bool power_of_two) {
  const int64_t rows = fc.rows, inter = fc.inter, width = 2 * inter;
  const int64_t groups = static_cast<int64_t>(fc.offsets.size()) - 1;
  const std::string text = case_text(fc, wide) + (power_of_two ? " pow2" : "");
  const std::vector<float> gu = bf16_input(rows * width, wide, testing::case_seed("fwd " + text));
  DeviceArray<bf16> gu_d(rows * width, fc.misaligned);
  gu_d.upload(testing::host_values<bf16>(gu));
  DeviceArray<int64_t> offsets_d(groups + 1);
  offsets_d.upload(fc.offsets);

  // Unfused: h in bf16, the cache of gu, both operands of h.
  CacheOperands want_cache(rows, width, fc.misaligned);
  DualOperands want_h(rows, inter, fc.misaligned);
  DeviceArray<bf16> h_d(rows * inter, fc.misaligned);
  cuda::swiglu_fwd<bf16>(h_d.get(), gu_d.get(), gu_d.get() + inter, rows, inter, width, stream);
  cuda::quantize_act_1x128<bf16>(want_cache.q.get(), want_cache.scales.get(), gu_d.get(), rows,
                                 width, power_of_two, stream);
  cuda::quantize_act_1x128_dual_grouped(want_h.q.get(), want_h.scales.get(), want_h.qT.get(),
                                        want_h.scalesT.get(), h_d.get(), offsets_d.get(), groups,
                                        rows, inter, power_of_two, stream);
  // Fused.
  CacheOperands got_cache(rows, width, fc.misaligned);
  DualOperands got_h(rows, inter, fc.misaligned);
  cuda::swiglu_fwd_fp8_grouped(got_cache.q.get(), got_cache.scales.get(), got_h.q.get(),
                               got_h.scales.get(), got_h.qT.get(), got_h.scalesT.get(), gu_d.get(),
                               offsets_d.get(), groups, rows, inter, power_of_two, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  testing::expect_quant_identical("fused fwd gu cache", text, gu, got_cache.q.download(),
                                  want_cache.q.download(), got_cache.scales.download(),
                                  want_cache.scales.download());
  expect_dual_identical("fused fwd h", text, got_h, want_h);
}

void check_backward(cudaStream_t stream, const FusedCase& fc, bool wide, bool power_of_two) {
  const int64_t rows = fc.rows, inter = fc.inter, width = 2 * inter;
  const int64_t groups = static_cast<int64_t>(fc.offsets.size()) - 1;
  const std::string text = case_text(fc, wide) + (power_of_two ? " pow2" : "");
  const std::vector<float> gu =
      bf16_input(rows * width, wide, testing::case_seed("bwd gu " + text));
  const std::vector<float> dh =
      bf16_input(rows * inter, wide, testing::case_seed("bwd dh " + text));
  DeviceArray<int64_t> offsets_d(groups + 1);
  offsets_d.upload(fc.offsets);
  DeviceArray<bf16> dh_d(rows * inter, fc.misaligned);
  dh_d.upload(testing::host_values<bf16>(dh));
  // The forward's cache of gu, as the model keeps it.
  CacheOperands cache(rows, width, fc.misaligned);
  {
    DeviceArray<bf16> gu_d(rows * width, fc.misaligned);
    gu_d.upload(testing::host_values<bf16>(gu));
    cuda::quantize_act_1x128<bf16>(cache.q.get(), cache.scales.get(), gu_d.get(), rows, width,
                                   power_of_two, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // Unfused: gu expanded to bf16, dgu = [dg | du] in bf16, both operands of dgu.
  DualOperands want(rows, width, fc.misaligned);
  DeviceArray<bf16> gu_expanded(rows * width, fc.misaligned);
  DeviceArray<bf16> dgu_d(rows * width, fc.misaligned);
  cuda::dequantize_act_1x128<bf16>(gu_expanded.get(), cache.q.get(), cache.scales.get(), rows,
                                   width, stream);
  cuda::swiglu_bwd<bf16>(dgu_d.get(), dgu_d.get() + inter, dh_d.get(), gu_expanded.get(),
                         gu_expanded.get() + inter, rows, inter, width, stream);
  cuda::quantize_act_1x128_dual_grouped(want.q.get(), want.scales.get(), want.qT.get(),
                                        want.scalesT.get(), dgu_d.get(), offsets_d.get(), groups,
                                        rows, width, power_of_two, stream);
  // Fused.
  DualOperands got(rows, width, fc.misaligned);
  cuda::swiglu_bwd_fp8_grouped(got.q.get(), got.scales.get(), got.qT.get(), got.scalesT.get(),
                               dh_d.get(), cache.q.get(), cache.scales.get(), offsets_d.get(),
                               groups, rows, inter, power_of_two, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_dual_identical("fused bwd dgu", text, got, want);
}

TEST_F(SwigluFp8Cuda, ForwardEqualsSwigluAndTheQuantizersItReplaces) {
  for (bool power_of_two : {false, true})
    for (bool wide : {false, true})
      for (const FusedCase& fc : kCases) check_forward(stream_, fc, wide, power_of_two);
}

TEST_F(SwigluFp8Cuda, BackwardEqualsDequantizeSwigluBwdAndTheQuantizerItReplaces) {
  for (bool power_of_two : {false, true})
    for (bool wide : {false, true})
      for (const FusedCase& fc : kCases) check_backward(stream_, fc, wide, power_of_two);
}

// The model's real cache: the backward fed by the fused forward's cache equals the unfused chain.
TEST_F(SwigluFp8Cuda, FusedForwardCacheFeedsTheFusedBackward) {
  const FusedCase fc{512, 384, false, {0, 128, 384, 384, 512}};
  const int64_t rows = fc.rows, inter = fc.inter, width = 2 * inter, groups = 4;
  const std::vector<float> gu = bf16_input(rows * width, false, testing::case_seed("chain gu"));
  const std::vector<float> dh = bf16_input(rows * inter, false, testing::case_seed("chain dh"));
  DeviceArray<bf16> gu_d(rows * width), dh_d(rows * inter);
  gu_d.upload(testing::host_values<bf16>(gu));
  dh_d.upload(testing::host_values<bf16>(dh));
  DeviceArray<int64_t> offsets_d(groups + 1);
  offsets_d.upload(fc.offsets);
  CacheOperands cache(rows, width, false);
  DualOperands h(rows, inter, false), got(rows, width, false), want(rows, width, false);
  cuda::swiglu_fwd_fp8_grouped(cache.q.get(), cache.scales.get(), h.q.get(), h.scales.get(),
                               h.qT.get(), h.scalesT.get(), gu_d.get(), offsets_d.get(), groups,
                               rows, inter, true, stream_);
  cuda::swiglu_bwd_fp8_grouped(got.q.get(), got.scales.get(), got.qT.get(), got.scalesT.get(),
                               dh_d.get(), cache.q.get(), cache.scales.get(), offsets_d.get(),
                               groups, rows, inter, true, stream_);
  DeviceArray<bf16> gu_expanded(rows * width), dgu_d(rows * width);
  cuda::dequantize_act_1x128<bf16>(gu_expanded.get(), cache.q.get(), cache.scales.get(), rows,
                                   width, stream_);
  cuda::swiglu_bwd<bf16>(dgu_d.get(), dgu_d.get() + inter, dh_d.get(), gu_expanded.get(),
                         gu_expanded.get() + inter, rows, inter, width, stream_);
  cuda::quantize_act_1x128_dual_grouped(want.q.get(), want.scales.get(), want.qT.get(),
                                        want.scalesT.get(), dgu_d.get(), offsets_d.get(), groups,
                                        rows, width, true, stream_);
  sync();
  expect_dual_identical("fused chain dgu", "512x384 g4", got, want);
  // Every row is in a group here: nothing may stay poisoned.
  for (uint8_t code : got.q.download()) ASSERT_NE(code, 0xFF) << "an unwritten dgu code";
  for (uint8_t code : h.qT.download()) ASSERT_NE(code, 0xFF) << "an unwritten h^T code";
}

TEST_F(SwigluFp8Cuda, RefusesAnIntermediateSizeThatIsNotAMultipleOf128) {
  DeviceArray<bf16> gu(256 * 2 * 192), dh(256 * 192);
  DeviceArray<uint8_t> q(256 * 2 * 192), qT(256 * 2 * 192), q2(256 * 192), qT2(256 * 192);
  DeviceArray<float> s(256 * 4), sT(2 * 2 * 192), s2(256 * 2), sT2(2 * 192);
  DeviceArray<int64_t> offsets(3);
  offsets.upload({0, 128, 256});
  for (int64_t inter : {192, 100, 64}) {
    EXPECT_THROW(
        cuda::swiglu_fwd_fp8_grouped(q.get(), s.get(), q2.get(), s2.get(), qT2.get(), sT2.get(),
                                     gu.get(), offsets.get(), 2, 256, inter, true, stream_),
        Error)
        << "inter " << inter;
    EXPECT_THROW(
        cuda::swiglu_bwd_fp8_grouped(q.get(), s.get(), qT.get(), sT.get(), dh.get(), q.get(),
                                     s.get(), offsets.get(), 2, 256, inter, true, stream_),
        Error)
        << "inter " << inter;
  }
  try {
    cuda::swiglu_fwd_fp8_grouped(q.get(), s.get(), q2.get(), s2.get(), qT2.get(), sT2.get(),
                                 gu.get(), offsets.get(), 2, 256, 192, true, stream_);
    ADD_FAILURE() << "inter 192 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 128"), std::string::npos) << e.what();
  }
  sync();
}

TEST_F(SwigluFp8Cuda, RejectsBadArguments) {
  EXPECT_THROW(cuda::swiglu_fwd_fp8_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr, 0, -1, 128, false, stream_),
               Error);
  EXPECT_THROW(cuda::swiglu_fwd_fp8_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr, 1, 128, 128, false, stream_),
               Error);
  EXPECT_THROW(cuda::swiglu_bwd_fp8_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr, -1, 128, 128, false, stream_),
               Error);
  EXPECT_THROW(cuda::swiglu_bwd_fp8_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, nullptr, 2, 128, 128, false, stream_),
               Error);
  // Empty shapes launch nothing and succeed (the backward also without groups).
  cuda::swiglu_fwd_fp8_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                               nullptr, 0, 0, 128, true, stream_);
  cuda::swiglu_bwd_fp8_grouped(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                               nullptr, 0, 128, 128, true, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
