// CPU training throughput of one or more presets: forward + backward + AdamW steps on synthetic
// byte tokens, after warm-up steps. Prints a table and writes JSON (--json FILE).
//   build/bench_train_cpu configs/tiny.toml configs/small.toml [--steps N] [--warmup N] [--json F]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/rng.h"
#include "data/text_source.h"
#include "io/config_io.h"
#include "train/trainer.h"

using namespace frugal;

int main(int argc, char** argv) {
  frugal::keep_freed_memory();
  std::vector<std::string> configs;
  int64_t steps = 10, warmup = 2;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::stoll(argv[++i]);
    else if (a == "--warmup" && i + 1 < argc) warmup = std::stoll(argv[++i]);
    else if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else configs.push_back(a);
  }
  if (configs.empty()) {
    std::fprintf(stderr, "usage: bench_train_cpu CONFIG.toml... [--steps N] [--warmup N] [--json F]\n");
    return 2;
  }
  nlohmann::json results = nlohmann::json::array();
  std::printf("%-22s %10s %10s %12s %10s %10s %10s\n", "config", "params", "tok/step", "ms/step",
              "tok/s", "GFLOP/s", "peak RSS");
  for (const std::string& path : configs) {
    try {
      Config config = load_config(path, {"train.out_dir=/tmp/frugal-bench", "train.eval_every=0",
                                         "train.save_every=0", "train.log_every=1000000"});
      // Synthetic corpus: random bytes (throughput does not depend on the text).
      std::vector<int32_t> corpus(1 << 20);
      RandomStream rng(1, 2);
      for (size_t i = 0; i < corpus.size(); ++i) corpus[i] = static_cast<int32_t>(rng.uniform(i) * 256);
      TextDataSource source(std::move(corpus), 1);
      config.train.steps = warmup + steps;
      Trainer trainer(config, source, nullptr, /*quiet=*/true);
      trainer.run(warmup);
      auto start = std::chrono::steady_clock::now();
      trainer.run(steps);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double tokens_per_step = static_cast<double>(config.train.batch_sequences * config.train.seq_len);
      const double tok_s = tokens_per_step * static_cast<double>(steps) / seconds;
      const double gflops = tok_s * 3 * trainer.model().flops_per_token(config.train.seq_len) / 1e9;
      const double params = static_cast<double>(trainer.model().params().numel());
      std::printf("%-22s %9.2fM %10.0f %12.1f %10.0f %10.1f %8.0f MiB\n", path.c_str(), params / 1e6,
                  tokens_per_step, seconds * 1e3 / static_cast<double>(steps), tok_s, gflops,
                  static_cast<double>(peak_rss_bytes()) / (1 << 20));
      results.push_back({{"config", path}, {"params", params}, {"tokens_per_step", tokens_per_step},
                         {"ms_per_step", seconds * 1e3 / static_cast<double>(steps)},
                         {"tokens_per_s", tok_s}, {"gflops", gflops},
                         {"peak_rss_bytes", peak_rss_bytes()}, {"steps", steps}});
    } catch (const Error& e) {
      std::fprintf(stderr, "bench_train_cpu: %s\n", e.what());
      return 1;
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << results.dump(2) << "\n";
  return 0;
}
