// Packed token loader: shuffling, FIM, mixing, rank slices, validation split, resume
// (see packed_loader.h).
#include "data/loader/packed_loader.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/format.h>

#include "core/rng.h"
#include "data/loader/permutation.h"

namespace frugal {

namespace {

// Fixed keys of the random streams (any distinct constants).
const uint64_t kSplitSeed = hash_name("frugal.loader.validation_split");
const uint64_t kShuffleTag = hash_name("frugal.loader.shuffle");
const uint64_t kFimTag = hash_name("frugal.loader.fim");
const uint64_t kMixTag = hash_name("frugal.loader.mix");

const char* split_name(LoaderSplit split) {
  return split == LoaderSplit::kTrain ? "train" : "validation";
}

}  // namespace

PackedLoader::PackedLoader(const LoaderOptions& options, LoaderSplit split)
    : options_(options), split_(split), name_(split_name(split)) {
  const char* name = name_.c_str();
  FRUGAL_CHECK(!options_.datasets.empty(), "{} data: no datasets given", name);
  FRUGAL_CHECK(options_.world >= 1 && options_.rank >= 0 && options_.rank < options_.world,
               "{} data: rank {} is not valid for world size {}", name, options_.rank,
               options_.world);
  FRUGAL_CHECK(options_.val_fraction >= 0.0 && options_.val_fraction < 1.0,
               "{} data: val_fraction = {} must be in [0, 1)", name, options_.val_fraction);
  FRUGAL_CHECK(options_.fim_rate >= 0.0 && options_.fim_rate <= 1.0,
               "{} data: fim_rate = {} must be in [0, 1]", name, options_.fim_rate);
  FRUGAL_CHECK(split_ == LoaderSplit::kTrain || options_.val_fraction > 0.0,
               "validation data: val_fraction is 0, so no document is held out for validation");

  double total_weight = 0;
  for (const LoaderDataset& entry : options_.datasets) {
    FRUGAL_CHECK(std::isfinite(entry.weight) && entry.weight >= 0.0,
                 "{} data: dataset {} has weight {}; weights must be finite and >= 0", name,
                 entry.path, entry.weight);
    datasets_.push_back(Dataset::open(entry.path));
    if (!options_.expected_tokenizer_hash.empty())
      datasets_.back().check_tokenizer(options_.expected_tokenizer_hash);
    total_weight += entry.weight;
    cumulative_weights_.push_back(total_weight);
  }
  FRUGAL_CHECK(total_weight > 0.0, "{} data: the dataset weights sum to 0", name);
  const Dataset& first = datasets_.front();
  for (const Dataset& other : datasets_)
    FRUGAL_CHECK(other.tokenizer_hash() == first.tokenizer_hash() &&
                     other.vocab_size() == first.vocab_size(),
                 "{} data: {} was tokenized with tokenizer '{}' ({} ids) but {} with '{}' ({} "
                 "ids); mixed datasets must share one tokenizer",
                 name, other.dir(), other.tokenizer_hash(), other.vocab_size(), first.dir(),
                 first.tokenizer_hash(), first.vocab_size());
  vocab_size_ = first.vocab_size();

  auto check_id = [&](const char* what, int64_t id) {
    FRUGAL_CHECK(id >= 0 && id < vocab_size_, "{} data: {} = {} is outside the vocabulary [0, {})",
                 name, what, id, vocab_size_);
  };
  special_.eos_id = static_cast<int32_t>(options_.eos_id >= 0 ? options_.eos_id : first.eos_id());
  check_id("eos_id", special_.eos_id);
  if (options_.add_bos) {
    FRUGAL_CHECK(first.bos_id() >= 0, "{} data: add_bos is set but {} records no bos_id", name,
                 first.dir());
    special_.bos_id = static_cast<int32_t>(first.bos_id());
  }
  if (options_.fim_rate > 0.0) {
    check_id("fim_begin_id", options_.fim_begin_id);
    check_id("fim_hole_id", options_.fim_hole_id);
    check_id("fim_end_id", options_.fim_end_id);
    const std::set<int64_t> distinct = {options_.fim_begin_id, options_.fim_hole_id,
                                        options_.fim_end_id, special_.eos_id};
    FRUGAL_CHECK(distinct.size() == 4,
                 "{} data: fim_begin_id {}, fim_hole_id {}, fim_end_id {} and eos_id {} must be "
                 "four different ids",
                 name, options_.fim_begin_id, options_.fim_hole_id, options_.fim_end_id,
                 special_.eos_id);
    special_.fim_begin_id = static_cast<int32_t>(options_.fim_begin_id);
    special_.fim_hole_id = static_cast<int32_t>(options_.fim_hole_id);
    special_.fim_end_id = static_cast<int32_t>(options_.fim_end_id);
  }

  for (size_t d = 0; d < datasets_.size(); ++d) {
    const Dataset& dataset = datasets_[d];
    content_keys_.push_back(std::stoull(dataset.content_id(), nullptr, 16));
    dataset_keys_.push_back(mix_keys(content_keys_.back(), d));
    int64_t documents = dataset.num_documents(), tokens = dataset.num_tokens();
    if (options_.val_fraction > 0.0) {  // count this split's share (no token reads)
      documents = tokens = 0;
      for (int64_t doc = 0; doc < dataset.num_documents(); ++doc) {
        if (!in_split(static_cast<int64_t>(d), doc)) continue;
        documents += 1;
        tokens += dataset.doc_length(doc);
      }
    }
    split_documents_.push_back(documents);
    split_tokens_.push_back(tokens);
    FRUGAL_CHECK(documents > 0 || options_.datasets[d].weight == 0.0,
                 "{} data: dataset {} has no documents in the {} split ({} documents in all, "
                 "val_fraction {})",
                 name, dataset.dir(), name, dataset.num_documents(), options_.val_fraction);
    Cursor cursor;
    if (documents > 0) settle(static_cast<int64_t>(d), cursor);
    cursors_.push_back(cursor);
  }
}

bool PackedLoader::in_split(int64_t d, int64_t doc) const {
  bool held_out = false;
  if (options_.val_fraction > 0.0)
    held_out = RandomStream(kSplitSeed, content_keys_[static_cast<size_t>(d)])
                   .uniform(static_cast<uint64_t>(doc)) < options_.val_fraction;
  return held_out == (split_ == LoaderSplit::kValidation);
}

bool PackedLoader::is_validation_document(int64_t dataset, int64_t doc) const {
  FRUGAL_CHECK(dataset >= 0 && dataset < num_datasets(), "{} data: no dataset {}", name_, dataset);
  const bool in_this = in_split(dataset, doc);
  return split_ == LoaderSplit::kValidation ? in_this : !in_this;
}

int64_t PackedLoader::split_documents(int64_t dataset) const {
  return split_documents_.at(static_cast<size_t>(dataset));
}

int64_t PackedLoader::split_tokens(int64_t dataset) const {
  return split_tokens_.at(static_cast<size_t>(dataset));
}

int64_t PackedLoader::document_at(int64_t d, int64_t epoch, int64_t position) const {
  const Dataset& dataset = datasets_[static_cast<size_t>(d)];
  const FeistelPermutation order(
      static_cast<uint64_t>(dataset.num_documents()), options_.seed,
      mix_keys(dataset_keys_[static_cast<size_t>(d)],
               mix_keys(kShuffleTag, static_cast<uint64_t>(epoch))));
  return static_cast<int64_t>(order(static_cast<uint64_t>(position)));
}

void PackedLoader::settle(int64_t d, Cursor& cursor) const {
  const Dataset& dataset = datasets_[static_cast<size_t>(d)];
  const int64_t n = dataset.num_documents();
  while (true) {
    if (cursor.position >= n) {
      cursor.epoch += 1;
      cursor.position = 0;
    }
    cursor.document = document_at(d, cursor.epoch, cursor.position);
    if (in_split(d, cursor.document)) break;
    cursor.position += 1;
  }
  uint32_t words[4];
  Philox::generate(options_.seed,
                   mix_keys(dataset_keys_[static_cast<size_t>(d)],
                            mix_keys(kFimTag, static_cast<uint64_t>(cursor.epoch))),
                   static_cast<uint64_t>(cursor.position), words);
  const int64_t length = dataset.doc_length(cursor.document);
  cursor.piece = DocumentPiece(length, draw_fim_cut(words, length, options_.fim_rate), special_);
}

void PackedLoader::check_tokens(int64_t d, const int32_t* tokens, int64_t n) const {
  int32_t low = 0, high = 0;
  for (int64_t i = 0; i < n; ++i) {
    low = std::min(low, tokens[i]);
    high = std::max(high, tokens[i]);
  }
  if (low >= 0 && high < vocab_size_) return;
  const Cursor& cursor = cursors_[static_cast<size_t>(d)];
  const Dataset& dataset = datasets_[static_cast<size_t>(d)];
  fail("{} data: {}: document {} (in {}) holds token {}, outside the vocabulary [0, {})", name_,
       dataset.dir(), cursor.document,
       dataset.shards()[static_cast<size_t>(dataset.shard_of(cursor.document))].file,
       low < 0 ? low : high, vocab_size_);
}

void PackedLoader::take(int64_t d, int64_t n, int32_t* out, int32_t* segments,
                        int32_t* positions) {
  Cursor& cursor = cursors_[static_cast<size_t>(d)];
  const Dataset& dataset = datasets_[static_cast<size_t>(d)];
  int32_t segment = 0;
  int64_t done = 0;
  while (done < n) {
    const int64_t count = std::min(cursor.piece.length() - cursor.offset, n - done);
    if (out != nullptr) {
      cursor.piece.copy(dataset.doc(cursor.document), cursor.offset, count, out + done);
      check_tokens(d, out + done, count);
    }
    if (segments != nullptr) {
      for (int64_t i = 0; i < count; ++i) {
        segments[done + i] = segment;
        positions[done + i] = static_cast<int32_t>(cursor.offset + i);
      }
    }
    cursor.offset += count;
    done += count;
    if (cursor.offset == cursor.piece.length()) {
      cursor.position += 1;
      cursor.offset = 0;
      settle(d, cursor);
      segment += 1;
    }
  }
}

int64_t PackedLoader::dataset_of_sequence(int64_t k) const {
  if (datasets_.size() == 1) return 0;
  const double u = RandomStream(options_.seed, mix_keys(kMixTag, static_cast<uint64_t>(split_)))
                       .uniform(static_cast<uint64_t>(k)) *
                   cumulative_weights_.back();
  for (size_t d = 0; d < cumulative_weights_.size(); ++d)
    if (u < cumulative_weights_[d]) return static_cast<int64_t>(d);
  for (size_t d = cumulative_weights_.size(); d-- > 0;)  // rounding at the top end
    if (options_.datasets[d].weight > 0.0) return static_cast<int64_t>(d);
  return 0;
}

void PackedLoader::next_batch(int32_t* tokens, int32_t* targets, int64_t batch, int64_t seq) {
  FRUGAL_CHECK(batch >= 1, "{} data: batch size {} must be >= 1", name_, batch);
  FRUGAL_CHECK(seq >= 1, "{} data: sequence length {} must be >= 1", name_, seq);
  const size_t window = static_cast<size_t>(seq + 1);
  window_.resize(window);
  const bool masking = options_.document_masking;
  if (masking) {
    window_segments_.resize(window);
    window_positions_.resize(window);
    segment_ids_.resize(static_cast<size_t>(batch * seq));
    positions_.resize(static_cast<size_t>(batch * seq));
  }
  for (int64_t row = 0; row < batch; ++row) {
    for (int64_t slot = 0; slot < options_.world; ++slot) {
      const int64_t d = dataset_of_sequence(sequence_counter_);
      if (slot == options_.rank) {
        take(d, seq + 1, window_.data(), masking ? window_segments_.data() : nullptr,
             masking ? window_positions_.data() : nullptr);
        std::copy(window_.begin(), window_.end() - 1, tokens + row * seq);  // [seq]
        std::copy(window_.begin() + 1, window_.end(), targets + row * seq);  // [seq], shifted
        if (masking) {
          std::copy(window_segments_.begin(), window_segments_.end() - 1,
                    segment_ids_.begin() + row * seq);
          std::copy(window_positions_.begin(), window_positions_.end() - 1,
                    positions_.begin() + row * seq);
        }
      } else {
        take(d, seq + 1, nullptr, nullptr, nullptr);
      }
      sequence_counter_ += 1;
    }
  }
}

const std::vector<int32_t>& PackedLoader::last_segment_ids() const {
  FRUGAL_CHECK(options_.document_masking,
               "{} data: segment ids are recorded only with document_masking", name_);
  return segment_ids_;
}

const std::vector<int32_t>& PackedLoader::last_positions() const {
  FRUGAL_CHECK(options_.document_masking,
               "{} data: positions are recorded only with document_masking", name_);
  return positions_;
}

nlohmann::json PackedLoader::options_json() const {
  nlohmann::json datasets = nlohmann::json::array();
  for (size_t d = 0; d < datasets_.size(); ++d)
    datasets.push_back({{"content_id", datasets_[d].content_id()},
                        {"weight", options_.datasets[d].weight},
                        {"documents", datasets_[d].num_documents()},
                        {"tokens", datasets_[d].num_tokens()}});
  return {{"seed", options_.seed},
          {"fim_rate", options_.fim_rate},
          {"fim_begin_id", special_.fim_begin_id},
          {"fim_hole_id", special_.fim_hole_id},
          {"fim_end_id", special_.fim_end_id},
          {"eos_id", special_.eos_id},
          {"bos_id", special_.bos_id},
          {"val_fraction", options_.val_fraction},
          {"datasets", datasets}};
}

nlohmann::json PackedLoader::state() const {
  nlohmann::json streams = nlohmann::json::array();
  for (size_t d = 0; d < cursors_.size(); ++d) {
    const Cursor& cursor = cursors_[d];
    const bool used = split_documents_[d] > 0;
    streams.push_back({{"epoch", cursor.epoch},
                       {"position", cursor.position},
                       {"offset", cursor.offset},
                       {"document", used ? cursor.document : -1},
                       {"fim", used && cursor.piece.fim()}});
  }
  return {{"kind", "packed"},
          {"split", name_},
          {"options", options_json()},
          {"sequence_counter", sequence_counter_},
          {"streams", streams}};
}

void PackedLoader::restore(const nlohmann::json& state) {
  try {
    const auto kind = state.at("kind").get<std::string>();
    FRUGAL_CHECK(kind == "packed", "{} data: the saved state is of kind '{}', not 'packed'", name_,
                 kind);
    const auto split = state.at("split").get<std::string>();
    FRUGAL_CHECK(split == name_, "{} data: the saved state belongs to the {} split", name_, split);
    const nlohmann::json ours = options_json();
    const nlohmann::json& saved = state.at("options");
    for (const auto& [key, value] : ours.items()) {
      if (key == "datasets") continue;
      FRUGAL_CHECK(saved.contains(key) && saved.at(key) == value,
                   "{} data: the saved state has {} = {}, this loader has {}; the batches would "
                   "differ",
                   name_, key, saved.contains(key) ? saved.at(key).dump() : "(none)", value.dump());
    }
    const nlohmann::json& saved_datasets = saved.at("datasets");
    FRUGAL_CHECK(saved_datasets.size() == datasets_.size(),
                 "{} data: the saved state mixes {} datasets, this loader {}", name_,
                 saved_datasets.size(), datasets_.size());
    for (size_t d = 0; d < datasets_.size(); ++d)
      FRUGAL_CHECK(saved_datasets[d] == ours["datasets"][d],
                   "{} data: dataset {} ({}) differs from the one the saved state was made with: "
                   "saved {}, here {}",
                   name_, d, datasets_[d].dir(), saved_datasets[d].dump(),
                   ours["datasets"][d].dump());

    const auto counter = state.at("sequence_counter").get<int64_t>();
    FRUGAL_CHECK(counter >= 0, "{} data: saved sequence_counter {} is negative", name_, counter);
    const nlohmann::json& streams = state.at("streams");
    FRUGAL_CHECK(streams.size() == datasets_.size(),
                 "{} data: the saved state has {} streams for {} datasets", name_, streams.size(),
                 datasets_.size());
    std::vector<Cursor> cursors(datasets_.size());
    for (size_t d = 0; d < datasets_.size(); ++d) {
      if (split_documents_[d] == 0) continue;
      const nlohmann::json& stream = streams[d];
      Cursor& cursor = cursors[d];
      cursor.epoch = stream.at("epoch").get<int64_t>();
      cursor.position = stream.at("position").get<int64_t>();
      cursor.offset = stream.at("offset").get<int64_t>();
      const auto document = stream.at("document").get<int64_t>();
      const int64_t n = datasets_[d].num_documents();
      FRUGAL_CHECK(cursor.epoch >= 0 && cursor.position >= 0 && cursor.position < n,
                   "{} data: saved stream {} has epoch {}, position {} outside [0, {})", name_, d,
                   cursor.epoch, cursor.position, n);
      const Cursor requested = cursor;
      settle(static_cast<int64_t>(d), cursor);
      FRUGAL_CHECK(cursor.epoch == requested.epoch && cursor.position == requested.position &&
                       cursor.document == document,
                   "{} data: saved stream {} points at epoch {} position {} (document {}), which "
                   "is not a {} document of {} here",
                   name_, d, requested.epoch, requested.position, document, name_,
                   datasets_[d].dir());
      FRUGAL_CHECK(cursor.offset >= 0 && cursor.offset < cursor.piece.length(),
                   "{} data: saved stream {} has offset {} outside its document of {} tokens",
                   name_, d, cursor.offset, cursor.piece.length());
    }
    cursors_ = std::move(cursors);
    sequence_counter_ = counter;
  } catch (const nlohmann::json::exception& e) {
    fail("{} data: malformed saved state {}: {}", name_, state.dump(), e.what());
  }
}

}  // namespace frugal
