// The plain training-data source: one token vector (an encoded corpus split), read as random
// windows. It serves the trainer until the token-shard loader exists.
//
// Rank r of w owns the contiguous slice [r*N/w, (r+1)*N/w) of the N tokens, so ranks never share
// a token. Batch number c (0, 1, 2, ... counted per source) takes, for row b, the seq+1 tokens
// starting at
//   slice_begin + floor(u * (slice_size - seq)),  u = RandomStream(seed, stream(name, rank) + c).uniform(b)
// and returns the first seq as tokens and the last seq as targets (tokens[b, t+1] == targets[b, t]
// within a row). A batch depends only on (data, seed, name, rank, world, c), so the state is the
// counter alone: state() = {"kind", "name", "seed", "rank", "world", "slice_tokens",
// "batch_counter"} and restore() checks that everything but the counter matches this source.
//
// load_text_corpus reads DataConfig's files (.txt or .zst), encodes them with ByteTokenizer and
// returns the train and validation token vectors: validation is data.val_path when set, otherwise
// the last data.val_fraction of the training file's tokens (cut at a token boundary).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "data/data_source.h"
#include "train/train_config.h"

namespace frugal {

class TextDataSource : public DataSource {
 public:
  // `name` ("train", "validation", ...) labels errors and separates the random streams of sources
  // sharing a seed. Every token must be in [0, vocab_size).
  TextDataSource(std::vector<int32_t> tokens, uint64_t seed, int64_t rank = 0, int64_t world = 1,
                 int64_t vocab_size = ByteTokenizer::kVocabSize, std::string name = "train");

  // tokens, targets: [batch, seq]; needs slice_size() >= seq + 1.
  void next_batch(int32_t* tokens, int32_t* targets, int64_t batch, int64_t seq) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  int64_t vocab_size() const override { return vocab_size_; }

  // Index into the full token vector of the first token of row `row` of batch `counter`.
  int64_t window_start(int64_t counter, int64_t row, int64_t seq) const;
  int64_t batch_counter() const { return batch_counter_; }
  int64_t slice_begin() const { return slice_begin_; }
  int64_t slice_size() const { return static_cast<int64_t>(tokens_.size()); }
  const std::string& name() const { return name_; }

 private:
  std::vector<int32_t> tokens_;  // this rank's slice only
  uint64_t seed_;
  int64_t rank_, world_, vocab_size_;
  std::string name_;
  int64_t slice_begin_ = 0;
  uint64_t stream_base_ = 0;
  int64_t batch_counter_ = 0;
};

struct TextCorpus {
  std::vector<int32_t> train;
  std::vector<int32_t> validation;  // empty when val_fraction is 0 and no val_path is given
};

// Reads, encodes and splits the corpus named by `config` (data.tokenizer must be "bytes").
TextCorpus load_text_corpus(const DataConfig& config);

}  // namespace frugal
