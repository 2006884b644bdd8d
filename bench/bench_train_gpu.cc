// Training-step throughput on one GPU: a preset's model (random init from train.seed), random
// tokens, one micro-batch of `batch` sequences of `seq` tokens per optimizer step (forward, the
// whole backward, AdamW, balance-bias update), `warmup` untimed steps then `steps` timed ones.
// Prints tokens/s, MFU against the H200's dense peaks (BF16 989 TFLOP/s, FP8 1979 TFLOP/s; model
// FLOPs = 3 x Transformer::flops_per_token, MTP and the balance loss not counted), step times and
// the caching allocator's peak bytes in use; writes the same as JSON with --json. Each step line
// also gives the cudaMalloc calls the memory pool made in that step (0 once the shapes repeat).
//   build/bench_train_gpu CONFIG.toml RECIPE BATCH SEQ STEPS [--warmup N] [--json FILE]
//       [--section.key=value ...]
//   e.g. build/bench_train_gpu configs/bench-1b.toml fp8 8 4096 20 --json bench/results/x.json
// Any config override (--optim.lr=..., --model.num_hidden_layers=4) applies before the run.
// With FRUGAL_PROFILE=1 (CUDA builds) the GPU time of the model's sections (core/gpu_profiler.h)
// over the timed steps is printed per step and written into the JSON as "profile". Sections nest
// (e.g. attn.core.fwd inside attn.fwd inside layers.fwd), so the percentages do not add to 100.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#ifdef FRUGAL_HAVE_CUDA
#include <cuda_profiler_api.h>

#include "core/gpu_profiler.h"
#endif
#include "core/parse_int.h"
#include "core/rng.h"
#include "io/config_io.h"
#include "train/gpu_engine.h"
#include "train/metrics.h"
#include "train/schedule.h"
#include "train/step_engine.h"

using namespace frugal;

namespace {

constexpr const char* kUsage =
    "usage: bench_train_gpu CONFIG.toml RECIPE(fp32|bf16|fp8) BATCH SEQ STEPS [--warmup N] "
    "[--json FILE] [--section.key=value ...]\n";

int64_t parse_positive(const std::string& text, const char* what) {
  const int64_t value = parse_int64(text).value_or(0);
  FRUGAL_CHECK(value > 0, "{} must be a positive integer, got '{}'", what, text);
  return value;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

int run(int argc, char** argv) {
  std::vector<std::string> positional, overrides;
  int64_t warmup = 3;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--warmup" && i + 1 < argc) {
      warmup = std::stoll(argv[++i]);
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      overrides.push_back(a);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 5) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string config_path = positional[0], recipe = positional[1];
  const int64_t batch = parse_positive(positional[2], "BATCH");
  const int64_t seq = parse_positive(positional[3], "SEQ");
  const int64_t steps = parse_positive(positional[4], "STEPS");
  FRUGAL_CHECK(warmup >= 0, "--warmup must be >= 0");

  std::vector<std::string> all = {"train.device=cuda",
                                  "train.precision=" + recipe,
                                  "train.micro_batch=" + std::to_string(batch),
                                  "train.batch_sequences=" + std::to_string(batch),
                                  "train.seq_len=" + std::to_string(seq),
                                  "batch_ramp.ramp_tokens=0"};
  all.insert(all.end(), overrides.begin(), overrides.end());
  const Config config = load_config(config_path, all);
  std::unique_ptr<StepEngine> engine = make_step_engine(config);
  if (!engine->recipe_note().empty()) std::printf("%s\n", engine->recipe_note().c_str());
  const double params = static_cast<double>(engine->host_model().params().numel());
  const double train_flops_per_token = 3.0 * engine->flops_per_token(seq);

  // Random tokens: row b of step s is a fresh uniform draw over the vocabulary (targets are the
  // next tokens of the same draw).
  const int64_t vocab = config.model.vocab_size;
  std::vector<int32_t> tokens(batch * seq), targets(batch * seq), row(seq + 1);
  auto fill_batch = [&](int64_t step) {
    for (int64_t b = 0; b < batch; ++b) {
      RandomStream rng(config.train.seed, static_cast<uint64_t>(step * batch + b));
      for (int64_t t = 0; t <= seq; ++t)
        row[t] = std::min<int32_t>(static_cast<int32_t>(rng.uniform(t) * vocab), vocab - 1);
      std::copy(row.begin(), row.end() - 1, tokens.begin() + b * seq);
      std::copy(row.begin() + 1, row.end(), targets.begin() + b * seq);
    }
  };

  const TrainConfig& tc = config.train;
  std::vector<double> step_seconds;
  double first_loss = 0, last_loss = 0;
  int64_t skipped = 0;
  for (int64_t step = 0; step < warmup + steps; ++step) {
#ifdef FRUGAL_HAVE_CUDA
    if (step == warmup) {
      cuda::gpu_profiler().reset();  // the warmup's sections are not reported
      cudaProfilerStart();  // ncu --profile-from-start off sees the timed steps only
    }
#endif
    fill_batch(step);
    const int64_t mallocs_before = engine->device_malloc_calls();
    const auto start = std::chrono::steady_clock::now();
    engine->zero_grad();
    const Losses losses =
        engine->forward_backward(tokens.data(), targets.data(), batch, seq,
                                 {schedule_value(tc.mtp_weight, step), tc.balance_alpha}, 1.0);
    const OptimizerStepInfo info =
        engine->optimizer_step(learning_rate(config.optim, config.schedule, step));
    engine->expert_load();
    engine->update_balance_bias(info.skipped ? 0.0 : schedule_value(tc.bias_update_speed, step));
    engine->synchronize();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    skipped += info.skipped;
    if (step == 0) first_loss = losses.main;
    last_loss = losses.main;
    if (step >= warmup) step_seconds.push_back(seconds);
    std::printf("%s step %lld: %.1f ms, loss %.4f, gnorm %.3g, %lld cudaMalloc%s\n",
                step < warmup ? "warmup" : "timed", static_cast<long long>(step + 1), seconds * 1e3,
                losses.main, info.grad_norm,
                static_cast<long long>(engine->device_malloc_calls() - mallocs_before),
                info.skipped ? " (skipped: non-finite)" : "");
  }

#ifdef FRUGAL_HAVE_CUDA
  cudaProfilerStop();
#endif
  double total = 0;
  for (double s : step_seconds) total += s;
  const double mean = total / static_cast<double>(step_seconds.size());
  const double tokens_per_step = static_cast<double>(batch * seq);
  const double tok_s = tokens_per_step / mean;
  const double achieved = tok_s * train_flops_per_token;
  const double mfu_bf16 = achieved / kH200DenseBf16Flops, mfu_fp8 = achieved / kH200DenseFp8Flops;
  const int64_t memory = engine->peak_memory_bytes();

  std::printf("\n%s on %s\n", config_path.c_str(), engine->description().c_str());
  std::printf("%-10s %10s %8s %6s %10s %10s %10s %12s %9s %9s %10s\n", "recipe", "params", "batch",
              "seq", "ms/step", "median", "min", "tok/s", "MFU bf16", "MFU fp8", "peak mem");
  std::printf("%-10s %10s %8lld %6lld %10.1f %10.1f %10.1f %12s %8.1f%% %8.1f%% %10s\n",
              recipe.c_str(), format_count(params).c_str(), static_cast<long long>(batch),
              static_cast<long long>(seq), mean * 1e3, median(step_seconds) * 1e3,
              *std::min_element(step_seconds.begin(), step_seconds.end()) * 1e3,
              format_count(tok_s).c_str(), 100 * mfu_bf16, 100 * mfu_fp8,
              format_bytes(memory).c_str());
  std::printf(
      "model TFLOP/s %.1f (%.3g GFLOP per token trained), loss %.4f -> %.4f, %lld skipped\n",
      achieved / 1e12, train_flops_per_token / 1e9, first_loss, last_loss,
      static_cast<long long>(skipped));

  // Section profile over the timed steps: per step, and as a share of the mean step time.
  nlohmann::json profile = nlohmann::json::array();
#ifdef FRUGAL_HAVE_CUDA
  if (cuda::gpu_profiler().enabled()) {
    const double n_steps = static_cast<double>(steps);
    std::printf("\nGPU sections over %lld timed steps (nested sections overlap)\n",
                static_cast<long long>(steps));
    std::printf("%-26s %10s %10s %8s\n", "section", "calls/step", "ms/step", "% step");
    for (const cuda::GpuProfiler::Row& row : cuda::gpu_profiler().report()) {
      const double calls = static_cast<double>(row.calls) / n_steps, ms = row.total_ms / n_steps;
      const double share = 100.0 * ms / (mean * 1e3);
      std::printf("%-26s %10.1f %10.2f %7.1f%%\n", row.name.c_str(), calls, ms, share);
      profile.push_back({{"section", row.name},
                         {"calls_per_step", calls},
                         {"ms_per_step", ms},
                         {"percent", share}});
    }
  }
#endif

  if (!json_path.empty()) {
    std::vector<double> step_ms;
    for (double s : step_seconds) step_ms.push_back(s * 1e3);
    const nlohmann::json result = {
        {"bench", "train_gpu"},
        {"config", config_path},
        {"device", engine->description()},
        {"recipe", recipe},
        {"recipe_note", engine->recipe_note()},
        {"params", params},
        {"batch", batch},
        {"seq", seq},
        {"warmup_steps", warmup},
        {"timed_steps", steps},
        {"ms_per_step", mean * 1e3},
        {"ms_per_step_median", median(step_seconds) * 1e3},
        {"ms_per_step_min", *std::min_element(step_seconds.begin(), step_seconds.end()) * 1e3},
        {"step_ms", step_ms},
        {"tokens_per_s", tok_s},
        {"train_flops_per_token", train_flops_per_token},
        {"model_tflops", achieved / 1e12},
        {"mfu_vs_bf16_989", mfu_bf16},
        {"mfu_vs_fp8_1979", mfu_fp8},
        {"peak_memory_bytes", memory},
        {"first_loss", first_loss},
        {"last_loss", last_loss},
        {"skipped_steps", skipped},
        {"profile", profile}};
    std::ofstream out(json_path);
    FRUGAL_CHECK(out.good(), "cannot write {}", json_path);
    out << result.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_train_gpu: %s\n", e.what());
    return 1;
  }
}
