// Dataset statistics (see stats.h).
#include "data/shards/stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

namespace frugal {

DatasetStats compute_stats(const Dataset& dataset) {
  DatasetStats stats;
  stats.dir = dataset.dir();
  stats.tokenizer_hash = dataset.tokenizer_hash();
  stats.dtype = dataset.dtype();
  stats.vocab_size = dataset.vocab_size();
  stats.shards = dataset.num_shards();
  stats.documents = dataset.num_documents();
  stats.tokens = dataset.num_tokens();
  for (const ShardInfo& shard : dataset.shards()) stats.bytes += shard.bytes;
  if (stats.documents == 0) return stats;

  std::vector<int64_t> lengths(static_cast<size_t>(stats.documents));
  for (int64_t d = 0; d < stats.documents; ++d) lengths[static_cast<size_t>(d)] = dataset.doc_length(d);
  stats.mean_doc_tokens = static_cast<double>(stats.tokens) / static_cast<double>(stats.documents);
  const auto [min_it, max_it] = std::minmax_element(lengths.begin(), lengths.end());
  stats.min_doc_tokens = *min_it;
  stats.max_doc_tokens = *max_it;
  const size_t half = lengths.size() / 2;
  std::nth_element(lengths.begin(), lengths.begin() + static_cast<std::ptrdiff_t>(half), lengths.end());
  const double upper = static_cast<double>(lengths[half]);
  if (lengths.size() % 2 == 1) {
    stats.median_doc_tokens = upper;
  } else {
    const double lower = static_cast<double>(
        *std::max_element(lengths.begin(), lengths.begin() + static_cast<std::ptrdiff_t>(half)));
    stats.median_doc_tokens = (lower + upper) / 2;
  }
  return stats;
}

std::string stats_table(const DatasetStats& stats) {
  std::string out;
  auto row = [&](const char* field, const std::string& value) {
    out += fmt::format("{:<20} {}\n", field, value);
  };
  row("dataset", stats.dir);
  row("tokenizer_hash", stats.tokenizer_hash);
  row("vocab_size", std::to_string(stats.vocab_size));
  row("dtype", stats.dtype);
  row("shards", std::to_string(stats.shards));
  row("bytes", fmt::format("{} ({:.1f} MiB)", stats.bytes, static_cast<double>(stats.bytes) / (1 << 20)));
  row("documents", std::to_string(stats.documents));
  row("tokens", std::to_string(stats.tokens));
  row("mean_doc_tokens", fmt::format("{:.1f}", stats.mean_doc_tokens));
  row("median_doc_tokens", fmt::format("{:.1f}", stats.median_doc_tokens));
  row("min_doc_tokens", std::to_string(stats.min_doc_tokens));
  row("max_doc_tokens", std::to_string(stats.max_doc_tokens));
  return out;
}

nlohmann::json stats_json(const DatasetStats& stats) {
  return {{"dir", stats.dir},
          {"tokenizer_hash", stats.tokenizer_hash},
          {"dtype", stats.dtype},
          {"vocab_size", stats.vocab_size},
          {"shards", stats.shards},
          {"documents", stats.documents},
          {"tokens", stats.tokens},
          {"bytes", stats.bytes},
          {"mean_doc_tokens", stats.mean_doc_tokens},
          {"median_doc_tokens", stats.median_doc_tokens},
          {"min_doc_tokens", stats.min_doc_tokens},
          {"max_doc_tokens", stats.max_doc_tokens}};
}

}  // namespace frugal
