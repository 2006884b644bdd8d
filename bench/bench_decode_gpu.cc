// Generation throughput on one GPU: the inference engine (infer/engine.h: continuous batching over
// a paged latent cache) running GpuInferenceModel (infer/gpu/gpu_inference_model.h) in BF16 or FP8
// weights, greedy, for batches of B requests of `prompt` random tokens each generating exactly
// `new` tokens (ignore_eos). The side-by-side baseline is tools/bench_hf_generate.py
// (transformers' generate() on the same config, the same workload and the same JSON keys).
//   build/bench_decode_gpu CONFIG.toml [--weights bf16|fp8] [--batches 1,8,64] [--prompt 128]
//       [--new 128] [--speculative] [--checkpoint DIR] [--seed S] [--json FILE]
//       [--section.key=value ...]
// Weights: random (N(0, 0.006) matrices, infer::random_weights, never a host model: V2-Lite is
// 16B parameters) from CONFIG.toml with any overrides, or with --checkpoint DIR (then CONFIG.toml
// is left out) a frugal checkpoint loaded as frugal generate does.
// Per batch size: one engine with max_batch B and a cache of B contexts of prompt + new + 1
// positions; an untimed warmup run (the same B and prompt length, a few new tokens: cuBLASLt plans
// and the caching allocator are warm), then the timed run. Every step() is timed on the host (the
// logits come back to the host, so each step ends synchronized). The first timed step admits and
// prefills all B prompts and samples their first tokens:
//   prefill ms        = that first step;
//   decode tokens/s   = tokens generated after it / (total - first step)   (B x (new - 1));
//   ms per step       = (total - first step) / the steps after it.
// With --speculative (a config with an MTP module) each batch size runs without and with MTP
// speculation; the speculative row reports the draft acceptance, its decode speed-up over the
// plain run, and how many requests gave the same tokens as the plain run (equal on a row-invariant
// model; BF16/FP8 GEMMs over different row counts may differ in the last bits).
// Output: a table, and with --json one JSON object per line per run (bench "decode_gpu").
#ifdef FRUGAL_HAVE_CUDA

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/device_context.h"
#include "core/error.h"
#include "core/parse_int.h"
#include "core/rng.h"
#include "infer/engine.h"
#include "infer/gpu/gpu_inference_model.h"
#include "io/config_io.h"
#include "train/checkpoint.h"
#include "train/metrics.h"

using namespace frugal;

namespace {

constexpr const char* kUsage =
    "usage: bench_decode_gpu CONFIG.toml [--weights bf16|fp8] [--batches 1,8,64] [--prompt 128]\n"
    "                        [--new 128] [--speculative] [--seed S] [--json FILE]\n"
    "                        [--section.key=value ...]\n"
    "       bench_decode_gpu --checkpoint DIR [same options]\n";

int64_t parse_positive(const std::string& text, const std::string& what) {
  const int64_t value = parse_int64(text).value_or(0);
  FRUGAL_CHECK(value > 0, "{} must be a positive integer, got '{}'", what, text);
  return value;
}

std::vector<int64_t> parse_batches(const std::string& text) {
  std::vector<int64_t> batches;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) batches.push_back(parse_positive(item, "--batches entry"));
  FRUGAL_CHECK(!batches.empty(), "--batches '{}' names no batch size", text);
  return batches;
}

struct Options {
  std::string config_path, checkpoint, json_path;
  std::vector<std::string> overrides;
  infer::DecodeWeights weights = infer::DecodeWeights::Bf16;
  std::vector<int64_t> batches = {1, 8, 64};
  int64_t prompt = 128, new_tokens = 128;
  bool speculative = false;
  uint64_t seed = 1234;
};

// One timed run of B requests.
struct RunResult {
  int64_t batch = 0;
  bool speculative = false;
  double prefill_s = 0, total_s = 0, decode_s = 0;
  int64_t steps = 0, decode_steps = 0;
  int64_t generated = 0, decode_tokens = 0;
  int64_t drafted = 0, accepted = 0;
  int64_t preemptions = 0;
  std::vector<std::vector<int32_t>> outputs;  // by request

  double decode_tokens_per_s() const { return decode_s > 0 ? decode_tokens / decode_s : 0.0; }
  double ms_per_step() const { return decode_steps > 0 ? 1e3 * decode_s / decode_steps : 0.0; }
  double acceptance() const { return drafted > 0 ? static_cast<double>(accepted) / drafted : 0.0; }
};

std::vector<int32_t> random_prompt(uint64_t seed, uint64_t stream, int64_t length, int64_t vocab) {
  RandomStream rng(seed, stream);
  std::vector<int32_t> tokens(static_cast<size_t>(length));
  for (int64_t t = 0; t < length; ++t)
    tokens[t] = static_cast<int32_t>(
        std::min<int64_t>(static_cast<int64_t>(rng.uniform(t) * vocab), vocab - 1));
  return tokens;
}

// Submits `batch` greedy requests of random prompts (stream `first_stream` + b) that each
// generate exactly `new_tokens`, and steps the engine until idle, timing every step.
RunResult run_batch(infer::Engine& engine, const ModelConfig& cfg, const Options& o,
                    int64_t batch, int64_t new_tokens, uint64_t first_stream) {
  for (int64_t b = 0; b < batch; ++b) {
    infer::Request request;
    request.prompt = random_prompt(o.seed, first_stream + b, o.prompt, cfg.vocab_size);
    request.sampling.temperature = 0;
    request.max_new_tokens = new_tokens;
    request.ignore_eos = true;
    engine.submit(std::move(request));
  }
  const infer::EngineStats before = engine.stats();
  RunResult r;
  r.batch = batch;
  int64_t after_first_step = 0;
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const auto step_start = std::chrono::steady_clock::now();
    if (!engine.step()) break;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    if (r.steps == 0) {
      r.prefill_s = seconds;
      after_first_step = engine.stats().generated;
      FRUGAL_CHECK(engine.waiting() == 0, "the first step admitted {} of {} requests",
                   batch - engine.waiting(), batch);
    }
    ++r.steps;
  }
  r.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const infer::EngineStats& after = engine.stats();
  r.decode_s = r.total_s - r.prefill_s;
  r.decode_steps = r.steps - 1;
  r.generated = after.generated - before.generated;
  r.decode_tokens = after.generated - after_first_step;
  r.drafted = after.drafted - before.drafted;
  r.accepted = after.accepted - before.accepted;
  r.preemptions = after.preemptions - before.preemptions;
  std::vector<infer::Completion> done = engine.take_finished();
  FRUGAL_CHECK(static_cast<int64_t>(done.size()) == batch, "{} of {} requests finished",
               done.size(), batch);
  for (const infer::Completion& c : done) {
    FRUGAL_CHECK(static_cast<int64_t>(c.tokens.size()) == new_tokens,
                 "request {} generated {} tokens, expected {} (finish reason {})", c.id,
                 c.tokens.size(), new_tokens, infer::finish_reason_name(c.reason));
    r.outputs.push_back(c.tokens);
  }
  return r;
}

// Warmup, then the timed run, on a fresh engine for `batch` sequences.
RunResult measure(const infer::GenerationModel& model, const Options& o, int64_t batch,
                  bool speculative) {
  infer::EngineOptions options;
  options.max_batch = batch;
  options.max_context = o.prompt + o.new_tokens + 1;
  options.cache_tokens = batch * options.max_context;
  options.speculative = speculative;
  infer::Engine engine(model, options);
  const int64_t warmup_new = std::min<int64_t>(o.new_tokens, 8);
  run_batch(engine, model.config(), o, batch, warmup_new, /*first_stream=*/1000000);
  RunResult r = run_batch(engine, model.config(), o, batch, o.new_tokens, /*first_stream=*/0);
  r.speculative = speculative;
  return r;
}

int run(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      FRUGAL_CHECK(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--weights") {
      o.weights = infer::parse_decode_weights(value());
    } else if (a == "--batches") {
      o.batches = parse_batches(value());
    } else if (a == "--prompt") {
      o.prompt = parse_positive(value(), "--prompt");
    } else if (a == "--new") {
      o.new_tokens = parse_positive(value(), "--new");
    } else if (a == "--seed") {
      o.seed = static_cast<uint64_t>(parse_positive(value(), "--seed"));
    } else if (a == "--speculative") {
      o.speculative = true;
    } else if (a == "--checkpoint") {
      o.checkpoint = value();
    } else if (a == "--json") {
      o.json_path = value();
    } else if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      o.overrides.push_back(a.substr(2));
    } else if (a.rfind("--", 0) == 0) {
      fail("unknown option {}\n{}", a, kUsage);
    } else {
      positional.push_back(a);
    }
  }
  FRUGAL_CHECK(positional.size() == (o.checkpoint.empty() ? 1u : 0u),
               "give CONFIG.toml, or --checkpoint DIR without one\n{}", kUsage);
  FRUGAL_CHECK(o.checkpoint.empty() || o.overrides.empty(),
               "--checkpoint takes no --section.key settings (the checkpoint's config is used)");
  if (!positional.empty()) o.config_path = positional[0];
  FRUGAL_CHECK(o.new_tokens >= 2, "--new {} must be >= 2 (the first token comes from the prefill)",
               o.new_tokens);

  // The config first: its mistakes show before a device or a long load is touched.
  Config config;  // outlives the model
  std::string source, checkpoint_dir;
  if (o.checkpoint.empty()) {
    config = load_config(o.config_path, o.overrides);
    source = o.config_path + " (random weights)";
  } else {
    checkpoint_dir = resolve_checkpoint(o.checkpoint);
    config = load_checkpoint_config(checkpoint_dir);
    source = checkpoint_dir;
  }
  const ModelConfig& cfg = config.model;
  FRUGAL_CHECK(!o.speculative || cfg.num_nextn_predict_layers > 0,
               "--speculative needs an MTP module, and {} has num_nextn_predict_layers = 0",
               source);
  FRUGAL_CHECK(o.prompt + o.new_tokens + 1 <= cfg.max_position_embeddings,
               "--prompt {} + --new {} + 1 exceed max_position_embeddings {}", o.prompt,
               o.new_tokens, cfg.max_position_embeddings);
  std::unique_ptr<std::ofstream> json;
  if (!o.json_path.empty()) {
    json = std::make_unique<std::ofstream>(o.json_path);
    FRUGAL_CHECK(json->good(), "cannot write {}", o.json_path);
  }

  cuda::DeviceContext ctx(0);
  infer::GpuInferenceOptions model_options;
  model_options.weights = o.weights;
  std::unique_ptr<infer::GpuInferenceModel> model;
  const auto load_start = std::chrono::steady_clock::now();
  if (o.checkpoint.empty()) {
    model = std::make_unique<infer::GpuInferenceModel>(
        ctx, cfg, infer::random_weights(o.seed, 0.006), model_options);
  } else {
    Transformer<float> host(cfg);  // freed once the device copy is built
    load_checkpoint_model(checkpoint_dir, host);
    model = std::make_unique<infer::GpuInferenceModel>(ctx, cfg, infer::weights_of(host),
                                                       model_options);
  }
  ctx.synchronize();
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  std::printf("%s on %s: weights %s on the device, loaded in %.1f s\n", source.c_str(),
              model->describe().c_str(),
              format_bytes(static_cast<int64_t>(model->weight_bytes())).c_str(), load_s);

  struct Row {
    RunResult result;
    std::optional<RunResult> plain;  // the matching plain run, for speculative rows
    int64_t same_outputs = 0;
    int64_t peak_bytes = 0;
  };
  std::vector<Row> rows;
  for (int64_t batch : o.batches) {
    std::vector<bool> modes = {false};
    if (o.speculative) modes.push_back(true);
    for (bool speculative : modes) {
      ctx.allocator.reset_peak();
      std::printf("-- batch %lld, prompt %lld, new %lld%s\n", static_cast<long long>(batch),
                  static_cast<long long>(o.prompt), static_cast<long long>(o.new_tokens),
                  speculative ? ", speculative" : "");
      std::fflush(stdout);
      Row row;
      row.result = measure(*model, o, batch, speculative);
      row.peak_bytes = static_cast<int64_t>(ctx.allocator.peak_bytes_in_use());
      if (speculative) {
        row.plain = rows.back().result;
        for (size_t b = 0; b < row.result.outputs.size(); ++b)
          row.same_outputs += row.result.outputs[b] == row.plain->outputs[b];
      }
      const RunResult& r = row.result;
      std::printf("   prefill %.1f ms, decode %.3f s over %lld steps: %.1f tokens/s\n",
                  r.prefill_s * 1e3, r.decode_s, static_cast<long long>(r.decode_steps),
                  r.decode_tokens_per_s());
      if (json) {
        nlohmann::json line = {
            {"bench", "decode_gpu"},
            {"config", o.config_path},
            {"checkpoint", o.checkpoint},
            {"device", model->describe()},
            {"weights", infer::decode_weights_name(o.weights)},
            {"weight_bytes", model->weight_bytes()},
            {"batch", batch},
            {"prompt", o.prompt},
            {"new_tokens", o.new_tokens},
            {"speculative", speculative},
            {"prefill_ms", r.prefill_s * 1e3},
            {"prefill_tokens_per_s", r.prefill_s > 0 ? batch * o.prompt / r.prefill_s : 0.0},
            {"decode_s", r.decode_s},
            {"decode_tokens", r.decode_tokens},
            {"decode_tokens_per_s", r.decode_tokens_per_s()},
            {"decode_steps", r.decode_steps},
            {"ms_per_step", r.ms_per_step()},
            {"total_s", r.total_s},
            {"generated", r.generated},
            {"preemptions", r.preemptions},
            {"peak_memory_bytes", row.peak_bytes}};
        if (speculative) {
          line["drafted"] = r.drafted;
          line["accepted"] = r.accepted;
          line["acceptance"] = r.acceptance();
          const double plain = row.plain->decode_tokens_per_s();
          line["speedup"] = plain > 0 ? r.decode_tokens_per_s() / plain : 0.0;
          line["same_outputs_as_plain"] = row.same_outputs;
        }
        *json << line.dump() << "\n";
        json->flush();
      }
      rows.push_back(std::move(row));
    }
  }

  // describe() names the device and the weights' precision.
  std::printf("\n%s on %s, prompt %lld, new %lld, greedy\n", source.c_str(),
              model->describe().c_str(), static_cast<long long>(o.prompt),
              static_cast<long long>(o.new_tokens));
  std::printf("%6s %5s %11s %13s %12s %10s %7s %10s %8s %8s %10s\n", "batch", "spec",
              "prefill ms", "prefill tok/s", "decode tok/s", "ms/step", "steps", "accept",
              "speedup", "same", "peak mem");
  for (const Row& row : rows) {
    const RunResult& r = row.result;
    std::string accept = "-", speedup = "-", same = "-";
    if (r.speculative) {
      accept = fmt::format("{:.1f}%", 100 * r.acceptance());
      const double plain = row.plain->decode_tokens_per_s();
      speedup = fmt::format("{:.2f}x", plain > 0 ? r.decode_tokens_per_s() / plain : 0.0);
      same = fmt::format("{}/{}", row.same_outputs, r.batch);
    }
    std::printf("%6lld %5s %11.1f %13s %12.1f %10.2f %7lld %10s %8s %8s %10s\n",
                static_cast<long long>(r.batch), r.speculative ? "mtp" : "no", r.prefill_s * 1e3,
                format_count(r.prefill_s > 0 ? r.batch * o.prompt / r.prefill_s : 0.0).c_str(),
                r.decode_tokens_per_s(), r.ms_per_step(), static_cast<long long>(r.decode_steps),
                accept.c_str(), speedup.c_str(), same.c_str(),
                format_bytes(row.peak_bytes).c_str());
  }
  if (json) std::printf("wrote %s\n", o.json_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_decode_gpu: %s\n", e.what());
    return 1;
  }
}

#else  // !FRUGAL_HAVE_CUDA

#include <cstdio>

int main() {
  std::fputs("bench_decode_gpu: this build has no CUDA (configure with -DFRUGAL_CUDA=ON on a "
             "machine with the CUDA toolkit)\n",
             stderr);
  return 1;
}

#endif  // FRUGAL_HAVE_CUDA
