// Token loader throughput: tokens/s of PackedLoader::next_batch on a dataset directory, or on a
// synthetic dataset that it first writes to /tmp (also timing the ShardWriter). Prints a table and
// writes JSON (--json FILE).
//   build/bench_loader [DATASET_DIR] [--seq N] [--batch B] [--batches K] [--fim R] [--world W]
//                      [--tokens N (synthetic size)] [--fim-ids BEGIN,HOLE,END] [--json FILE]
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/loader/packed_loader.h"
#include "data/shards/shard_writer.h"
#include "data/shards/stats.h"

using namespace frugal;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Documents of 20..4000 tokens (log-uniform lengths), ids uniform in [5, 32000); eos 0, FIM 1..3.
nlohmann::json write_synthetic(const std::string& dir, int64_t tokens) {
  TokenizerIdentity tokenizer;
  tokenizer.hash = "bench-synthetic";
  tokenizer.vocab_size = 32000;
  tokenizer.eos_id = 0;
  tokenizer.special_ids = {{"fim_begin", 1}, {"fim_hole", 2}, {"fim_end", 3}};
  ShardWriterOptions options;
  options.overwrite = true;
  options.max_shard_bytes = int64_t{64} << 20;
  options.creation = {{"source", "bench_loader synthetic"}};
  const auto start = std::chrono::steady_clock::now();
  ShardWriter writer(dir, tokenizer, options);
  RandomStream rng(7, 8);
  uint64_t counter = 0;
  std::vector<int32_t> doc;
  int64_t written = 0;
  while (written < tokens) {
    const int64_t length =
        static_cast<int64_t>(20.0 * std::exp(rng.uniform(counter++) * std::log(200.0)));
    doc.resize(static_cast<size_t>(length));
    for (auto& t : doc) t = 5 + static_cast<int32_t>(rng.uniform(counter++) * 31995.0);
    writer.add_document(doc);
    written += length;
  }
  const ShardWriterSummary summary = writer.finish();
  const double seconds = seconds_since(start);
  std::printf("wrote %s: %lld tokens, %lld documents, %lld shards in %.2f s (%.1f M tokens/s)\n",
              dir.c_str(), static_cast<long long>(summary.tokens),
              static_cast<long long>(summary.documents), static_cast<long long>(summary.shards),
              seconds, static_cast<double>(summary.tokens) / seconds / 1e6);
  return {{"tokens", summary.tokens}, {"documents", summary.documents},
          {"shards", summary.shards}, {"seconds", seconds},
          {"tokens_per_s", static_cast<double>(summary.tokens) / seconds}};
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir, json_path;
  int64_t seq = 2048, batch = 8, batches = 1000, world = 8, synthetic_tokens = 20'000'000;
  double fim = 0.1;
  int64_t fim_ids[3] = {1, 2, 3};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_loader: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--seq") seq = std::stoll(value());
    else if (a == "--batch") batch = std::stoll(value());
    else if (a == "--batches") batches = std::stoll(value());
    else if (a == "--fim") fim = std::stod(value());
    else if (a == "--world") world = std::stoll(value());
    else if (a == "--tokens") synthetic_tokens = std::stoll(value());
    else if (a == "--json") json_path = value();
    else if (a == "--fim-ids") {
      const std::string ids = value();
      if (std::sscanf(ids.c_str(), "%" SCNd64 ",%" SCNd64 ",%" SCNd64, &fim_ids[0], &fim_ids[1], &fim_ids[2]) != 3) {
        std::fprintf(stderr, "bench_loader: --fim-ids wants BEGIN,HOLE,END\n");
        return 2;
      }
    } else if (!a.empty() && a[0] != '-' && dir.empty()) dir = a;
    else {
      std::fprintf(stderr,
                   "usage: bench_loader [DATASET_DIR] [--seq N] [--batch B] [--batches K] "
                   "[--fim R] [--world W] [--tokens N] [--fim-ids B,H,E] [--json FILE]\n");
      return 2;
    }
  }
  nlohmann::json results = {{"seq", seq}, {"batch", batch}, {"batches", batches}};
  try {
    if (dir.empty()) {
      dir = "/tmp/frugal-bench-loader";
      results["synthetic_write"] = write_synthetic(dir, synthetic_tokens);
    }
    auto start = std::chrono::steady_clock::now();
    const Dataset dataset = Dataset::open(dir);
    const double open_seconds = seconds_since(start);
    const DatasetStats stats = compute_stats(dataset);
    std::printf("%s", stats_table(stats).c_str());
    std::printf("open + validate: %.1f ms\n\n", open_seconds * 1e3);
    results["dataset"] = stats_json(stats);
    results["open_ms"] = open_seconds * 1e3;

    struct Case {
      const char* name;
      double fim_rate;
      int64_t world;
      bool masking;
    };
    const std::vector<Case> cases = {{"plain", 0.0, 1, false},
                                     {"fim", fim, 1, false},
                                     {"fim+segments", fim, 1, true},
                                     {"fim, rank 0 of world", fim, world, false}};
    std::printf("%-24s %6s %12s %12s %14s\n", "case", "world", "build ms", "ms/batch", "tokens/s");
    nlohmann::json rows = nlohmann::json::array();
    std::vector<int32_t> tokens(static_cast<size_t>(batch * seq)), targets(tokens.size());
    for (const Case& c : cases) {
      LoaderOptions options;
      options.datasets = {{dir, 1.0}};
      options.seed = 1;
      options.fim_rate = c.fim_rate;
      options.fim_begin_id = fim_ids[0];
      options.fim_hole_id = fim_ids[1];
      options.fim_end_id = fim_ids[2];
      options.world = c.world;
      options.document_masking = c.masking;
      start = std::chrono::steady_clock::now();
      PackedLoader loader(options);
      const double build_seconds = seconds_since(start);
      for (int i = 0; i < 3; ++i) loader.next_batch(tokens.data(), targets.data(), batch, seq);
      start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < batches; ++i)
        loader.next_batch(tokens.data(), targets.data(), batch, seq);
      const double seconds = seconds_since(start);
      const double tok_s = static_cast<double>(batch * seq * batches) / seconds;
      std::printf("%-24s %6lld %12.1f %12.3f %14.0f\n", c.name, static_cast<long long>(c.world),
                  build_seconds * 1e3, seconds * 1e3 / static_cast<double>(batches), tok_s);
      rows.push_back({{"case", c.name}, {"world", c.world}, {"fim_rate", c.fim_rate},
                      {"document_masking", c.masking}, {"build_ms", build_seconds * 1e3},
                      {"ms_per_batch", seconds * 1e3 / static_cast<double>(batches)},
                      {"tokens_per_s", tok_s}});
    }
    results["cases"] = rows;
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_loader: %s\n", e.what());
    return 1;
  }
  if (!json_path.empty()) std::ofstream(json_path) << results.dump(2) << "\n";
  return 0;
}
