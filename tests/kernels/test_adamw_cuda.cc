// CUDA optimizer step (kernels/adamw/adamw_cuda.h) against the CPU:
//   adamw_update<float>: several steps against frugal::AdamW<float> (train/adamw.h) on a ParamStore
//     with a decayed matrix and an undecayed norm, fresh random gradients each step; w, m, v within
//     1e-6 of max |cpu| (the kernel does the CPU's double arithmetic, so they are expected to be
//     bit-identical; the number of differing values is printed); weight_bf16 == bf16(w) bit for bit
//   adamw_update<bf16>: several steps against a host emulation (the CPU formula in double, moments
//     rounded to bf16 after each update), with a clip scale != 1, <= 1e-6
//   a clip scale of 0 (non-finite norm) changes nothing; misaligned pointers and odd sizes
//   adamw_update_multi: tests/kernels/test_adamw_multi_cuda.cc
//   grad_norm_and_clip: norm vs the double sum of squares (<= 1e-5 relative), clip scale
//     min(1, max_norm / (norm + 1e-6)) (1 when max_norm <= 0), nonfinite flag with an injected NaN and
//     an injected Inf, over more tensors than one launch batch, the same bits on a second run; the
//     prepared-table form (grad_norm_prepare) gives the same bits as the per-call form every time
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

int64_t count_bit_differences(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i]);
  return n;
}

class AdamWCuda : public testing::CudaTest {};

TEST_F(AdamWCuda, Fp32MomentsMatchCpuAdamW) {
  cuda::AdamWStep gpu_step;
  gpu_step.beta1 = 0.9f;
  gpu_step.beta2 = 0.95f;
  gpu_step.eps = 1e-8f;
  const float weight_decay = 0.1f;
  OptimConfig config;
  config.beta1 = gpu_step.beta1;  // the float values, widened: both sides use the same numbers
  config.beta2 = gpu_step.beta2;
  config.eps = gpu_step.eps;
  config.weight_decay = weight_decay;
  config.grad_clip = 0;  // no clipping: clip scale exactly 1 on both sides

  ParamStore<float> store;
  struct Tensor {
    const char* name;
    std::vector<int64_t> shape;
    ParamKind kind;
    bool misaligned;
  };
  const Tensor tensors[] = {{"layer.weight", {37, 129}, ParamKind::Matrix, false},
                            {"layer.norm", {100}, ParamKind::Norm, false},
                            {"odd.weight", {3, 3}, ParamKind::Matrix, true},
                            {"big.weight", {1024, 257}, ParamKind::Matrix, false}};
  for (const Tensor& t : tensors) {
    Param<float>& p = store.add(t.name, t.shape, t.kind);
    p.value = testing::random_normal(p.numel(), testing::case_seed(std::string("w ") + t.name, 0),
                                     0.0f, 0.05f);
  }
  AdamW<float> cpu_adamw(config, store);

  struct DeviceState {
    DeviceArray<float> w, m, v, grad;
    DeviceArray<__nv_bfloat16> w_bf16;
  };
  std::vector<std::unique_ptr<DeviceState>> device;
  for (const Tensor& t : tensors) {
    const Param<float>& p = store.get(t.name);
    auto state = std::make_unique<DeviceState>(DeviceState{
        DeviceArray<float>(p.numel(), t.misaligned), DeviceArray<float>(p.numel(), t.misaligned),
        DeviceArray<float>(p.numel(), t.misaligned), DeviceArray<float>(p.numel(), t.misaligned),
        DeviceArray<__nv_bfloat16>(p.numel(), t.misaligned)});
    state->w.upload(p.value);
    state->m.upload(std::vector<float>(p.numel(), 0.0f));
    state->v.upload(std::vector<float>(p.numel(), 0.0f));
    device.push_back(std::move(state));
  }
  DeviceArray<float> clip_d(1);
  clip_d.upload({1.0f});

  const float learning_rates[] = {1e-3f, 3e-4f, 2.2e-4f, 1e-4f, 5e-5f};
  for (int step = 1; step <= 5; ++step) {
    const float lr = learning_rates[step - 1];
    gpu_step.lr = lr;
    gpu_step.step = step;
    for (size_t k = 0; k < std::size(tensors); ++k) {
      Param<float>& p = store.get(tensors[k].name);
      p.grad = testing::random_normal(p.numel(), testing::case_seed(p.name, step), 0.0f, 0.01f);
      device[k]->grad.upload(p.grad);
      device[k]->w_bf16.poison();
      gpu_step.weight_decay = p.weight_decay ? weight_decay : 0.0f;
      cuda::adamw_update<float>(device[k]->w.get(), device[k]->m.get(), device[k]->v.get(),
                                device[k]->grad.get(), clip_d.get(), gpu_step, p.numel(),
                                device[k]->w_bf16.get(), stream_);
    }
    const AdamW<float>::StepInfo info = cpu_adamw.step(store, lr);
    ASSERT_FALSE(info.skipped);
    sync();
    for (size_t k = 0; k < std::size(tensors); ++k) {
      const Param<float>& p = store.get(tensors[k].name);
      const auto& state = cpu_adamw.state()[k];
      ASSERT_EQ(state.name, p.name);
      const std::string text = p.name + " step " + std::to_string(step) +
                               (tensors[k].misaligned ? " +1el" : "");
      const std::vector<float> w_gpu = device[k]->w.download();
      const std::vector<float> m_gpu = device[k]->m.download();
      const std::vector<float> v_gpu = device[k]->v.download();
      testing::expect_close("adamw<f32> w", text, w_gpu, p.value, kAdamTolerance);
      testing::expect_close("adamw<f32> m", text, m_gpu, state.m, kAdamTolerance);
      testing::expect_close("adamw<f32> v", text, v_gpu, state.v, kAdamTolerance);
      std::printf("  adamw<f32> %s: %lld w, %lld m, %lld v values differ in any bit from the CPU\n",
                  text.c_str(), static_cast<long long>(count_bit_differences(w_gpu, p.value)),
                  static_cast<long long>(count_bit_differences(m_gpu, state.m)),
                  static_cast<long long>(count_bit_differences(v_gpu, state.v)));
      testing::expect_identical_bits("adamw<f32> weight_bf16", text,
                                     testing::to_float(device[k]->w_bf16.download()),
                                     testing::round_bf16(w_gpu));
    }
  }
}

TEST_F(AdamWCuda, Bf16MomentsMatchHostEmulation) {
  for (int64_t n : {int64_t{1}, int64_t{9}, int64_t{4099}, int64_t{100000}})
    for (bool misaligned : {false, true}) {
      const std::string text = std::to_string(n) + (misaligned ? " +1el" : "");
      const uint64_t seed = testing::case_seed("adamw bf16 " + text, 0);
      std::vector<float> w = testing::random_normal(n, seed, 0.0f, 0.05f);
      std::vector<float> m(n, 0.0f), v(n, 0.0f);
      DeviceArray<float> w_d(n, misaligned), grad_d(n, misaligned), clip_d(1);
      DeviceArray<__nv_bfloat16> m_d(n, misaligned), v_d(n, misaligned), w_bf16_d(n, misaligned);
      w_d.upload(w);
      m_d.upload(testing::to_bf16(m));
      v_d.upload(testing::to_bf16(v));
      const float clip = 0.37f;
      clip_d.upload({clip});
      cuda::AdamWStep s;
      s.weight_decay = 0.1f;
      for (int step = 1; step <= 4; ++step) {
        s.lr = 1e-3f / static_cast<float>(step);
        s.step = step;
        const std::vector<float> grad = testing::random_normal(n, seed + step, 0.0f, 0.02f);
        grad_d.upload(grad);
        w_bf16_d.poison();
        cuda::adamw_update<__nv_bfloat16>(w_d.get(), m_d.get(), v_d.get(), grad_d.get(), clip_d.get(),
                                          s, n, w_bf16_d.get(), stream_);
        emulate_bf16_step(w, m, v, grad, clip, s);
        sync();
        const std::string step_text = text + " step " + std::to_string(step);
        const std::vector<float> w_gpu = w_d.download();
        testing::expect_close("adamw<bf16> w", step_text, w_gpu, w, kAdamTolerance);
        testing::expect_close("adamw<bf16> m", step_text, testing::to_float(m_d.download()), m,
                              kAdamTolerance);
        testing::expect_close("adamw<bf16> v", step_text, testing::to_float(v_d.download()), v,
                              kAdamTolerance);
        testing::expect_identical_bits("adamw<bf16> weight_bf16", step_text,
                                       testing::to_float(w_bf16_d.download()),
                                       testing::round_bf16(w_gpu));
      }
    }
}

TEST_F(AdamWCuda, ZeroClipScaleSkipsTheStep) {
  const int64_t n = 1000;
  const std::vector<float> w = testing::random_normal(n, 1), m = testing::random_normal(n, 2),
                           v = testing::round_bf16(testing::random_normal(n, 3, 1.0f, 0.1f)),
                           grad = testing::random_normal(n, 4);
  DeviceArray<float> w_d(n), grad_d(n), clip_d(1);
  DeviceArray<__nv_bfloat16> m_d(n), v_d(n), w_bf16_d(n);
  w_d.upload(w);
  m_d.upload(testing::to_bf16(m));
  v_d.upload(testing::to_bf16(v));
  grad_d.upload(grad);
  clip_d.upload({0.0f});
  w_bf16_d.poison();
  cuda::AdamWStep s;
  s.lr = 1e-3f;
  s.weight_decay = 0.1f;
  cuda::adamw_update<__nv_bfloat16>(w_d.get(), m_d.get(), v_d.get(), grad_d.get(), clip_d.get(), s,
                                    n, w_bf16_d.get(), stream_);
  sync();
  testing::expect_identical_bits("adamw skipped w", "1000", w_d.download(), w);
  testing::expect_identical_bits("adamw skipped m", "1000", testing::to_float(m_d.download()),
                                 testing::round_bf16(m));
  testing::expect_identical_bits("adamw skipped v", "1000", testing::to_float(v_d.download()), v);
  int64_t written = 0;
  for (__nv_bfloat16 b : w_bf16_d.download()) written += testing::bits_of(b) != 0xFFFF;
  EXPECT_EQ(written, 0) << "a skipped step wrote weight_bf16";
}

struct NormRun {
  float norm, clip;
  int32_t nonfinite;
};

NormRun run_grad_norm_once(cudaStream_t stream, const std::vector<cuda::GradTensor>& tensors,
                           float max_norm, bool prepared) {
  const size_t bytes = cuda::grad_norm_workspace_bytes(tensors.data(),
                                                       static_cast<int64_t>(tensors.size()));
  DeviceArray<uint8_t> workspace(static_cast<int64_t>(bytes));
  DeviceArray<float> norm_d(1), clip_d(1);
  DeviceArray<int32_t> nonfinite_d(1);
  workspace.poison();
  norm_d.poison();
  clip_d.poison();
  nonfinite_d.poison();
  if (prepared) {
    const int64_t count = static_cast<int64_t>(tensors.size());
    const size_t table_bytes = cuda::grad_norm_table_bytes(count);
    DeviceArray<uint8_t> table_memory(static_cast<int64_t>(table_bytes));
    table_memory.poison();
    const cuda::GradNormTable table =
        cuda::grad_norm_prepare(tensors.data(), count, table_memory.get(), table_bytes, stream);
    cuda::grad_norm_and_clip(norm_d.get(), clip_d.get(), nonfinite_d.get(), table, max_norm,
                             workspace.get(), stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  } else {
    cuda::grad_norm_and_clip(norm_d.get(), clip_d.get(), nonfinite_d.get(), tensors.data(),
                             static_cast<int64_t>(tensors.size()), max_norm, workspace.get(),
                             stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  return {norm_d.download()[0], clip_d.download()[0], nonfinite_d.download()[0]};
}

// Runs the per-call form and the prepared-table form; they must agree bit for bit (returns the
// per-call result).
NormRun run_grad_norm(cudaStream_t stream, const std::vector<cuda::GradTensor>& tensors,
                      float max_norm) {
  const NormRun direct = run_grad_norm_once(stream, tensors, max_norm, false);
  const NormRun table = run_grad_norm_once(stream, tensors, max_norm, true);
  const bool same = std::bit_cast<uint32_t>(direct.norm) == std::bit_cast<uint32_t>(table.norm) &&
                    std::bit_cast<uint32_t>(direct.clip) == std::bit_cast<uint32_t>(table.clip) &&
                    direct.nonfinite == table.nonfinite;
  const std::string text = std::to_string(tensors.size()) + " tensors max " +
                           std::to_string(max_norm);
  std::printf("CHECK | %-28s | %-22s | norm %.9g/%.9g clip %.9g/%.9g flag %d/%d | %s\n",
              "grad_norm table = per-call", text.c_str(), table.norm, direct.norm, table.clip,
              direct.clip, table.nonfinite, direct.nonfinite, same ? "ok" : "FAIL");
  EXPECT_TRUE(same) << "grad_norm_and_clip with a prepared table differs from the per-call form: "
                    << text;
  return direct;
}

TEST_F(AdamWCuda, GradNormAndClip) {
  // 300 tensors (more than one launch batch) of assorted sizes, some empty, some misaligned.
  const int64_t sizes[] = {0, 1, 7, 1000, 32768, 32769, 100000, 3, 4096, 65536 + 5};
  std::vector<std::unique_ptr<DeviceArray<float>>> arrays;
  std::vector<std::vector<float>> host;
  std::vector<cuda::GradTensor> tensors;
  double sum = 0;
  for (int i = 0; i < 300; ++i) {
    const int64_t n = sizes[i % std::size(sizes)];
    host.push_back(testing::random_normal(n, testing::case_seed("norm", i), 0.0f, 0.01f * (1 + i % 7)));
    arrays.push_back(std::make_unique<DeviceArray<float>>(n, i % 3 == 1));
    arrays.back()->upload(host.back());
    tensors.push_back({arrays.back()->get(), n});
    for (float g : host.back()) sum += static_cast<double>(g) * g;
  }
  const double norm = std::sqrt(sum);
  for (float max_norm : {1.0f, 1e6f, 0.0f}) {
    const NormRun first = run_grad_norm(stream_, tensors, max_norm);
    const NormRun second = run_grad_norm(stream_, tensors, max_norm);
    const double expected_clip =
        max_norm > 0 ? std::min(1.0, static_cast<double>(max_norm) / (norm + 1e-6)) : 1.0;
    const std::string text = "300 tensors max " + std::to_string(max_norm);
    testing::expect_close("grad_norm", text, {first.norm}, {static_cast<float>(norm)}, 1e-5);
    testing::expect_close("grad_norm clip", text, {first.clip}, {static_cast<float>(expected_clip)},
                          1e-5);
    EXPECT_EQ(first.nonfinite, 0) << text;
    EXPECT_EQ(std::bit_cast<uint32_t>(first.norm), std::bit_cast<uint32_t>(second.norm)) << text;
    EXPECT_EQ(std::bit_cast<uint32_t>(first.clip), std::bit_cast<uint32_t>(second.clip)) << text;
    if (max_norm <= 0 || max_norm > norm) {
      EXPECT_EQ(first.clip, 1.0f) << text;
    }
  }
  ASSERT_GT(norm, 1.0) << "the clipping case above needs a norm above max_norm = 1";

  // Non-finite gradients: NaN, then +Inf, in one element of one tensor.
  for (float bad : {NAN, INFINITY}) {
    std::vector<float> poisoned = host[6];
    poisoned[12345] = bad;
    arrays[6]->upload(poisoned);
    const NormRun run = run_grad_norm(stream_, tensors, 1.0f);
    const std::string text = std::isnan(bad) ? "NaN injected" : "Inf injected";
    std::printf("CHECK | %-28s | %-22s | norm %g clip %g flag %d | %s\n", "grad_norm nonfinite",
                text.c_str(), run.norm, run.clip, run.nonfinite,
                run.nonfinite == 1 && run.clip == 0.0f && !std::isfinite(run.norm) ? "ok" : "FAIL");
    EXPECT_EQ(run.nonfinite, 1) << text;
    EXPECT_EQ(run.clip, 0.0f) << text;
    EXPECT_FALSE(std::isfinite(run.norm)) << text;
    if (!std::isnan(bad)) {
      EXPECT_TRUE(std::isinf(run.norm)) << text;
    }
    arrays[6]->upload(host[6]);
  }

  // No tensors, or only empty ones: norm 0, clip 1.
  const NormRun empty = run_grad_norm(stream_, {}, 1.0f);
  EXPECT_EQ(empty.norm, 0.0f);
  EXPECT_EQ(empty.clip, 1.0f);
  EXPECT_EQ(empty.nonfinite, 0);
  const NormRun zeros = run_grad_norm(stream_, {{arrays[0]->get(), 0}}, 1.0f);
  EXPECT_EQ(zeros.norm, 0.0f);
  EXPECT_EQ(zeros.clip, 1.0f);
}

TEST_F(AdamWCuda, LaunchersRejectBadArguments) {
  cuda::AdamWStep s;
  EXPECT_THROW(cuda::adamw_update<float>(nullptr, nullptr, nullptr, nullptr, nullptr, s, -1, nullptr,
                                         stream_),
               Error);
  EXPECT_THROW(cuda::adamw_update<float>(nullptr, nullptr, nullptr, nullptr, nullptr, s, 10, nullptr,
                                         stream_),
               Error);
  s.step = 0;
  EXPECT_THROW(cuda::adamw_update<__nv_bfloat16>(nullptr, nullptr, nullptr, nullptr, nullptr, s, 0,
                                                 nullptr, stream_),
               Error);
  DeviceArray<float> out(3);
  DeviceArray<int32_t> flag(1);
  {
    DeviceArray<uint8_t> memory(static_cast<int64_t>(cuda::grad_norm_table_bytes(2)) + 16);
    const cuda::GradTensor bad[2] = {{out.get(), 3}, {nullptr, 5}};
    EXPECT_THROW(cuda::grad_norm_prepare(bad, 2, memory.get(), cuda::grad_norm_table_bytes(2),
                                         stream_),
                 Error);
    const cuda::GradTensor good[2] = {{out.get(), 3}, {out.get(), 2}};
    EXPECT_THROW(cuda::grad_norm_prepare(good, 2, memory.get(),
                                         cuda::grad_norm_table_bytes(2) - 1, stream_),
                 Error);
    EXPECT_THROW(cuda::grad_norm_prepare(good, 2, memory.get() + 8,
                                         cuda::grad_norm_table_bytes(2), stream_),
                 Error);
    cuda::GradNormTable unprepared;
    unprepared.tensors = 2;  // tensors but no table memory
    unprepared.blocks = 2;
    EXPECT_THROW(cuda::grad_norm_and_clip(out.get(), out.get() + 1, flag.get(), unprepared, 1.0f,
                                          memory.get(), stream_),
                 Error);
  }
  EXPECT_THROW(cuda::grad_norm_and_clip(out.get(), out.get() + 1, flag.get(), nullptr, 0, 1.0f,
                                        nullptr, stream_),
               Error);
  sync();
}

}  // namespace
}  // namespace frugal
