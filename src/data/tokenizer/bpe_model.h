// The byte-level BPE model: vocabulary, ranked merges, and the merge loop of one pre-token.
//
// Vocabulary tokens are stored as in tokenizer.json: byte-level unicode strings ("Ġthe").
// Merges are (left id, right id) in rank order; a pair listed twice keeps its later rank, as
// the `tokenizers` library's hash map does. A pre-token (raw bytes) starts as one symbol per byte
// (the id of that byte's mapped character) and is merged exactly like `tokenizers`' Word::merge_all:
// a min-heap of (rank, position) candidates; the lowest rank, leftmost first; a popped candidate
// is skipped when its symbol was consumed or the pair there no longer produces the same new id;
// after each merge the pairs with the left and right neighbours are pushed. No allocation per
// merge: symbols and heap live in a per-thread scratch buffer.
//
// Options as in `tokenizers`: ignore_merges (a pre-token that is itself a vocabulary token is
// emitted whole), unk_token / fuse_unk / byte_fallback (only for bytes whose character is missing
// from the vocabulary). dropout, continuing_subword_prefix and end_of_word_suffix are not supported
// (rejected when loading).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace frugal::tok {

// Hash for unordered maps keyed by std::string that can be probed with a string_view.
struct StringViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const;
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringViewHash, std::equal_to<>>;

// Open-addressing map from a packed (left, right) id pair to (rank, new id).
class MergeMap {
 public:
  struct Value {
    uint32_t rank;
    int32_t new_id;
  };
  void build(const std::vector<std::pair<int32_t, int32_t>>& merges,
             const std::vector<int32_t>& new_ids);
  const Value* find(int32_t left, int32_t right) const {
    if (keys_.empty()) return nullptr;
    const uint64_t key = pack(left, right);
    for (size_t slot = hash(key) & mask_;; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return &values_[slot];
      if (keys_[slot] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t pack(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  static size_t hash(uint64_t key) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 17); }
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t mask_ = 0;
};

struct BpeOptions {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  BpeModel() = default;
  // vocab: token -> id (ids may leave holes); merges as token-string pairs in rank order.
  // `file` names the source in errors (a merge naming a token missing from the vocabulary, ...).
  BpeModel(std::vector<std::pair<std::string, int32_t>> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
           std::string_view file);

  // Appends the ids of one pre-token (raw bytes, non-empty).
  void encode_word(std::string_view bytes, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;  // nullptr for ids not in the vocabulary
  // Number of tokens in the vocabulary and one past the largest id.
  int64_t size() const { return static_cast<int64_t>(token_to_id_.size()); }
  int64_t id_end() const { return static_cast<int64_t>(id_to_token_.size()); }
  // Distinct merges in rank order (what tokenizer.json lists after a load/save round trip).
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
  const BpeOptions& options() const { return options_; }

 private:
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> has_id_;
  StringMap<int32_t> token_to_id_;
  StringMap<int32_t> bytes_to_id_;  // raw-byte form of byte-level tokens, for ignore_merges
  std::vector<std::pair<int32_t, int32_t>> merges_;
  MergeMap merge_map_;
  int32_t byte_ids_[256];
  std::optional<int32_t> unk_id_;
  BpeOptions options_;
};

}  // namespace frugal::tok
