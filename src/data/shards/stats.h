// Summary statistics of a token dataset, as a printable table and as JSON (`frugal data stats`).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "data/shards/dataset.h"

namespace frugal {

struct DatasetStats {
  std::string dir;
  std::string tokenizer_hash;
  std::string dtype;  // "uint16" or "uint32"
  int64_t vocab_size = 0;
  int64_t shards = 0;
  int64_t documents = 0;
  int64_t tokens = 0;
  int64_t bytes = 0;                // sum of the shard file sizes
  double mean_doc_tokens = 0;       // 0 for an empty dataset
  double median_doc_tokens = 0;     // mean of the two middle lengths when the count is even
  int64_t min_doc_tokens = 0;
  int64_t max_doc_tokens = 0;
};

// Reads only the document offsets (no token data).
DatasetStats compute_stats(const Dataset& dataset);
// Two columns (field, value), one line per field, ending in a newline.
std::string stats_table(const DatasetStats& stats);
// {"dir", "tokenizer_hash", "dtype", "vocab_size", "shards", "documents", "tokens", "bytes",
//  "mean_doc_tokens", "median_doc_tokens", "min_doc_tokens", "max_doc_tokens"}
nlohmann::json stats_json(const DatasetStats& stats);

}  // namespace frugal
