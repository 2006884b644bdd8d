// Helpers shared by the token-shard and loader tests: temporary directories, synthetic documents
// and writing them as a dataset.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "test_util.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/shards/dataset.h"
#include "data/shards/shard_writer.h"

namespace frugal::testing {

namespace fs = std::filesystem;

using ::frugal::testing::TempDir;

using Documents = std::vector<std::vector<int32_t>>;

// `count` documents with lengths uniform in [min_length, max_length] and token ids uniform in
// [low, high).
inline Documents random_documents(int64_t count, int64_t min_length, int64_t max_length,
                                  int32_t low, int32_t high, uint64_t seed) {
  RandomStream rng(seed, 77);
  Documents docs;
  uint64_t counter = 0;
  for (int64_t d = 0; d < count; ++d) {
    const int64_t length =
        min_length + static_cast<int64_t>(rng.uniform(counter++) *
                                          static_cast<double>(max_length - min_length + 1));
    std::vector<int32_t> doc(static_cast<size_t>(length));
    for (auto& t : doc)
      t = low + static_cast<int32_t>(rng.uniform(counter++) * static_cast<double>(high - low));
    docs.push_back(std::move(doc));
  }
  return docs;
}

// Documents whose token ids are all distinct across the set (ids first_id, first_id + 1, ...), so
// any token tells which document it came from.
inline Documents unique_documents(int64_t count, int64_t min_length, int64_t max_length,
                                  int32_t first_id, uint64_t seed) {
  RandomStream rng(seed, 78);
  Documents docs;
  int32_t next = first_id;
  for (int64_t d = 0; d < count; ++d) {
    const int64_t length =
        min_length +
        static_cast<int64_t>(rng.uniform(static_cast<uint64_t>(d)) *
                             static_cast<double>(max_length - min_length + 1));
    std::vector<int32_t> doc(static_cast<size_t>(length));
    for (auto& t : doc) t = next++;
    docs.push_back(std::move(doc));
  }
  return docs;
}

inline TokenizerIdentity test_tokenizer(const std::string& hash, int64_t vocab_size) {
  TokenizerIdentity tokenizer;
  tokenizer.hash = hash;
  tokenizer.vocab_size = vocab_size;
  tokenizer.eos_id = 0;
  tokenizer.bos_id = 4;
  tokenizer.special_ids = {{"fim_begin", 1}, {"fim_hole", 2}, {"fim_end", 3}};
  return tokenizer;
}

inline ShardWriterSummary write_dataset(const std::string& dir, const Documents& docs,
                                        const TokenizerIdentity& tokenizer,
                                        int64_t max_shard_bytes = int64_t{256} << 20) {
  ShardWriterOptions options;
  options.max_shard_bytes = max_shard_bytes;
  options.creation = {{"source", "unit test"}};
  ShardWriter writer(dir, tokenizer, options);
  for (const auto& doc : docs) writer.add_document(doc);
  return writer.finish();
}

// Runs `body`, expects a frugal::Error whose message contains every string of `needles`.
template <class Body>
void expect_error(Body&& body, const std::vector<std::string>& needles) {
  try {
    body();
    ADD_FAILURE() << "expected a frugal::Error containing '" << needles.front() << "'";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& needle : needles)
      EXPECT_NE(message.find(needle), std::string::npos)
          << "message '" << message << "' lacks '" << needle << "'";
  }
}

}  // namespace frugal::testing
