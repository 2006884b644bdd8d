// Helpers shared by the training tests (CPU, GPU and multi-process): a synthetic byte corpus and
// the reader of a run's metrics.jsonl.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "core/rng.h"

namespace frugal::testing {

// Words drawn from a small vocabulary: structured enough that the loss moves.
inline std::vector<int32_t> synthetic_tokens(int64_t count, uint64_t seed) {
  const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. ", "dog ", "ran\n"};
  RandomStream rng(seed, 0);
  std::vector<int32_t> tokens;
  for (uint64_t i = 0; static_cast<int64_t>(tokens.size()) < count; ++i)
    for (const char* c = words[static_cast<int>(rng.uniform(i) * 8) % 8]; *c; ++c)
      tokens.push_back(static_cast<unsigned char>(*c));
  tokens.resize(count);
  return tokens;
}

// Every record of a metrics.jsonl file, in order.
inline std::vector<nlohmann::json> read_metrics_file(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> records;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  return records;
}

}  // namespace frugal::testing
