// GPU training against the CPU reference (needs a GPU; label cuda).
//
// GpuAdamW alone, on the tiny model's parameters with random gradients set directly on the device:
//   - fp32 moments: weights, moments, gradient norm and clip scale of three steps (one clipped)
//     equal the CPU AdamW's within fp32 rounding (|gpu - cpu| <= 1e-6 |cpu| + 1e-5 lr per element);
//   - BF16 moments (bf16 recipe): within the BF16 rounding of the moments (weights 2% of lr per
//     step, moments 1% of each tensor's largest moment);
//   - weight decay only where DeviceParam::weight_decay (zero gradients: matrices shrink by
//     lr * weight_decay, norms stay bit for bit), buffers never touched;
//   - a NaN or Inf in one gradient element skips the update (weights, moments, update count
//     unchanged; skipped_steps counts it) and the next finite step applies;
//   - download/upload of the moments round-trips bit for bit (BF16 -> fp32 -> BF16 is exact) and
//     two optimizers with the same state make bitwise identical updates;
//   - the refresh fused into the update (FRUGAL_FUSED_REFRESH on vs 0), bf16 and fp8 recipes, on a
//     tiny model with 128-multiple dims: 3 training steps and a validation forward give the same
//     losses bit for bit, the same weights, the same BF16 copies and FP8 codes/scales (both
//     orientations) of every weight, and an upload afterwards rebuilds every copy alike.
// The trainer with train.device = "cuda":
//   - fp32 recipe, tiny config, 3 steps of 2 micro-batches (gradient accumulation), validation:
//     every step's losses and gradient norm, and the validation loss, equal the CPU trainer's
//     within 1e-5 relative; final weights (routing biases included) and moments within 1e-5
//     relative (per tensor, ||gpu - cpu|| / ||cpu||); same update count and data position.
//     One MoE routing decision that flips on a near tie between fp32 results would break this:
//     the error printed then names the tensor.
//   - a checkpoint saved by the GPU trainer (fp32 and bf16 recipes) resumes on the CPU with the
//     same weights and moments bit for bit, and a CPU checkpoint resumes on the GPU likewise;
//   - a non-finite gradient (a NaN weight in the head) skips the step, logs it, and leaves weights
//     and moments as they were; the metrics record it; the log names the device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/device_context.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "data/text_source.h"
#include "io/config_io.h"
#include "model/gpu/gpu_linear.h"
#include "model/gpu/gpu_transformer.h"
#include "model/tiny_model_config.h"
#include "test_util.h"
#include "train/train_test_util.h"
#include "train/adamw.h"
#include "train/gpu_optimizer.h"
#include "train/trainer.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;
using ::frugal::testing::TempDir;
using ::frugal::testing::synthetic_tokens;

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  return ::frugal::testing::read_metrics_file(path);
}

// ---- helpers -----------------------------------------------------------------------------------

struct Sources {
  explicit Sources(uint64_t seed)
      : train(synthetic_tokens(3000, 11), seed, 0, 1, ByteTokenizer::kVocabSize, "train"),
        val(synthetic_tokens(600, 12), seed, 0, 1, ByteTokenizer::kVocabSize, "validation") {}
  TextDataSource train, val;
};

std::string tiny_path() {
  return std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml";
}

Config train_config(const std::string& out_dir, const std::string& device,
                    const std::string& precision, std::vector<std::string> extra = {}) {
  std::vector<std::string> overrides = {
      "train.seq_len=16",
      "train.micro_batch=2",
      "train.batch_sequences=4",  // two micro-batches: gradient accumulation
      "train.steps=3",
      "train.eval_every=3",
      "train.eval_batches=2",
      "train.save_every=0",
      "train.log_every=1",
      "train.bias_update_speed=[[0, 1e-2]]",
      "schedule.warmup_steps=1",
      "schedule.decay_start=1",
      "schedule.decay_end=3",
      "train.device=" + device,
      "train.precision=" + precision,
      "train.out_dir=" + out_dir,
  };
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return load_config(tiny_path(), overrides);
}

double norm(const std::vector<float>& a) {
  double s = 0;
  for (float x : a) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// ||a - b|| / ||b|| (0 when both are zero; inf when only b is).
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    diff += d * d;
  }
  const double reference = norm(b);
  if (reference == 0) return diff == 0 ? 0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff) / reference;
}

double relative_difference(double a, double b) {
  return std::fabs(a - b) / std::max(std::fabs(b), 1e-30);
}

template <class T>
void to_device(T* device, const std::vector<T>& host, cudaStream_t stream) {
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(device, host.data(), host.size() * sizeof(T),
                                    cudaMemcpyHostToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- GpuAdamW against the CPU AdamW
// ---------------------------------------------------------------

// A tiny model on the GPU and its host twin with the same weights.
struct OptimizerBench {
  explicit OptimizerBench(Recipe recipe, const OptimConfig& optim)
      : config(load_config(tiny_path())),
        host(config.model),
        gpu_model(ctx, config.model, recipe),
        host_optimizer(optim, host.params()),
        gpu_optimizer(ctx, optim, gpu_model) {
    host.init_weights(7, 0.02);
    gpu_model.upload(host.params());
  }

  // Fresh random gradients (normal, stddev `scale`) on both sides.
  void set_gradients(uint64_t seed, float scale) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> dist(0.0f, scale > 0 ? scale : 1.0f);
    auto& device_params = gpu_model.params();
    for (size_t i = 0; i < device_params.size(); ++i) {
      auto& p = *host.params().all()[i];
      ASSERT_EQ(p.name, device_params[i].name);
      if (!p.trainable) continue;
      for (float& g : p.grad) g = scale > 0 ? dist(gen) : 0.0f;
      to_device(device_params[i].grad, p.grad, ctx.stream);
    }
  }

  Config config;
  cuda::DeviceContext ctx;
  Transformer<float> host;
  gpu::GpuTransformer gpu_model;
  AdamW<float> host_optimizer;
  gpu::GpuAdamW gpu_optimizer;
};

OptimConfig test_optim(double grad_clip = 1.0) {
  OptimConfig o;
  o.weight_decay = 0.1;
  o.grad_clip = grad_clip;
  return o;
}

TEST(GpuAdamW, Fp32MomentsMatchTheCpuAdamW) {
  const double lr = 1e-2;
  OptimizerBench bench(Recipe::Fp32, test_optim());
  EXPECT_FALSE(bench.gpu_optimizer.bf16_moments());
  // Step 1 and 3 have a norm far above grad_clip = 1 (clipped), step 2 below it.
  const float scales[] = {0.05f, 1e-4f, 0.2f};
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step + 1));
    bench.set_gradients(100 + step, scales[step]);
    const auto cpu = bench.host_optimizer.step(bench.host.params(), lr);
    const auto gpu = bench.gpu_optimizer.step(lr);
    ASSERT_FALSE(gpu.skipped);
    EXPECT_LE(relative_difference(gpu.grad_norm, cpu.grad_norm), 1e-5)
        << gpu.grad_norm << " vs " << cpu.grad_norm;
    EXPECT_LE(std::fabs(gpu.clip_scale - cpu.clip_scale), 1e-5 * cpu.clip_scale)
        << gpu.clip_scale << " vs " << cpu.clip_scale;
    if (step != 1)
      EXPECT_LT(cpu.clip_scale, 1.0);
    else
      EXPECT_EQ(gpu.clip_scale, 1.0);
  }
  EXPECT_EQ(bench.gpu_optimizer.step_count(), 3);

  Transformer<float> downloaded(bench.config.model);
  bench.gpu_model.download(downloaded.params());
  AdamW<float> moments(test_optim(), downloaded.params());
  bench.gpu_optimizer.download(moments);
  EXPECT_EQ(moments.step_count(), 3);
  for (size_t i = 0; i < downloaded.params().size(); ++i) {
    const auto& g = *downloaded.params().all()[i];
    const auto& c = *bench.host.params().all()[i];
    if (!c.trainable) {
      EXPECT_TRUE(same_bits(g.value, c.value)) << c.name << ": a buffer changed";
      continue;
    }
    int64_t bad = 0;
    for (size_t k = 0; k < c.value.size(); ++k)
      bad += std::fabs(g.value[k] - c.value[k]) > 1e-6 * std::fabs(c.value[k]) + 1e-5 * lr;
    EXPECT_EQ(bad, 0) << c.name << ": " << bad << " weights differ";
  }
  for (size_t k = 0; k < moments.state().size(); ++k) {
    const auto& g = moments.state()[k];
    const auto& c = bench.host_optimizer.state()[k];
    ASSERT_EQ(g.name, c.name);
    EXPECT_LE(relative_error(g.m, c.m), 1e-6) << c.name;
    EXPECT_LE(relative_error(g.v, c.v), 1e-6) << c.name;
  }
}

TEST(GpuAdamW, Bf16MomentsFollowTheCpuAdamW) {
  const double lr = 1e-2;
  OptimizerBench bench(Recipe::Bf16, test_optim());
  EXPECT_TRUE(bench.gpu_optimizer.bf16_moments());
  for (int step = 0; step < 3; ++step) {
    bench.set_gradients(200 + step, 0.05f);
    bench.host_optimizer.step(bench.host.params(), lr);
    ASSERT_FALSE(bench.gpu_optimizer.step(lr).skipped);
  }
  Transformer<float> downloaded(bench.config.model);
  bench.gpu_model.download(downloaded.params());
  AdamW<float> moments(test_optim(), downloaded.params());
  bench.gpu_optimizer.download(moments);
  for (size_t i = 0; i < downloaded.params().size(); ++i) {
    const auto& g = *downloaded.params().all()[i];
    const auto& c = *bench.host.params().all()[i];
    int64_t bad = 0;
    for (size_t k = 0; k < c.value.size(); ++k)
      bad += std::fabs(g.value[k] - c.value[k]) > 3 * 0.02 * lr + 1e-6 * std::fabs(c.value[k]);
    EXPECT_EQ(bad, 0) << c.name << ": " << bad
                      << " weights off by more than the BF16 moments allow";
  }
  for (size_t k = 0; k < moments.state().size(); ++k) {
    const auto& g = moments.state()[k];
    const auto& c = bench.host_optimizer.state()[k];
    float m_max = 0, v_max = 0;
    for (size_t j = 0; j < c.m.size(); ++j) {
      m_max = std::max(m_max, std::fabs(c.m[j]));
      v_max = std::max(v_max, std::fabs(c.v[j]));
    }
    int64_t bad = 0, not_bf16 = 0;
    for (size_t j = 0; j < c.m.size(); ++j) {
      bad +=
          std::fabs(g.m[j] - c.m[j]) > 0.01f * m_max || std::fabs(g.v[j] - c.v[j]) > 0.01f * v_max;
      not_bf16 += round_to_bf16(g.m[j]) != g.m[j] || round_to_bf16(g.v[j]) != g.v[j];
    }
    EXPECT_EQ(bad, 0) << c.name;
    EXPECT_EQ(not_bf16, 0) << c.name << ": downloaded moments are not BF16 values";
  }
}

TEST(GpuAdamW, DecaysOnlyFlaggedWeights) {
  const double lr = 0.1;
  OptimizerBench bench(Recipe::Fp32, test_optim());
  bench.set_gradients(300, 0.0f);  // zero gradients: only the decay moves a weight
  const auto info = bench.gpu_optimizer.step(lr);
  EXPECT_FALSE(info.skipped);
  EXPECT_EQ(info.grad_norm, 0.0);
  Transformer<float> after(bench.config.model);
  bench.gpu_model.download(after.params());
  int64_t decayed = 0, kept = 0;
  for (size_t i = 0; i < after.params().size(); ++i) {
    const auto& a = *after.params().all()[i];
    const auto& b = *bench.host.params().all()[i];  // the weights before the step
    if (b.trainable && b.weight_decay) {
      ++decayed;
      for (size_t k = 0; k < b.value.size(); ++k)
        ASSERT_NEAR(a.value[k], b.value[k] * (1.0 - lr * 0.1), 2e-7 * std::fabs(b.value[k]) + 1e-12)
            << a.name << "[" << k << "]";
    } else {
      ++kept;
      EXPECT_TRUE(same_bits(a.value, b.value)) << a.name << " changed without weight decay";
    }
  }
  EXPECT_GT(decayed, 0);
  EXPECT_GT(kept, 2);  // norms and routing biases
}

TEST(GpuAdamW, NonFiniteGradientSkipsTheUpdate) {
  for (float poison :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(poison);
    OptimizerBench bench(Recipe::Bf16, test_optim());
    bench.set_gradients(400, 0.05f);
    // One element of one tensor in the middle of the list.
    auto& params = bench.gpu_model.params();
    size_t target = params.size() / 2;
    while (!params[target].trainable) ++target;
    const int64_t element = params[target].count / 2 + 1;
    to_device(params[target].grad + element, std::vector<float>{poison}, bench.ctx.stream);
    const auto info = bench.gpu_optimizer.step(1e-2);
    EXPECT_TRUE(info.skipped);
    EXPECT_FALSE(std::isfinite(info.grad_norm));
    EXPECT_EQ(info.clip_scale, 0.0);
    EXPECT_EQ(bench.gpu_optimizer.step_count(), 0);
    EXPECT_EQ(bench.gpu_optimizer.skipped_steps(), 1);
    Transformer<float> after(bench.config.model);
    bench.gpu_model.download(after.params());
    for (size_t i = 0; i < after.params().size(); ++i)
      EXPECT_TRUE(same_bits(after.params().all()[i]->value, bench.host.params().all()[i]->value))
          << after.params().all()[i]->name << " changed in a skipped step";
    AdamW<float> moments(test_optim(), after.params());
    bench.gpu_optimizer.download(moments);
    for (const auto& s : moments.state())
      EXPECT_EQ(norm(s.m) + norm(s.v), 0.0) << s.name << ": moments moved in a skipped step";
    // The next finite step applies.
    bench.set_gradients(401, 0.05f);
    EXPECT_FALSE(bench.gpu_optimizer.step(1e-2).skipped);
    EXPECT_EQ(bench.gpu_optimizer.step_count(), 1);
    EXPECT_EQ(bench.gpu_optimizer.skipped_steps(), 1);
  }
}

TEST(GpuAdamW, MomentsRoundTripThroughTheHostFormat) {
  for (Recipe recipe : {Recipe::Fp32, Recipe::Bf16}) {
    SCOPED_TRACE(std::string(recipe_name(recipe)));
    OptimizerBench a(recipe, test_optim());
    for (int step = 0; step < 2; ++step) {
      a.set_gradients(500 + step, 0.05f);
      a.gpu_optimizer.step(1e-2);
    }
    Transformer<float> weights(a.config.model);
    a.gpu_model.download(weights.params());
    AdamW<float> saved(test_optim(), weights.params());
    a.gpu_optimizer.download(saved);
    EXPECT_EQ(saved.step_count(), 2);

    // A second GPU optimizer takes the state; its download is the same bits.
    OptimizerBench b(recipe, test_optim());
    b.gpu_model.upload(weights.params());
    b.gpu_optimizer.upload(saved);
    EXPECT_EQ(b.gpu_optimizer.step_count(), 2);
    AdamW<float> again(test_optim(), weights.params());
    b.gpu_optimizer.download(again);
    for (size_t k = 0; k < saved.state().size(); ++k) {
      EXPECT_TRUE(same_bits(saved.state()[k].m, again.state()[k].m)) << saved.state()[k].name;
      EXPECT_TRUE(same_bits(saved.state()[k].v, again.state()[k].v)) << saved.state()[k].name;
    }
    // Same state, same gradients: the same update, bit for bit.
    a.set_gradients(600, 0.05f);
    b.set_gradients(600, 0.05f);
    a.gpu_optimizer.step(1e-2);
    b.gpu_optimizer.step(1e-2);
    Transformer<float> wa(a.config.model), wb(b.config.model);
    a.gpu_model.download(wa.params());
    b.gpu_model.download(wb.params());
    for (size_t i = 0; i < wa.params().size(); ++i)
      EXPECT_TRUE(same_bits(wa.params().all()[i]->value, wb.params().all()[i]->value))
          << wa.params().all()[i]->name;
    // A host optimizer of another layout is refused, naming the problem.
    Config other = a.config;
    other.model.num_hidden_layers = 1;
    other.model.first_k_dense_replace = 1;
    Transformer<float> small(other.model);
    AdamW<float> wrong(test_optim(), small.params());
    EXPECT_THROW(b.gpu_optimizer.upload(wrong), Error);
  }
}

// ---- the refresh fused into the update (FRUGAL_FUSED_REFRESH) -----------------------------------

// tiny with every dimension a multiple of 128 where fp8 needs it (most Linears go fp8; a few, like
// q_b_proj with 2 x 96 outputs, stay bf16 and take the fused BF16 copy instead).
ModelConfig fused_refresh_model() {
  return testing::with_fp8_sized_dims(load_config(tiny_path()).model);
}

// Every bf16 / fp8 weight copy of `model` (found through DeviceParam::copies, one entry per weight,
// in params() order) as raw bytes: the BF16 copy, or codes, scales, transposed codes and scales.
std::vector<std::pair<std::string, std::vector<uint8_t>>> weight_copy_bytes(
    gpu::GpuTransformer& model, cudaStream_t stream) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> out;
  std::vector<const gpu::WeightCopyState*> seen;
  auto fetch = [&](const void* device, size_t bytes) {
    std::vector<uint8_t> host(bytes);
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(host.data(), device, bytes, cudaMemcpyDeviceToHost, stream));
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    return host;
  };
  for (const gpu::DeviceParam& p : model.params()) {
    const auto state = p.copies;
    if (state == nullptr || std::find(seen.begin(), seen.end(), state.get()) != seen.end())
      continue;
    seen.push_back(state.get());
    const gpu::WeightCopies& c = state->copies;
    const size_t n = static_cast<size_t>(c.count());
    if (c.precision == gpu::GemmPrecision::Bf16) {
      out.push_back({p.name + " bf16 copy", fetch(c.bf16_copy, n * 2)});
    } else {
      const size_t blocks = static_cast<size_t>(c.groups * (c.out / 128) * (c.in / 128));
      out.push_back({p.name + " fp8 codes", fetch(c.q, n)});
      out.push_back({p.name + " fp8 scales", fetch(c.scales, blocks * 4)});
      out.push_back({p.name + " fp8 transposed codes", fetch(c.qT, n)});
      out.push_back({p.name + " fp8 transposed scales", fetch(c.scalesT, blocks * 4)});
    }
  }
  return out;
}

struct FusedRefreshRun {
  std::vector<double> losses;  // per step (total, main), then a final evaluate (total, main)
  std::vector<std::vector<float>> weights;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> copies;         // after the steps
  std::vector<std::pair<std::string, std::vector<uint8_t>>> reload_copies;  // after an upload
  int64_t fused_weights = 0, fp8_blocks = 0;
};

// 3 steps (forward_backward of 2 x 128 tokens, GpuAdamW at lr 1e-3 with weight decay and a clip
// that bites), with the fused refresh on or off (the environment variable, read by the optimizer
// when it is made), then a validation forward (it reads the copies of the last update) and an
// upload of the initial weights (every copy must be rebuilt, flags or not).
FusedRefreshRun run_fused_refresh(Recipe recipe, bool fused) {
  FusedRefreshRun run;
  const ModelConfig cfg = fused_refresh_model();
  cuda::DeviceContext ctx;
  Transformer<float> host(cfg);
  host.init_weights(7, 0.02);
  gpu::GpuTransformer model(ctx, cfg, recipe);
  model.upload(host.params());
  setenv("FRUGAL_FUSED_REFRESH", fused ? "1" : "0", 1);
  gpu::GpuAdamW optimizer(ctx, test_optim(0.5), model);
  unsetenv("FRUGAL_FUSED_REFRESH");
  EXPECT_EQ(optimizer.fused_refresh(), fused);
  run.fused_weights = optimizer.fused_weights();
  run.fp8_blocks = optimizer.fused_fp8_blocks();

  const int64_t batch = 2, seq = 128;
  std::mt19937_64 gen(31);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(cfg.vocab_size) - 1);
  std::vector<int32_t> tokens(batch * seq), targets(batch * seq);
  for (int step = 0; step < 4; ++step) {
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = token(gen);
    for (size_t i = 0; i < tokens.size(); ++i)
      targets[i] = (i + 1) % seq == 0 ? -1 : tokens[i + 1];
    Losses losses;
    if (step < 3) {
      model.zero_grad();
      losses = model.forward_backward(tokens.data(), targets.data(), batch, seq, LossWeights{}, 1.0);
      const auto info = optimizer.step(1e-3);
      EXPECT_FALSE(info.skipped);
    } else {
      losses = model.evaluate(tokens.data(), targets.data(), batch, seq, LossWeights{});
    }
    run.losses.push_back(losses.total);
    run.losses.push_back(losses.main);
  }
  Transformer<float> downloaded(cfg);
  model.download(downloaded.params());
  for (const auto& p : downloaded.params().all()) run.weights.push_back(p->value);
  run.copies = weight_copy_bytes(model, ctx.stream);
  model.upload(host.params());
  run.reload_copies = weight_copy_bytes(model, ctx.stream);
  return run;
}

void expect_same_copies(const std::vector<std::pair<std::string, std::vector<uint8_t>>>& fused,
                        const std::vector<std::pair<std::string, std::vector<uint8_t>>>& unfused,
                        const std::string& when) {
  ASSERT_EQ(fused.size(), unfused.size()) << when;
  int differing = 0;
  for (size_t i = 0; i < fused.size(); ++i) {
    ASSERT_EQ(fused[i].first, unfused[i].first);
    size_t first = 0, count = 0;
    for (size_t k = 0; k < fused[i].second.size(); ++k)
      if (fused[i].second[k] != unfused[i].second[k] && count++ == 0) first = k;
    if (count == 0) continue;
    ++differing;
    ADD_FAILURE() << when << ": " << fused[i].first << ": " << count << " of "
                  << fused[i].second.size() << " bytes differ, first at byte " << first;
  }
  std::printf("CHECK | fused refresh copies | %s | %d of %zu copies differ | %s\n", when.c_str(),
              differing, fused.size(), differing == 0 ? "ok" : "FAIL");
}

TEST(GpuAdamW, FusedRefreshEqualsTheModelRefreshBitForBit) {
  for (Recipe recipe : {Recipe::Bf16, Recipe::Fp8}) {
    const std::string name(recipe_name(recipe));
    SCOPED_TRACE(name);
    const FusedRefreshRun on = run_fused_refresh(recipe, true);
    const FusedRefreshRun off = run_fused_refresh(recipe, false);
    std::printf("%s: fused refresh covers %lld weights, %lld fp8 blocks\n", name.c_str(),
                static_cast<long long>(on.fused_weights), static_cast<long long>(on.fp8_blocks));
    EXPECT_GT(on.fused_weights, 0);
    EXPECT_EQ(off.fused_weights, 0);
    EXPECT_EQ(off.fp8_blocks, 0);
    if (recipe == Recipe::Fp8)
      EXPECT_GT(on.fp8_blocks, 0);
    else
      EXPECT_EQ(on.fp8_blocks, 0);
    // Step 1's forward runs before any update: a difference there is the model's own
    // nondeterminism, not the fusion's.
    ASSERT_EQ(on.losses.size(), off.losses.size());
    EXPECT_EQ(on.losses[0], off.losses[0]) << "step 1 (no update yet): the model is not "
                                              "deterministic run to run";
    for (size_t i = 2; i < on.losses.size(); ++i)
      EXPECT_EQ(on.losses[i], off.losses[i])
          << (i / 2 < 3 ? "step " + std::to_string(i / 2 + 1) : std::string("validation"))
          << (i % 2 == 0 ? " total" : " main") << " loss: fused " << on.losses[i] << " unfused "
          << off.losses[i];
    ASSERT_EQ(on.weights.size(), off.weights.size());
    Transformer<float> names(fused_refresh_model());
    for (size_t i = 0; i < on.weights.size(); ++i)
      EXPECT_TRUE(same_bits(on.weights[i], off.weights[i]))
          << names.params().all()[i]->name << ": weights differ after 3 steps";
    expect_same_copies(on.copies, off.copies, name + " after 3 steps");
    expect_same_copies(on.reload_copies, off.reload_copies, name + " after an upload");
    // The upload rebuilt every copy: the copies changed with the weights.
    EXPECT_NE(on.copies, on.reload_copies);
  }
}

// ---- the trainer on the GPU
// ----------------------------------------------------------------------

void expect_params_close(Transformer<float>& gpu, Transformer<float>& cpu, double tolerance) {
  ASSERT_EQ(gpu.params().size(), cpu.params().size());
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < cpu.params().size(); ++i) {
    const auto& g = *gpu.params().all()[i];
    const auto& c = *cpu.params().all()[i];
    ASSERT_EQ(g.name, c.name);
    const double error = relative_error(g.value, c.value);
    EXPECT_LE(error, tolerance) << c.name << (c.trainable ? "" : " (routing bias)");
    if (error > worst) worst = error, worst_name = c.name;
  }
  std::printf("weights: worst relative error %.3g (%s)\n", worst, worst_name.c_str());
}

void expect_same_params(Transformer<float>& a, Transformer<float>& b) {
  ASSERT_EQ(a.params().size(), b.params().size());
  for (size_t i = 0; i < a.params().size(); ++i)
    EXPECT_TRUE(same_bits(a.params().all()[i]->value, b.params().all()[i]->value))
        << a.params().all()[i]->name << " differs";
}

void expect_same_moments(const AdamW<float>& a, const AdamW<float>& b) {
  EXPECT_EQ(a.step_count(), b.step_count());
  ASSERT_EQ(a.state().size(), b.state().size());
  for (size_t k = 0; k < a.state().size(); ++k) {
    EXPECT_TRUE(same_bits(a.state()[k].m, b.state()[k].m)) << a.state()[k].name;
    EXPECT_TRUE(same_bits(a.state()[k].v, b.state()[k].v)) << a.state()[k].name;
  }
}

TEST(GpuTrainer, Fp32MatchesTheCpuTrainer) {
  TempDir dir;
  Sources cpu_data(1234), gpu_data(1234);
  Trainer cpu(train_config(dir.sub("cpu"), "cpu", "fp32"), cpu_data.train, &cpu_data.val, true);
  Trainer gpu(train_config(dir.sub("gpu"), "cuda", "fp32"), gpu_data.train, &gpu_data.val, true);
  EXPECT_NE(gpu.engine().description().find("cuda:0"), std::string::npos);
  EXPECT_NE(gpu.engine().description().find("fp32"), std::string::npos);
  const TrainSummary cpu_run = cpu.run();
  const TrainSummary gpu_run = gpu.run();
  EXPECT_EQ(gpu_run.steps_done, 3);
  EXPECT_EQ(gpu_run.skipped_steps, 0);
  EXPECT_LE(relative_difference(gpu_run.last_val_loss, cpu_run.last_val_loss), 1e-5)
      << gpu_run.last_val_loss << " vs " << cpu_run.last_val_loss;

  auto cpu_records = read_metrics(dir.sub("cpu") + "/metrics.jsonl");
  auto gpu_records = read_metrics(dir.sub("gpu") + "/metrics.jsonl");
  ASSERT_EQ(cpu_records.size(), 3u);
  ASSERT_EQ(gpu_records.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    for (const char* key : {"loss", "loss_main", "loss_mtp", "loss_balance", "grad_norm"}) {
      const double g = gpu_records[i][key].get<double>(), c = cpu_records[i][key].get<double>();
      EXPECT_LE(relative_difference(g, c), 1e-5) << key << ": gpu " << g << ", cpu " << c;
    }
    EXPECT_EQ(gpu_records[i]["lr"], cpu_records[i]["lr"]);
    EXPECT_EQ(gpu_records[i]["tokens"], cpu_records[i]["tokens"]);
    EXPECT_FALSE(gpu_records[i]["skipped"].get<bool>());
    EXPECT_GT(gpu_records[i]["peak_memory_bytes"].get<int64_t>(), 0);  // the allocator's peak
  }
  // Several AdamW steps amplify last-bit gradient differences (a near-zero gradient's change is
  // multiplied by lr / eps), so weights and moments are held to 1e-4 relative; the losses and
  // gradient norms above, which see the step itself, stay at 1e-5.
  expect_params_close(gpu.model(), cpu.model(), 1e-4);
  const AdamW<float>& gpu_moments = gpu.optimizer();
  const AdamW<float>& cpu_moments = cpu.optimizer();
  EXPECT_EQ(gpu_moments.step_count(), cpu_moments.step_count());
  for (size_t k = 0; k < cpu_moments.state().size(); ++k) {
    EXPECT_LE(relative_error(gpu_moments.state()[k].m, cpu_moments.state()[k].m), 1e-4)
        << cpu_moments.state()[k].name;
    EXPECT_LE(relative_error(gpu_moments.state()[k].v, cpu_moments.state()[k].v), 1e-4)
        << cpu_moments.state()[k].name;
  }
  EXPECT_EQ(gpu.state().tokens_seen, cpu.state().tokens_seen);
  EXPECT_EQ(gpu.state().train_data, cpu.state().train_data);
}

TEST(GpuTrainer, GpuCheckpointResumesOnTheCpu) {
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    TempDir dir;
    Sources gpu_data(1234);
    Trainer gpu(train_config(dir.sub("run"), "cuda", precision, {"train.eval_every=0"}),
                gpu_data.train, nullptr, true);
    const TrainSummary part = gpu.run(2);
    EXPECT_EQ(fs::path(part.checkpoint).filename(), "checkpoint-00000002");

    // The CPU trains fp32 only; the checkpoint's moments are fp32 in the file either way.
    Sources cpu_data(1234);
    Trainer cpu(train_config(dir.sub("run"), "cpu", "fp32", {"train.eval_every=0"}), cpu_data.train,
                nullptr, true);
    cpu.resume(resolve_checkpoint(dir.sub("run")));
    EXPECT_EQ(cpu.state().step, 2);
    EXPECT_EQ(cpu.state().train_data, gpu.state().train_data);
    expect_same_params(cpu.model(), gpu.model());
    expect_same_moments(cpu.optimizer(), gpu.optimizer());
    // The CPU continues from there.
    EXPECT_EQ(cpu.run().steps_done, 1);

    // And the same checkpoint resumes on the GPU with the same recipe, bit for bit.
    Sources again_data(1234);
    Trainer again(train_config(dir.sub("other"), "cuda", precision, {"train.eval_every=0"}),
                  again_data.train, nullptr, true);
    again.resume(part.checkpoint);
    expect_same_params(again.model(), gpu.model());
    expect_same_moments(again.optimizer(), gpu.optimizer());
  }
}

TEST(GpuTrainer, CpuCheckpointResumesOnTheGpu) {
  TempDir dir;
  Sources cpu_data(1234);
  Trainer cpu(train_config(dir.sub("run"), "cpu", "fp32", {"train.eval_every=0"}), cpu_data.train,
              nullptr, true);
  const TrainSummary part = cpu.run(2);
  Sources gpu_data(1234);
  Trainer gpu(train_config(dir.sub("gpu"), "cuda", "fp32", {"train.eval_every=0"}), gpu_data.train,
              nullptr, true);
  gpu.resume(part.checkpoint);
  expect_same_params(gpu.model(), cpu.model());
  expect_same_moments(gpu.optimizer(), cpu.optimizer());
  // One more step on each stays within the multi-step fp32 tolerance.
  cpu.run();
  gpu.run();
  expect_params_close(gpu.model(), cpu.model(), 1e-4);
}

TEST(GpuTrainer, NonFiniteGradientSkipsTheStepAndLogsIt) {
  for (const char* precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    TempDir dir;
    Sources data(1234);
    Trainer t(train_config(dir.sub("run"), "cuda", precision, {"train.eval_every=0"}), data.train,
              nullptr, /*quiet=*/false);
    ::testing::internal::CaptureStdout();
    t.run(1);
    const std::string first = ::testing::internal::GetCapturedStdout();
    EXPECT_NE(first.find("device: cuda:0"), std::string::npos) << first;
    EXPECT_NE(first.find("step 1/3 | loss"), std::string::npos) << first;

    // Poison one head weight: every logit row holds a NaN, so every gradient does.
    t.model().params().get("lm_head.weight").value[0] = std::numeric_limits<float>::quiet_NaN();
    t.host_state_changed();
    std::vector<std::vector<float>> before;
    for (auto& p : t.model().params().all()) before.push_back(p->value);
    const int64_t updates = t.optimizer().step_count();
    std::vector<std::vector<float>> moments_before;
    for (auto& s : t.optimizer().state()) moments_before.push_back(s.m);

    ::testing::internal::CaptureStdout();
    const TrainSummary summary = t.run(1);
    const std::string output = ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(summary.steps_done, 1);
    EXPECT_EQ(summary.skipped_steps, 1);
    EXPECT_NE(output.find("step 2: non-finite gradient norm, update skipped"), std::string::npos)
        << output;
    EXPECT_EQ(t.optimizer().step_count(), updates);
    for (size_t i = 0; i < before.size(); ++i)
      EXPECT_TRUE(same_bits(before[i], t.model().params().all()[i]->value))
          << t.model().params().all()[i]->name << " changed in a skipped step";
    for (size_t i = 0; i < moments_before.size(); ++i)
      EXPECT_TRUE(same_bits(moments_before[i], t.optimizer().state()[i].m));
    auto records = read_metrics(dir.sub("run") + "/metrics.jsonl");
    ASSERT_EQ(records.size(), 2u);
    EXPECT_FALSE(records[0]["skipped"].get<bool>());
    EXPECT_TRUE(records[1]["skipped"].get<bool>());
  }
}

}  // namespace
}  // namespace frugal
