// Plain text data source (see text_source.h).
#include "data/text_source.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/rng.h"
#include "io/text_file.h"

namespace frugal {

TextDataSource::TextDataSource(std::vector<int32_t> tokens, uint64_t seed, int64_t rank,
                               int64_t world, int64_t vocab_size, std::string name)
    : seed_(seed), rank_(rank), world_(world), vocab_size_(vocab_size), name_(std::move(name)) {
  FRUGAL_CHECK(world >= 1 && rank >= 0 && rank < world,
               "{} data: rank {} is not valid for world size {}", name_, rank, world);
  FRUGAL_CHECK(vocab_size > 0, "{} data: vocab_size {} must be > 0", name_, vocab_size);
  const int64_t total = static_cast<int64_t>(tokens.size());
  slice_begin_ = rank * total / world;
  const int64_t slice_end = (rank + 1) * total / world;
  if (world == 1) {
    tokens_ = std::move(tokens);
  } else {
    tokens_.assign(tokens.begin() + slice_begin_, tokens.begin() + slice_end);
    std::vector<int32_t>().swap(tokens);
  }
  for (size_t i = 0; i < tokens_.size(); ++i)
    FRUGAL_CHECK(tokens_[i] >= 0 && tokens_[i] < vocab_size_,
                 "{} data: token {} at position {} is outside the vocabulary [0, {})", name_,
                 tokens_[i], slice_begin_ + static_cast<int64_t>(i), vocab_size_);
  stream_base_ = hash_name(fmt::format("text_source:{}:{}", name_, rank_));
}

int64_t TextDataSource::window_start(int64_t counter, int64_t row, int64_t seq) const {
  FRUGAL_CHECK(seq >= 1, "{} data: sequence length {} must be >= 1", name_, seq);
  FRUGAL_CHECK(slice_size() >= seq + 1,
               "{} data: rank {} of {} holds {} tokens, fewer than one window of seq_len + 1 = {}",
               name_, rank_, world_, slice_size(), seq + 1);
  const int64_t starts = slice_size() - seq;  // windows [s, s + seq] with s in [0, starts)
  const double u = RandomStream(seed_, stream_base_ + static_cast<uint64_t>(counter))
                       .uniform(static_cast<uint64_t>(row));
  const int64_t offset = std::min(static_cast<int64_t>(u * static_cast<double>(starts)), starts - 1);
  return slice_begin_ + offset;
}

void TextDataSource::next_batch(int32_t* tokens, int32_t* targets, int64_t batch, int64_t seq) {
  FRUGAL_CHECK(batch >= 1, "{} data: batch size {} must be >= 1", name_, batch);
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* window = tokens_.data() + (window_start(batch_counter_, b, seq) - slice_begin_);
    std::copy(window, window + seq, tokens + b * seq);         // [seq]
    std::copy(window + 1, window + seq + 1, targets + b * seq);  // [seq], shifted by one
  }
  ++batch_counter_;
}

nlohmann::json TextDataSource::state() const {
  return {{"kind", "text"},   {"name", name_},   {"seed", seed_},
          {"rank", rank_},    {"world", world_}, {"slice_tokens", slice_size()},
          {"batch_counter", batch_counter_}};
}

void TextDataSource::restore(const nlohmann::json& state) {
  try {
    FRUGAL_CHECK(state.at("kind").get<std::string>() == "text",
                 "{} data: the saved state is of kind '{}', not 'text'", name_,
                 state.at("kind").get<std::string>());
    auto expect_equal = [&](const char* key, auto here) {
      auto saved = state.at(key).get<decltype(here)>();
      FRUGAL_CHECK(saved == here,
                   "{} data: saved state has {} = {}, this run has {}; the batches would differ",
                   name_, key, saved, here);
    };
    expect_equal("name", name_);
    expect_equal("seed", seed_);
    expect_equal("rank", rank_);
    expect_equal("world", world_);
    expect_equal("slice_tokens", slice_size());
    const int64_t counter = state.at("batch_counter").get<int64_t>();
    FRUGAL_CHECK(counter >= 0, "{} data: saved batch_counter {} is negative", name_, counter);
    batch_counter_ = counter;
  } catch (const nlohmann::json::exception& e) {
    fail("{} data: malformed saved state {}: {}", name_, state.dump(), e.what());
  }
}

TextCorpus load_text_corpus(const DataConfig& config) {
  FRUGAL_CHECK(config.tokenizer == "bytes",
               "data.tokenizer = '{}': the plain text source only supports 'bytes'",
               config.tokenizer);
  FRUGAL_CHECK(!config.train_path.empty(), "data.train_path is not set");
  ByteTokenizer tokenizer;
  TextCorpus corpus;
  corpus.train = tokenizer.encode(read_text_file(config.train_path));
  FRUGAL_CHECK(!corpus.train.empty(), "data.train_path {} holds no text", config.train_path);
  if (!config.val_path.empty()) {
    corpus.validation = tokenizer.encode(read_text_file(config.val_path));
    return corpus;
  }
  FRUGAL_CHECK(config.val_fraction >= 0.0 && config.val_fraction < 1.0,
               "data.val_fraction = {} must be in [0, 1)", config.val_fraction);
  const int64_t total = static_cast<int64_t>(corpus.train.size());
  const int64_t val_tokens =
      static_cast<int64_t>(std::floor(config.val_fraction * static_cast<double>(total)));
  corpus.validation.assign(corpus.train.end() - val_tokens, corpus.train.end());
  corpus.train.resize(static_cast<size_t>(total - val_tokens));
  return corpus;
}

}  // namespace frugal
