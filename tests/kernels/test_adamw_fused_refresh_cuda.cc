// CUDA AdamW update fused with the weight-copy refresh (kernels/adamw/adamw_cuda.h):
//   the fused path (adamw_update_multi with weight_bf16 for the plain tensors, adamw_update_fp8 for
//   the FP8 ones) against the unfused one (adamw_update_multi without copies, then the refresh's
//   cuda::cast<float, bf16> and quantize_weight_128x128_with_transpose per matrix), on random
//   weights, gradients and moments of odd shapes: FP8 384x640 (one all-zero 128x128 block, amax
//   floor), 256x1024 misaligned (the element-by-element path), a 512x256 matrix split into two
//   parameters of 128 and 384 rows (gate|up style: strided transposed writes), 3 stacked experts of
//   256x128, a 1-D norm weight, 200x300 and a misaligned 129x77 (not multiples of 128: plain, with
//   a BF16 copy). Moments fp32 and bf16, power-of-two scales off and on, weight decay mixed per
//   tensor, 4 steps (clip scale 1 (null), 0.37, 0 (skipped), 0.81). After every step: fp32 weights
//   and moments bit-identical, BF16 copies bit-identical to the cast, FP8 codes and scales (both
//   orientations) bit-identical to the GPU quantizer and to cpu::quantize_weight_128x128 of the
//   updated weights (and its transpose); every copy byte written (outputs poisoned first); a
//   skipped step writes nothing (copies poisoned before it stay poisoned). Bad FP8 segments and
//   tables are rejected with an error.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_test_util.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/adamw/adamw_cuda.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/quant/quant.h"

namespace frugal {
namespace {

using testing::DeviceArray;

class AdamWFusedRefreshCuda : public testing::CudaTest {};

// One weight of the test: [groups][out][in] stacked matrices; `params` are the parameters
// (optimizer segments) as (first row, rows) over the groups * out stacked rows, each inside one
// matrix (empty: one parameter over everything).
struct WeightCase {
  std::string name;
  int64_t groups, out, in;
  bool fp8;
  bool misaligned;  // every array one element past a 16-byte boundary
  float weight_decay;
  std::vector<std::pair<int64_t, int64_t>> params;
  bool zero_block = false;  // block (0, 0) of matrix 0: zero weights, gradients and moments
  int64_t count() const { return groups * out * in; }
  int64_t blocks() const { return groups * fp8_block_count(out) * fp8_block_count(in); }
};

std::vector<WeightCase> weight_cases() {
  return {
      {"fp8 384x640", 1, 384, 640, true, false, 0.1f, {}, true},
      {"fp8 256x1024 misaligned", 1, 256, 1024, true, true, 0.0f, {}},
      {"fp8 512x256 split 128+384", 1, 512, 256, true, false, 0.05f, {{0, 128}, {128, 384}}},
      {"fp8 3 experts 256x128", 3, 256, 128, true, false, 0.1f, {{0, 256}, {256, 256}, {512, 256}}},
      {"norm 1000", 1, 1, 1000, false, false, 0.0f, {}},
      {"bf16 200x300", 1, 200, 300, false, false, 0.1f, {}},
      {"bf16 129x77 misaligned", 1, 129, 77, false, true, 0.0f, {}},
  };
}

// The moments' element and its bit pattern type.
template <class M>
using MomentBits = std::conditional_t<std::is_same_v<M, float>, uint32_t, uint16_t>;

template <class M>
std::vector<M> moments_from(const std::vector<float>& values) {
  std::vector<M> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if constexpr (std::is_same_v<M, float>)
      out[i] = values[i];
    else
      out[i] = __float2bfloat16_rn(values[i]);
  }
  return out;
}

template <class T>
std::vector<uint64_t> bits_of(const std::vector<T>& values) {
  return testing::bit_patterns(values);
}

// One side's device state of one weight.
template <class M>
struct Side {
  DeviceArray<float> w;
  DeviceArray<M> m, v;
  DeviceArray<__nv_bfloat16> copy;  // plain weights
  DeviceArray<uint8_t> q, qT;       // fp8 weights
  DeviceArray<float> scales, scalesT;
  explicit Side(const WeightCase& c)
      : w(c.count(), c.misaligned),
        m(c.count(), c.misaligned),
        v(c.count(), c.misaligned),
        copy(c.fp8 ? 0 : c.count(), c.misaligned),
        q(c.fp8 ? c.count() : 0, c.misaligned),
        qT(c.fp8 ? c.count() : 0, c.misaligned),
        scales(c.fp8 ? c.blocks() : 0),
        scalesT(c.fp8 ? c.blocks() : 0) {}
  void poison_copies() {
    copy.poison();
    q.poison();
    qT.poison();
    scales.poison();
    scalesT.poison();
  }
};

// [rows, cols] -> [cols, rows]
std::vector<float> transposed(const float* x, int64_t rows, int64_t cols) {
  std::vector<float> t(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[c * rows + r] = x[r * cols + c];
  return t;
}

template <class M>
void run_fused_refresh(cudaStream_t stream, bool power_of_two) {
  const std::string variant = std::string(std::is_same_v<M, float> ? "f32 moments" : "bf16 moments") +
                              (power_of_two ? ", pow2 scales" : "");
  SCOPED_TRACE(variant);
  const std::vector<WeightCase> cases = weight_cases();
  std::vector<std::unique_ptr<Side<M>>> fused, reference;
  std::vector<std::unique_ptr<DeviceArray<float>>> grads;
  for (size_t k = 0; k < cases.size(); ++k) {
    const WeightCase& c = cases[k];
    const std::string label = "fused refresh " + c.name;
    std::vector<float> w = testing::random_normal(c.count(), testing::case_seed(label, 1), 0, 0.05f);
    std::vector<float> m = testing::random_normal(c.count(), testing::case_seed(label, 2), 0, 1e-3f);
    std::vector<float> v = testing::random_normal(c.count(), testing::case_seed(label, 3), 0, 1e-3f);
    for (float& x : v) x = x * x;
    if (c.zero_block)
      for (int64_t r = 0; r < 128; ++r)
        for (int64_t col = 0; col < 128; ++col) w[r * c.in + col] = m[r * c.in + col] = v[r * c.in + col] = 0;
    fused.push_back(std::make_unique<Side<M>>(c));
    reference.push_back(std::make_unique<Side<M>>(c));
    for (auto* side : {fused.back().get(), reference.back().get()}) {
      side->w.upload(w);
      side->m.upload(moments_from<M>(m));
      side->v.upload(moments_from<M>(v));
      side->poison_copies();
    }
    grads.push_back(std::make_unique<DeviceArray<float>>(c.count(), c.misaligned));
  }

  // The segment lists: reference = every parameter plain without copies; fused = plain parameters
  // with their BF16 copy, FP8 parameters in the FP8 table.
  std::vector<cuda::AdamWSegment> plain_reference, plain_fused;
  std::vector<cuda::AdamWFp8Segment> fp8_fused;
  for (size_t k = 0; k < cases.size(); ++k) {
    const WeightCase& c = cases[k];
    std::vector<std::pair<int64_t, int64_t>> params = c.params;
    if (params.empty()) params.push_back({0, c.groups * c.out});
    for (const auto& [first_row, rows] : params) {
      const int64_t offset = first_row * c.in;
      cuda::AdamWSegment s;
      s.w = reference[k]->w.get() + offset;
      s.m = reference[k]->m.get() + offset;
      s.v = reference[k]->v.get() + offset;
      s.grad = grads[k]->get() + offset;
      s.count = rows * c.in;
      s.weight_decay = c.weight_decay;
      plain_reference.push_back(s);
      s.w = fused[k]->w.get() + offset;
      s.m = fused[k]->m.get() + offset;
      s.v = fused[k]->v.get() + offset;
      if (!c.fp8) {
        s.weight_bf16 = fused[k]->copy.get() + offset;
        plain_fused.push_back(s);
        continue;
      }
      const int64_t group = first_row / c.out, row0 = first_row % c.out;
      const int64_t matrix = c.out * c.in, matrix_blocks = c.blocks() / c.groups;
      cuda::AdamWFp8Segment f;
      f.w = static_cast<float*>(s.w);
      f.m = s.m;
      f.v = s.v;
      f.grad = s.grad;
      f.rows = rows;
      f.cols = c.in;
      f.weight_decay = c.weight_decay;
      f.q = fused[k]->q.get() + group * matrix + row0 * c.in;
      f.scales = fused[k]->scales.get() + group * matrix_blocks + row0 / 128 * (c.in / 128);
      f.qT = fused[k]->qT.get() + group * matrix + row0;
      f.qT_stride = c.out;
      f.scalesT = fused[k]->scalesT.get() + group * matrix_blocks + row0 / 128;
      f.scalesT_stride = c.out / 128;
      fp8_fused.push_back(f);
    }
  }
  auto make_multi = [&](const std::vector<cuda::AdamWSegment>& list, DeviceArray<uint8_t>& memory) {
    const int64_t n = static_cast<int64_t>(list.size());
    return cuda::adamw_multi_prepare<M>(list.data(), n, memory.get(),
                                        cuda::adamw_multi_table_bytes(n), stream);
  };
  DeviceArray<uint8_t> reference_memory(
      static_cast<int64_t>(cuda::adamw_multi_table_bytes(plain_reference.size())));
  DeviceArray<uint8_t> plain_memory(
      static_cast<int64_t>(cuda::adamw_multi_table_bytes(plain_fused.size())));
  DeviceArray<uint8_t> fp8_memory(
      static_cast<int64_t>(cuda::adamw_fp8_table_bytes(fp8_fused.size())));
  const cuda::AdamWMultiTable reference_table = make_multi(plain_reference, reference_memory);
  const cuda::AdamWMultiTable plain_table = make_multi(plain_fused, plain_memory);
  const cuda::AdamWFp8Table fp8_table = cuda::adamw_fp8_prepare<M>(
      fp8_fused.data(), static_cast<int64_t>(fp8_fused.size()), fp8_memory.get(),
      cuda::adamw_fp8_table_bytes(fp8_fused.size()), stream);
  int64_t expected_blocks = 0;
  for (const WeightCase& c : cases)
    if (c.fp8) expected_blocks += c.blocks();
  EXPECT_EQ(fp8_table.blocks, expected_blocks);

  const float clips[4] = {1.0f, 0.37f, 0.0f, 0.81f};
  DeviceArray<float> clip_scale(1);
  for (int step_index = 0; step_index < 4; ++step_index) {
    const float clip = clips[step_index];
    const std::string step_text = "step " + std::to_string(step_index + 1) + " clip " +
                                  std::to_string(clip).substr(0, 4);
    SCOPED_TRACE(step_text);
    for (size_t k = 0; k < cases.size(); ++k) {
      std::vector<float> g = testing::random_normal(
          cases[k].count(), testing::case_seed("fused refresh grad " + cases[k].name, step_index),
          0, 0.02f);
      if (cases[k].zero_block)
        for (int64_t r = 0; r < 128; ++r)
          for (int64_t col = 0; col < 128; ++col) g[r * cases[k].in + col] = 0;
      grads[k]->upload(g);
    }
    clip_scale.upload({clip});
    const bool skipped = clip == 0.0f;
    if (skipped)
      for (auto& side : fused) side->poison_copies();  // a skipped step must leave them as they are
    cuda::AdamWStep step;
    step.lr = 1e-3f;
    step.step = step_index + 1;
    const float* clip_pointer = step_index == 0 ? nullptr : clip_scale.get();
    // Fused: two launches.
    cuda::adamw_update_multi<M>(plain_table, clip_pointer, step, stream);
    cuda::adamw_update_fp8<M>(fp8_table, clip_pointer, step, power_of_two, stream);
    // Unfused: the update, then the refresh's own kernels.
    cuda::adamw_update_multi<M>(reference_table, clip_pointer, step, stream);
    for (size_t k = 0; k < cases.size(); ++k) {
      const WeightCase& c = cases[k];
      Side<M>& r = *reference[k];
      if (!c.fp8) {
        cuda::cast<float, __nv_bfloat16>(r.copy.get(), r.w.get(), c.count(), stream);
        continue;
      }
      const int64_t matrix = c.out * c.in, matrix_blocks = c.blocks() / c.groups;
      for (int64_t g = 0; g < c.groups; ++g)
        cuda::quantize_weight_128x128_with_transpose(
            r.q.get() + g * matrix, r.scales.get() + g * matrix_blocks, r.qT.get() + g * matrix,
            r.scalesT.get() + g * matrix_blocks, r.w.get() + g * matrix, c.out, c.in,
            power_of_two, stream);
    }
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    FRUGAL_CUDA_CHECK(cudaGetLastError());

    for (size_t k = 0; k < cases.size(); ++k) {
      const WeightCase& c = cases[k];
      const std::string what = c.name + " " + step_text + " " + variant;
      Side<M>& f = *fused[k];
      Side<M>& r = *reference[k];
      const std::vector<float> w = f.w.download();
      testing::expect_identical_bits("fused adamw w", what, w, r.w.download());
      testing::expect_equal("fused adamw m", what, bits_of(f.m.download()), bits_of(r.m.download()));
      testing::expect_equal("fused adamw v", what, bits_of(f.v.download()), bits_of(r.v.download()));
      if (skipped) {
        // Nothing written: every copy byte still 0xFF.
        int64_t written = 0;
        if (!c.fp8) {
          for (uint64_t b : bits_of(f.copy.download())) written += b != 0xFFFFu;
        } else {
          for (uint8_t b : f.q.download()) written += b != 0xFF;
          for (uint8_t b : f.qT.download()) written += b != 0xFF;
          for (uint64_t b : bits_of(f.scales.download())) written += b != 0xFFFFFFFFu;
          for (uint64_t b : bits_of(f.scalesT.download())) written += b != 0xFFFFFFFFu;
        }
        std::printf("CHECK | %-28s | %-22s | %lld copy elements written | %s\n",
                    "fused refresh skipped step", what.c_str(), static_cast<long long>(written),
                    written == 0 ? "ok" : "FAIL");
        EXPECT_EQ(written, 0) << what << ": a skipped step wrote weight copies";
        continue;
      }
      if (!c.fp8) {
        testing::expect_equal("fused refresh bf16 copy", what, bits_of(f.copy.download()),
                              bits_of(r.copy.download()));
        continue;
      }
      const std::vector<uint8_t> q = f.q.download(), qT = f.qT.download();
      const std::vector<float> scales = f.scales.download(), scalesT = f.scalesT.download();
      testing::expect_quant_identical("fused refresh fp8 vs gpu", what, w, q, r.q.download(), scales,
                                      r.scales.download());
      testing::expect_quant_identical("fused refresh fp8T vs gpu", what, {}, qT, r.qT.download(),
                                      scalesT, r.scalesT.download());
      // And against the CPU quantizer of the updated weights (both orientations).
      const int64_t matrix = c.out * c.in, matrix_blocks = c.blocks() / c.groups;
      std::vector<uint8_t> cpu_q(q.size()), cpu_qT(q.size());
      std::vector<float> cpu_scales(scales.size()), cpu_scalesT(scales.size());
      for (int64_t g = 0; g < c.groups; ++g) {
        cpu::quantize_weight_128x128(cpu_q.data() + g * matrix, cpu_scales.data() + g * matrix_blocks,
                                     w.data() + g * matrix, c.out, c.in, power_of_two);
        const std::vector<float> t = transposed(w.data() + g * matrix, c.out, c.in);
        cpu::quantize_weight_128x128(cpu_qT.data() + g * matrix,
                                     cpu_scalesT.data() + g * matrix_blocks, t.data(), c.in, c.out,
                                     power_of_two);
      }
      testing::expect_quant_identical("fused refresh fp8 vs cpu", what, w, q, cpu_q, scales,
                                      cpu_scales);
      testing::expect_quant_identical("fused refresh fp8T vs cpu", what, {}, qT, cpu_qT, scalesT,
                                      cpu_scalesT);
    }
  }
}

TEST_F(AdamWFusedRefreshCuda, Fp32MomentsMatchTheUnfusedPath) {
  run_fused_refresh<float>(stream_, false);
}

TEST_F(AdamWFusedRefreshCuda, Bf16MomentsMatchTheUnfusedPath) {
  run_fused_refresh<__nv_bfloat16>(stream_, false);
}

TEST_F(AdamWFusedRefreshCuda, PowerOfTwoScalesMatchTheUnfusedPath) {
  run_fused_refresh<__nv_bfloat16>(stream_, true);
}

TEST_F(AdamWFusedRefreshCuda, BadSegmentsAndTablesAreRejected) {
  DeviceArray<float> a(256 * 256);
  DeviceArray<uint8_t> codes(256 * 256);
  DeviceArray<float> scales(16);
  const size_t bytes = cuda::adamw_fp8_table_bytes(2);
  DeviceArray<uint8_t> memory(static_cast<int64_t>(bytes) + 16);
  cuda::AdamWFp8Segment good;
  good.w = a.get();
  good.m = a.get();
  good.v = a.get();
  good.grad = a.get();
  good.rows = 256;
  good.cols = 256;
  good.q = codes.get();
  good.scales = scales.get();
  good.qT = codes.get();
  good.qT_stride = 256;
  good.scalesT = scales.get();
  good.scalesT_stride = 2;
  auto prepare = [&](cuda::AdamWFp8Segment second, void* where, size_t size) {
    const cuda::AdamWFp8Segment list[2] = {good, second};
    return cuda::adamw_fp8_prepare<float>(list, 2, where, size, stream_);
  };
  const cuda::AdamWFp8Table table = prepare(good, memory.get(), bytes);
  EXPECT_EQ(table.segments, 2);
  EXPECT_EQ(table.blocks, 8);
  cuda::AdamWFp8Segment bad = good;
  bad.rows = 200;  // not a multiple of 128: such a tensor stays on the plain path
  bad.cols = 300;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "dims not multiples of 128";
  bad = good;
  bad.cols = 0;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "no columns";
  bad = good;
  bad.qT = nullptr;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "null transposed codes";
  bad = good;
  bad.grad = nullptr;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "null gradient";
  bad = good;
  bad.qT_stride = 128;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "transposed stride too short";
  bad = good;
  bad.scalesT_stride = 1;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "transposed scale stride too short";
  bad = good;
  bad.weight_decay = -0.5f;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "negative decay";
  EXPECT_THROW(prepare(good, memory.get(), bytes - 1), Error) << "table memory too small";
  EXPECT_THROW(prepare(good, memory.get() + 8, bytes), Error) << "misaligned table memory";
  try {
    bad = good;
    bad.rows = 100;
    prepare(bad, memory.get(), bytes);
    ADD_FAILURE() << "a 100-row segment was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("segment 1"), std::string::npos) << e.what();
  }
  cuda::AdamWStep step;
  step.lr = 1e-3f;
  EXPECT_THROW(cuda::adamw_update_fp8<__nv_bfloat16>(table, nullptr, step, false, stream_), Error)
      << "a table prepared for fp32 moments run with bf16 ones";
  step.step = 0;
  EXPECT_THROW(cuda::adamw_update_fp8<float>(table, nullptr, step, false, stream_), Error)
      << "step 0";
  // An empty table is a no-op.
  const cuda::AdamWFp8Table empty = cuda::adamw_fp8_prepare<float>(nullptr, 0, nullptr, 0, stream_);
  step.step = 1;
  EXPECT_EQ(empty.blocks, 0);
  cuda::adamw_update_fp8<float>(empty, nullptr, step, false, stream_);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

}  // namespace
}  // namespace frugal
