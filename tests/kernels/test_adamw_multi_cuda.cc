// CUDA multi-tensor optimizer step (adamw_update_multi, kernels/adamw/adamw_cuda.h):
//   adamw_update_multi<f32 / bf16> over many segments of odd sizes (0, 1, 7, 129, 4096 + 3, tile
//     edges 8191..8193, ...) and over 400 random ones, mixed weight decay, null and non-null
//     weight_bf16, aligned and misaligned, laid out in arenas with guard gaps: after each of 3
//     steps (clip scale 0.37) the whole arenas (w, m, v, weight_bf16, guards included) are
//     bit-identical to one adamw_update per segment, the guards and the weight_bf16 of null
//     segments untouched, weight_bf16 = bf16(w), and each segment equals the CPU
//     (adamw_update<float> of train/adamw.h; the bf16 emulation) within 1e-6; a clip scale of 0
//     changes nothing; bad segments and tables are rejected. FRUGAL_CUDA_TIMING=1: per-tensor
//     launches vs one launch over the ~2270 tensors of bench-1b (and the gradient norm, per-call
//     vs prepared table)
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "adamw_test_util.h"
#include "cuda_test_util.h"
#include "core/cuda_timer.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/param.h"
#include "kernels/adamw/adamw_cuda.h"
#include "train/adamw.h"

namespace frugal {
namespace {

using testing::DeviceArray;
using testing::emulate_bf16_step;

constexpr double kAdamTolerance = 1e-6;

class AdamWMultiCuda : public testing::CudaTest {};

// ---- many tensors in one launch -----------------------------------------------------------------

struct MultiCase {
  int64_t count;
  float weight_decay;
  bool with_bf16;   // a weight_bf16 copy (else null)
  bool misaligned;  // the segment starts one element past a 16-byte boundary
};

std::string case_text(size_t index, const MultiCase& c) {
  return "seg " + std::to_string(index) + " (" + std::to_string(c.count) +
         (c.misaligned ? " +1el" : "") + " wd " + std::to_string(c.weight_decay).substr(0, 4) +
         (c.with_bf16 ? " bf16" : "") + ")";
}

// Every segment at its own offset of shared arenas (one per array), at least kGuard elements apart:
// the gaps are guards that no update may touch. Offsets are multiples of 8 elements (16-byte
// aligned for fp32 and bf16, the arenas being cudaMalloc'd), plus 1 for a misaligned segment.
constexpr int64_t kGuard = 8;
struct MultiLayout {
  std::vector<int64_t> offsets;
  std::vector<int32_t> owner;  // per arena element: the segment index, -1 in a guard
  int64_t total = 0;
};

MultiLayout lay_out(const std::vector<MultiCase>& cases) {
  MultiLayout layout;
  int64_t end = 0;
  for (const MultiCase& c : cases) {
    const int64_t start = (end + kGuard + 7) / 8 * 8 + (c.misaligned ? 1 : 0);
    layout.offsets.push_back(start);
    end = start + c.count;
  }
  layout.total = end + kGuard;
  layout.owner.assign(static_cast<size_t>(layout.total), -1);
  for (size_t k = 0; k < cases.size(); ++k)
    for (int64_t i = 0; i < cases[k].count; ++i)
      layout.owner[static_cast<size_t>(layout.offsets[k] + i)] = static_cast<int32_t>(k);
  return layout;
}

std::string place_text(const MultiLayout& layout, const std::vector<MultiCase>& cases,
                       int64_t index) {
  const int32_t k = layout.owner[static_cast<size_t>(index)];
  if (k < 0) return "arena element " + std::to_string(index) + " (a guard gap)";
  return "element " + std::to_string(index - layout.offsets[static_cast<size_t>(k)]) + " of " +
         case_text(static_cast<size_t>(k), cases[static_cast<size_t>(k)]);
}

// Whole arenas bit for bit; on a difference, says which segment (or guard) and how many differ.
void expect_arena_identical(const std::string& op, const std::string& text,
                            const std::vector<float>& multi, const std::vector<float>& reference,
                            const MultiLayout& layout, const std::vector<MultiCase>& cases) {
  ASSERT_EQ(multi.size(), reference.size());
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < multi.size(); ++i)
    if (std::bit_cast<uint32_t>(multi[i]) != std::bit_cast<uint32_t>(reference[i]) && differ++ == 0)
      first = static_cast<int64_t>(i);
  std::printf("CHECK | %-28s | %-22s | %lld/%zu differ from per-tensor | %s\n", op.c_str(),
              text.c_str(), static_cast<long long>(differ), multi.size(),
              differ == 0 ? "ok" : "FAIL");
  if (differ != 0)
    std::printf("  %s %s: first at %s: multi %.9g per-tensor %.9g\n", op.c_str(), text.c_str(),
                place_text(layout, cases, first).c_str(), multi[first], reference[first]);
  EXPECT_EQ(differ, 0) << op << " " << text << ": first difference at "
                       << (first >= 0 ? place_text(layout, cases, first) : std::string("-"));
}

// Elements no update may write: guards (must keep `initial`), and for `weight_bf16` also the
// elements of segments without a copy (must keep the 0xFFFF poison, given as NaN bits here).
void expect_untouched(const std::string& op, const std::string& text, const std::vector<float>& now,
                      const std::vector<float>& initial, const MultiLayout& layout,
                      const std::vector<MultiCase>& cases, bool null_segments_too) {
  int64_t changed = 0, first = -1;
  for (size_t i = 0; i < now.size(); ++i) {
    const int32_t k = layout.owner[i];
    const bool protected_element =
        k < 0 || (null_segments_too && !cases[static_cast<size_t>(k)].with_bf16);
    const bool written = std::bit_cast<uint32_t>(now[i]) != std::bit_cast<uint32_t>(initial[i]);
    if (protected_element && written && changed++ == 0)
      first = static_cast<int64_t>(i);
  }
  std::printf("CHECK | %-28s | %-22s | %lld guard values written | %s\n", op.c_str(), text.c_str(),
              static_cast<long long>(changed), changed == 0 ? "ok" : "FAIL");
  EXPECT_EQ(changed, 0) << op << " " << text << ": first written at "
                        << (first >= 0 ? place_text(layout, cases, first) : std::string("-"));
}

// Each segment of `gpu` against `host` (error relative to the segment's max |host|); one line for
// all segments, naming the worst one. fp32: also the number of values that differ in any bit.
void expect_segments_close(const std::string& op, const std::string& text,
                           const std::vector<float>& gpu, const std::vector<float>& host,
                           const MultiLayout& layout, const std::vector<MultiCase>& cases,
                           double tolerance) {
  double worst = 0;
  int64_t worst_segment = -1, worst_index = -1, bad_segments = 0, bit_differences = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    const int64_t offset = layout.offsets[k];
    double scale = 0;
    for (int64_t i = 0; i < cases[k].count; ++i)
      scale = std::max(scale, std::fabs(static_cast<double>(host[offset + i])));
    if (scale == 0) scale = 1;
    double segment_error = 0;
    int64_t segment_index = -1;
    for (int64_t i = 0; i < cases[k].count; ++i) {
      const double g = gpu[offset + i], c = host[offset + i];
      const double error = std::isfinite(g) ? std::fabs(g - c) / scale : INFINITY;
      bit_differences += std::bit_cast<uint32_t>(gpu[offset + i]) !=
                         std::bit_cast<uint32_t>(host[offset + i]);
      if (segment_index < 0 || error > segment_error) {
        segment_error = error;
        segment_index = i;
      }
    }
    if (segment_error > tolerance) ++bad_segments;
    if (segment_index >= 0 && (worst_segment < 0 || segment_error > worst)) {
      worst = segment_error;
      worst_segment = static_cast<int64_t>(k);
      worst_index = segment_index;
    }
  }
  const bool ok = bad_segments == 0;
  std::printf("CHECK | %-28s | %-22s | max rel err %9.2e (%lld values differ in a bit) | %s\n",
              op.c_str(), text.c_str(), worst, static_cast<long long>(bit_differences),
              ok ? "ok" : "FAIL");
  if (!ok) {
    const size_t at = static_cast<size_t>(layout.offsets[worst_segment] + worst_index);
    std::printf("  %s %s: %lld segments off; worst %s element %lld: gpu %.9g host %.9g\n",
                op.c_str(), text.c_str(), static_cast<long long>(bad_segments),
                case_text(static_cast<size_t>(worst_segment), cases[worst_segment]).c_str(),
                static_cast<long long>(worst_index), gpu[at], host[at]);
  }
  EXPECT_TRUE(ok) << op << " " << text << ": " << bad_segments << " segments off, worst error "
                  << worst;
}

// One host step of one segment: the CPU AdamW's element update (fp32 moments) or the bf16
// emulation above.
template <class M>
void host_segment_step(float* w, float* m, float* v, const float* grad, int64_t n, float clip,
                       const cuda::AdamWStep& s) {
  if constexpr (std::is_same_v<M, float>) {
    AdamWScalars scalars;
    scalars.lr = s.lr;
    scalars.beta1 = s.beta1;
    scalars.beta2 = s.beta2;
    scalars.eps = s.eps;
    scalars.weight_decay = s.weight_decay;
    scalars.clip_scale = clip;
    scalars.bias_correction1 = 1.0 - std::pow(scalars.beta1, static_cast<double>(s.step));
    scalars.bias_correction2 = 1.0 - std::pow(scalars.beta2, static_cast<double>(s.step));
    frugal::adamw_update<float>(w, grad, m, v, n, s.weight_decay > 0.0f, scalars);
  } else {
    std::vector<float> ws(w, w + n), ms(m, m + n), vs(v, v + n), gs(grad, grad + n);
    emulate_bf16_step(ws, ms, vs, gs, clip, s);
    std::copy(ws.begin(), ws.end(), w);
    std::copy(ms.begin(), ms.end(), m);
    std::copy(vs.begin(), vs.end(), v);
  }
}

template <class M>
void check_multi_update(cudaStream_t stream, const std::vector<MultiCase>& cases,
                        const std::string& label) {
  const std::string type = testing::type_name<M>();
  const MultiLayout layout = lay_out(cases);
  const int64_t total = layout.total;
  const int64_t n = static_cast<int64_t>(cases.size());
  const uint64_t seed = testing::case_seed("adamw multi " + label + " " + type);
  // Initial state of the whole arenas (the guards must keep it). Moments are nonzero, as mid-run.
  const std::vector<float> w0 = testing::random_normal(total, seed, 0.0f, 0.05f);
  const std::vector<float> m0 =
      testing::representable<M>(testing::random_normal(total, seed + 1, 0.0f, 0.01f));
  std::vector<float> v0 = testing::random_normal(total, seed + 2, 0.0f, 1e-4f);
  for (float& x : v0) x = std::fabs(x);
  v0 = testing::representable<M>(v0);

  DeviceArray<float> w_ref(total), w_multi(total), grad(total), clip(1);
  DeviceArray<M> m_ref(total), v_ref(total), m_multi(total), v_multi(total);
  DeviceArray<__nv_bfloat16> bf16_ref(total), bf16_multi(total);
  w_ref.upload(w0);
  w_multi.upload(w0);
  m_ref.upload(testing::host_values<M>(m0));
  m_multi.upload(testing::host_values<M>(m0));
  v_ref.upload(testing::host_values<M>(v0));
  v_multi.upload(testing::host_values<M>(v0));
  const float clip_scale = 0.37f;
  clip.upload({clip_scale});

  std::vector<cuda::AdamWSegment> segments;
  int64_t non_empty = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    const int64_t offset = layout.offsets[k];
    cuda::AdamWSegment s;
    s.w = w_multi.get() + offset;
    s.m = m_multi.get() + offset;
    s.v = v_multi.get() + offset;
    s.grad = grad.get() + offset;
    s.weight_bf16 = cases[k].with_bf16 ? bf16_multi.get() + offset : nullptr;
    s.count = cases[k].count;
    s.weight_decay = cases[k].weight_decay;
    segments.push_back(s);
    non_empty += cases[k].count > 0;
  }
  const size_t table_bytes = cuda::adamw_multi_table_bytes(n);
  DeviceArray<uint8_t> table_memory(static_cast<int64_t>(table_bytes));
  table_memory.poison();
  const cuda::AdamWMultiTable table =
      cuda::adamw_multi_prepare<M>(segments.data(), n, table_memory.get(), table_bytes, stream);
  segments.clear();  // the table must not need the host list any more
  ASSERT_EQ(table.segments, non_empty) << label << ": empty segments are left out of the table";
  ASSERT_GE(table.tiles, table.segments) << label;

  std::vector<float> w_host = w0, m_host = m0, v_host = v0;
  const float learning_rates[] = {1e-3f, 4e-4f, 1.5e-4f};
  std::vector<float> w_last, m_last, v_last, bf16_last;
  for (int i = 0; i < 3; ++i) {
    cuda::AdamWStep s;
    s.lr = learning_rates[i];
    s.step = 4 + i;
    const std::vector<float> g = testing::random_normal(total, seed + 10 + i, 0.0f, 0.02f);
    grad.upload(g);
    bf16_ref.poison();
    bf16_multi.poison();
    for (size_t k = 0; k < cases.size(); ++k) {
      const int64_t offset = layout.offsets[k];
      cuda::AdamWStep segment_step = s;
      segment_step.weight_decay = cases[k].weight_decay;
      cuda::adamw_update<M>(w_ref.get() + offset, m_ref.get() + offset, v_ref.get() + offset,
                            grad.get() + offset, clip.get(), segment_step, cases[k].count,
                            cases[k].with_bf16 ? bf16_ref.get() + offset : nullptr, stream);
      host_segment_step<M>(w_host.data() + offset, m_host.data() + offset, v_host.data() + offset,
                           g.data() + offset, cases[k].count, clip_scale, segment_step);
    }
    cuda::AdamWStep multi_step = s;
    multi_step.weight_decay = 0.5f;  // ignored: each segment's own decay applies
    cuda::adamw_update_multi<M>(table, clip.get(), multi_step, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));

    const std::string text = label + " step " + std::to_string(i + 1);
    const std::string op = "multi<" + type + "> ";
    const std::vector<float> w = w_multi.download(), m = testing::to_float(m_multi.download()),
                             v = testing::to_float(v_multi.download()),
                             bf16 = testing::to_float(bf16_multi.download());
    expect_arena_identical(op + "w", text, w, w_ref.download(), layout, cases);
    expect_arena_identical(op + "m", text, m, testing::to_float(m_ref.download()), layout, cases);
    expect_arena_identical(op + "v", text, v, testing::to_float(v_ref.download()), layout, cases);
    expect_arena_identical(op + "weight_bf16", text, bf16, testing::to_float(bf16_ref.download()),
                           layout, cases);
    expect_untouched(op + "w guards", text, w, w0, layout, cases, false);
    expect_untouched(op + "m guards", text, m, m0, layout, cases, false);
    expect_untouched(op + "v guards", text, v, v0, layout, cases, false);
    const std::vector<float> poison(static_cast<size_t>(total), testing::to_float(
        std::vector<__nv_bfloat16>{testing::bf16_from_bits(0xFFFF)})[0]);
    expect_untouched(op + "weight_bf16 unused", text, bf16, poison, layout, cases, true);
    expect_segments_close(op + "w vs host", text, w, w_host, layout, cases, kAdamTolerance);
    expect_segments_close(op + "m vs host", text, m, m_host, layout, cases, kAdamTolerance);
    expect_segments_close(op + "v vs host", text, v, v_host, layout, cases, kAdamTolerance);
    // The copy, where there is one, is bf16(w) (exactly: compare the bits of each segment).
    std::vector<float> expected_bf16 = poison;
    for (size_t k = 0; k < cases.size(); ++k)
      if (cases[k].with_bf16)
        for (int64_t e = 0; e < cases[k].count; ++e) {
          const size_t at = static_cast<size_t>(layout.offsets[k] + e);
          expected_bf16[at] = round_to_bf16(w[at]);
        }
    expect_arena_identical(op + "weight_bf16 = bf16(w)", text, bf16, expected_bf16, layout, cases);
    w_last = w;
    m_last = m;
    v_last = v;
    bf16_last = bf16;
  }

  // A clip scale of exactly 0 (non-finite norm) skips the step: nothing changes anywhere.
  clip.upload({0.0f});
  cuda::AdamWStep s;
  s.lr = 1e-3f;
  s.step = 7;
  cuda::adamw_update_multi<M>(table, clip.get(), s, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::string text = label + " clip 0";
  const std::string op = "multi<" + type + "> skipped ";
  expect_arena_identical(op + "w", text, w_multi.download(), w_last, layout, cases);
  expect_arena_identical(op + "m", text, testing::to_float(m_multi.download()), m_last, layout,
                         cases);
  expect_arena_identical(op + "v", text, testing::to_float(v_multi.download()), v_last, layout,
                         cases);
  expect_arena_identical(op + "weight_bf16", text, testing::to_float(bf16_multi.download()),
                         bf16_last, layout, cases);
}

// Odd sizes around the chunk (8), the block (2048) and the tile (8192) sizes, an empty segment,
// mixed decay, copies and alignment.
std::vector<MultiCase> odd_cases() {
  return {{1, 0.1f, true, false},       {7, 0.0f, false, true},
          {129, 0.01f, true, true},      {4096 + 3, 0.1f, false, false},
          {0, 0.1f, true, false},        {8, 0.0f, true, false},
          {2047, 0.1f, true, true},      {2049, 0.0f, false, false},
          {8191, 0.01f, true, false},    {8192, 0.1f, true, false},
          {8193, 0.01f, false, true},    {2 * 8192 + 5, 0.0f, true, true},
          {100000, 0.1f, true, false},   {2, 0.1f, false, false},
          {0, 0.0f, false, true},        {33, 0.0f, true, true},
          {3 * 8192 - 1, 0.01f, true, false}};
}

// Many segments (the tile search over a long table), sizes from 1 to 40000, random attributes.
std::vector<MultiCase> random_cases(int count) {
  std::mt19937_64 gen(testing::case_seed("adamw multi random layout"));
  std::vector<MultiCase> cases;
  const float decays[] = {0.0f, 0.1f, 0.01f};
  for (int i = 0; i < count; ++i) {
    const int64_t size = gen() % 4 == 0 ? static_cast<int64_t>(1 + gen() % 40000)
                                        : static_cast<int64_t>(1 + gen() % 300);
    cases.push_back({size, decays[gen() % 3], gen() % 2 == 0, gen() % 3 == 0});
  }
  return cases;
}

TEST_F(AdamWMultiCuda, MultiTensorFp32MatchesPerTensorAndCpu) {
  check_multi_update<float>(stream_, odd_cases(), "odd sizes");
  check_multi_update<float>(stream_, random_cases(400), "400 random");
}

TEST_F(AdamWMultiCuda, MultiTensorBf16MatchesPerTensorAndEmulation) {
  check_multi_update<__nv_bfloat16>(stream_, odd_cases(), "odd sizes");
  check_multi_update<__nv_bfloat16>(stream_, random_cases(400), "400 random");
}

TEST_F(AdamWMultiCuda, MultiTensorRejectsBadSegments) {
  DeviceArray<float> a(16);
  DeviceArray<uint8_t> memory(static_cast<int64_t>(cuda::adamw_multi_table_bytes(4)) + 16);
  const size_t bytes = cuda::adamw_multi_table_bytes(2);
  cuda::AdamWSegment good;
  good.w = a.get();
  good.m = a.get();
  good.v = a.get();
  good.grad = a.get();
  good.count = 16;
  auto prepare = [&](cuda::AdamWSegment second, void* where, size_t size) {
    const cuda::AdamWSegment list[2] = {good, second};
    return cuda::adamw_multi_prepare<float>(list, 2, where, size, stream_);
  };
  cuda::AdamWSegment bad = good;
  bad.grad = nullptr;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "null gradient";
  bad = good;
  bad.count = -1;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "negative size";
  bad = good;
  bad.weight_decay = -0.1f;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "negative decay";
  bad.weight_decay = NAN;
  EXPECT_THROW(prepare(bad, memory.get(), bytes), Error) << "NaN decay";
  EXPECT_THROW(prepare(good, memory.get(), bytes - 1), Error) << "table memory too small";
  EXPECT_THROW(prepare(good, memory.get() + 8, bytes), Error) << "misaligned table memory";
  EXPECT_THROW(prepare(good, nullptr, bytes), Error) << "no table memory";
  try {
    bad = good;
    bad.v = nullptr;
    prepare(bad, memory.get(), bytes);
    ADD_FAILURE() << "a null moment was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("segment 1"), std::string::npos) << error.what();
  }
  // An empty segment may have null arrays; a list of only those needs no memory.
  cuda::AdamWSegment empty;
  const cuda::AdamWMultiTable nothing =
      cuda::adamw_multi_prepare<float>(&empty, 1, nullptr, 0, stream_);
  EXPECT_EQ(nothing.segments, 0);
  cuda::AdamWStep s;
  s.lr = 1e-3f;
  EXPECT_NO_THROW(cuda::adamw_update_multi<float>(nothing, nullptr, s, stream_));
  // A table for fp32 moments used with bf16 ones, and a table never prepared.
  const cuda::AdamWMultiTable table = prepare(good, memory.get(), bytes);
  EXPECT_EQ(table.segments, 2);
  EXPECT_THROW(cuda::adamw_update_multi<__nv_bfloat16>(table, nullptr, s, stream_), Error);
  EXPECT_THROW(cuda::adamw_update_multi<float>(cuda::AdamWMultiTable{}, nullptr, s, stream_),
               Error);
  s.step = 0;
  EXPECT_THROW(cuda::adamw_update_multi<float>(table, nullptr, s, stream_), Error);
  sync();
}

// ---- timing: per-tensor launches vs one launch --------------------------------------------------

bool timing_enabled() {
  const char* text = std::getenv("FRUGAL_CUDA_TIMING");
  return text != nullptr && std::string(text) != "0" && std::string(text) != "";
}

int timing_reps() {
  const char* text = std::getenv("FRUGAL_CUDA_TIMING_REPS");
  const int reps = text != nullptr ? std::atoi(text) : 20;
  return reps > 0 ? reps : 20;
}

// The trainable tensors of configs/bench-1b.toml (hidden 1024, vocab 32768, MLA q_lora 512 /
// kv_lora 256 / 16 heads of 128 + 64, layer 0 dense (2816), layers 1-11 MoE with 64 routed + 1
// shared expert of 384 and a gate): about 2270 tensors, about 1.0e9 elements.
std::vector<int64_t> bench_1b_tensor_sizes() {
  const int64_t hidden = 1024, vocab = 32768;
  std::vector<int64_t> sizes{vocab * hidden};  // embeddings
  auto attention = [&] {
    sizes.insert(sizes.end(), {hidden, 512 * hidden, 512, 16 * 192 * 512, 320 * hidden, 256,
                               16 * 256 * 256, hidden * 16 * 128, hidden});
  };
  attention();
  for (int i = 0; i < 3; ++i) sizes.push_back(2816 * hidden);
  for (int layer = 1; layer <= 11; ++layer) {
    attention();
    sizes.push_back(64 * hidden);  // router gate
    for (int e = 0; e < 3 * (64 + 1); ++e) sizes.push_back(384 * hidden);
  }
  sizes.push_back(hidden);          // final norm
  sizes.push_back(vocab * hidden);  // lm head
  return sizes;
}

// Fills `count` device floats with N(0, stddev) values: a 1M-value host block copied repeatedly.
void fill_device(float* device, int64_t count, uint64_t seed, float stddev) {
  const int64_t block = std::min<int64_t>(count, int64_t{1} << 20);
  const std::vector<float> host = testing::random_normal(block, seed, 0.0f, stddev);
  for (int64_t offset = 0; offset < count; offset += block)
    FRUGAL_CUDA_CHECK(cudaMemcpy(device + offset, host.data(),
                                 std::min(block, count - offset) * sizeof(float),
                                 cudaMemcpyHostToDevice));
}

template <class M>
void time_bench_1b(cudaStream_t stream, const std::vector<int64_t>& sizes,
                   const std::vector<int64_t>& offsets, int64_t total, float* w, void* m, void* v,
                   const float* grad, const float* clip, int reps) {
  const std::string type = testing::type_name<M>();
  FRUGAL_CUDA_CHECK(cudaMemset(m, 0, static_cast<size_t>(total) * sizeof(M)));
  FRUGAL_CUDA_CHECK(cudaMemset(v, 0, static_cast<size_t>(total) * sizeof(M)));
  std::vector<cuda::AdamWSegment> segments;
  int64_t elements = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    cuda::AdamWSegment s;
    s.w = w + offsets[k];
    s.m = static_cast<M*>(m) + offsets[k];
    s.v = static_cast<M*>(v) + offsets[k];
    s.grad = grad + offsets[k];
    s.count = sizes[k];
    s.weight_decay = k % 2 == 0 ? 0.1f : 0.0f;
    segments.push_back(s);
    elements += sizes[k];
  }
  const size_t table_bytes = cuda::adamw_multi_table_bytes(static_cast<int64_t>(segments.size()));
  DeviceArray<uint8_t> table_memory(static_cast<int64_t>(table_bytes));
  const cuda::AdamWMultiTable table = cuda::adamw_multi_prepare<M>(
      segments.data(), static_cast<int64_t>(segments.size()), table_memory.get(), table_bytes,
      stream);
  cuda::AdamWStep step;
  step.lr = 1e-4f;
  step.step = 1;
  cuda::CudaTimer timer(stream);
  const double per_tensor_us = timer.median_us(
      [&] {
        for (const cuda::AdamWSegment& s : segments) {
          cuda::AdamWStep one = step;
          one.weight_decay = s.weight_decay;
          cuda::adamw_update<M>(s.w, static_cast<M*>(s.m), static_cast<M*>(s.v), s.grad, clip, one,
                                s.count, nullptr, stream);
        }
      },
      reps);
  const double multi_us =
      timer.median_us([&] { cuda::adamw_update_multi<M>(table, clip, step, stream); }, reps);
  // Bytes the update must move: w read + write, grad read, m and v read + write.
  const double bytes = static_cast<double>(elements) * (12.0 + 4.0 * sizeof(M));
  const std::string shape = std::to_string(sizes.size()) + " tensors " +
                            std::to_string(elements / 1000000) + "M";
  std::printf("TIMING | adamw<%s> per-tensor launches | %-22s | %10.1f us | %7.0f GB/s\n",
              type.c_str(), shape.c_str(), per_tensor_us, bytes / (per_tensor_us * 1e-6) / 1e9);
  std::printf("TIMING | adamw<%s> one multi launch    | %-22s | %10.1f us | %7.0f GB/s | %.2fx\n",
              type.c_str(), shape.c_str(), multi_us, bytes / (multi_us * 1e-6) / 1e9,
              per_tensor_us / multi_us);
}

TEST_F(AdamWMultiCuda, TimingBench1bPerTensorVsMulti) {
  if (!timing_enabled()) GTEST_SKIP() << "set FRUGAL_CUDA_TIMING=1 to time the optimizer step";
  const std::vector<int64_t> sizes = bench_1b_tensor_sizes();
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (int64_t n : sizes) {
    offsets.push_back(total);
    total += (n + 127) / 128 * 128;  // GpuAdamW's slice alignment
  }
  cuda::DeviceBuffer<float> w(static_cast<size_t>(total)), grad(static_cast<size_t>(total)),
      m(static_cast<size_t>(total)), v(static_cast<size_t>(total)), clip(1);
  fill_device(w.data(), total, 1, 0.02f);
  fill_device(grad.data(), total, 2, 1e-3f);
  const float one = 1.0f;
  FRUGAL_CUDA_CHECK(cudaMemcpy(clip.data(), &one, sizeof one, cudaMemcpyHostToDevice));
  const int reps = timing_reps();
  std::printf("timing bench-1b optimizer update, median of %d runs after 3 warm-ups\n", reps);
  time_bench_1b<__nv_bfloat16>(stream_, sizes, offsets, total, w.data(), m.data(), v.data(),
                               grad.data(), clip.data(), reps);
  time_bench_1b<float>(stream_, sizes, offsets, total, w.data(), m.data(), v.data(), grad.data(),
                       clip.data(), reps);

  // The gradient norm over the same tensors: per-call (128 tensors per pass-1 launch) vs a table.
  std::vector<cuda::GradTensor> tensors;
  int64_t elements = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    tensors.push_back({grad.data() + offsets[k], sizes[k]});
    elements += sizes[k];
  }
  const int64_t count = static_cast<int64_t>(tensors.size());
  cuda::DeviceBuffer<uint8_t> workspace(cuda::grad_norm_workspace_bytes(tensors.data(), count));
  cuda::DeviceBuffer<uint8_t> table_memory(cuda::grad_norm_table_bytes(count));
  const cuda::GradNormTable table = cuda::grad_norm_prepare(
      tensors.data(), count, table_memory.data(), table_memory.bytes(), stream_);
  cuda::DeviceBuffer<float> outputs(2);
  cuda::DeviceBuffer<int32_t> flag(1);
  cuda::CudaTimer timer(stream_);
  const double per_call_us = timer.median_us(
      [&] {
        cuda::grad_norm_and_clip(outputs.data(), outputs.data() + 1, flag.data(), tensors.data(),
                                 count, 1.0f, workspace.data(), stream_);
      },
      reps);
  const double table_us = timer.median_us(
      [&] {
        cuda::grad_norm_and_clip(outputs.data(), outputs.data() + 1, flag.data(), table, 1.0f,
                                 workspace.data(), stream_);
      },
      reps);
  const double bytes = 4.0 * static_cast<double>(elements);
  const std::string shape = std::to_string(count) + " tensors";
  std::printf("TIMING | grad_norm per-call batches     | %-22s | %10.1f us | %7.0f GB/s\n",
              shape.c_str(), per_call_us, bytes / (per_call_us * 1e-6) / 1e9);
  std::printf("TIMING | grad_norm prepared table       | %-22s | %10.1f us | %7.0f GB/s | %.2fx\n",
              shape.c_str(), table_us, bytes / (table_us * 1e-6) / 1e9, per_call_us / table_us);
}

// ---- gradient norm ---------------------------------------------------------------------------------

}  // namespace
}  // namespace frugal
