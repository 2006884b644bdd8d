// Byte-level BPE model: vocabulary and merge tables, and the per-pre-token merge loop.
#include "data/tokenizer/bpe_model.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "data/tokenizer/utf8.h"

namespace frugal::tok {
namespace {

struct Symbol {
  int32_t id;
  int32_t prev, next;  // neighbours in the linked list, -1 at the ends
  uint32_t len;        // bytes covered; 0 once merged into its left neighbour
};

struct Candidate {
  uint32_t rank;
  uint32_t pos;
  int32_t new_id;
};

// std heap functions build a max-heap under this order, so the top is the lowest rank, then the
// leftmost position (tokenizers' Merge ordering).
struct CandidateAfter {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

struct WordScratch {
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
};

WordScratch& word_scratch() {
  thread_local WordScratch instance;
  return instance;
}

}  // namespace

size_t StringViewHash::operator()(std::string_view s) const {
  return static_cast<size_t>(XXH3_64bits(s.data(), s.size()));
}

void MergeMap::build(const std::vector<std::pair<int32_t, int32_t>>& merges,
                     const std::vector<int32_t>& new_ids) {
  size_t capacity = 16;
  while (capacity < merges.size() * 2 + 1) capacity *= 2;
  keys_.assign(capacity, kEmpty);
  values_.assign(capacity, Value{0, 0});
  mask_ = capacity - 1;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const uint64_t key = pack(merges[rank].first, merges[rank].second);
    size_t slot = hash(key) & mask_;
    while (keys_[slot] != kEmpty && keys_[slot] != key) slot = (slot + 1) & mask_;
    keys_[slot] = key;
    values_[slot] = Value{static_cast<uint32_t>(rank), new_ids[rank]};
  }
}

BpeModel::BpeModel(std::vector<std::pair<std::string, int32_t>> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges,
                   BpeOptions options, std::string_view file)
    : options_(std::move(options)) {
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab) {
    FRUGAL_CHECK(id >= 0, "{}: model.vocab gives token '{}' the negative id {}", file, token, id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  has_id_.assign(static_cast<size_t>(max_id + 1), 0);
  token_to_id_.reserve(vocab.size());
  std::string bytes;
  for (auto& [token, id] : vocab) {
    FRUGAL_CHECK(!has_id_[id], "{}: model.vocab gives id {} to both '{}' and '{}'", file, id,
                 id_to_token_[id], token);
    FRUGAL_CHECK(token_to_id_.emplace(token, id).second,
                 "{}: model.vocab lists token '{}' twice", file, token);
    if (byte_level_to_bytes(token, bytes)) bytes_to_id_.emplace(bytes, id);
    has_id_[id] = 1;
    id_to_token_[id] = std::move(token);
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = token_to_id_.find(byte_to_unicode_utf8(static_cast<uint8_t>(b)));
    byte_ids_[b] = it == token_to_id_.end() ? -1 : it->second;
  }
  if (options_.unk_token) {
    const auto it = token_to_id_.find(*options_.unk_token);
    if (it != token_to_id_.end()) unk_id_ = it->second;
  }

  // Ranks: a pair listed again takes its later rank (tokenizers collects them into a map).
  std::unordered_map<uint64_t, size_t> rank_of_pair;
  std::vector<std::pair<int32_t, int32_t>> pairs(merges.size());
  std::vector<int32_t> new_ids(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [left, right] = merges[i];
    const auto find = [&](const std::string& token) {
      const auto it = token_to_id_.find(token);
      FRUGAL_CHECK(it != token_to_id_.end(),
                   "{}: model.merges[{}] ('{}' '{}') uses '{}', which is not in model.vocab", file,
                   i, left, right, token);
      return it->second;
    };
    pairs[i] = {find(left), find(right)};
    new_ids[i] = find(left + right);
    rank_of_pair[(static_cast<uint64_t>(pairs[i].first) << 32) | static_cast<uint32_t>(pairs[i].second)] = i;
  }
  // Effective merges: distinct pairs, each at its final rank, in rank order.
  std::vector<std::pair<int32_t, int32_t>> effective;
  std::vector<int32_t> effective_ids;
  for (size_t i = 0; i < merges.size(); ++i) {
    const uint64_t key = (static_cast<uint64_t>(pairs[i].first) << 32) | static_cast<uint32_t>(pairs[i].second);
    if (rank_of_pair[key] != i) continue;
    effective.push_back(pairs[i]);
    effective_ids.push_back(new_ids[i]);
  }
  merges_ = std::move(effective);
  merge_map_.build(merges_, effective_ids);
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = token_to_id_.find(token);
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(id_to_token_.size()) || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::encode_word(std::string_view bytes, std::vector<int32_t>& out) const {
  if (options_.ignore_merges) {
    const auto it = bytes_to_id_.find(bytes);
    if (it != bytes_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  WordScratch& scratch = word_scratch();
  std::vector<Symbol>& symbols = scratch.symbols;
  symbols.clear();
  const auto add_symbol = [&](int32_t id, uint32_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, len});
  };
  // A pending unknown token (id, byte length), fused with following unknowns when fuse_unk.
  std::optional<std::pair<int32_t, uint32_t>> unk;
  for (char c : bytes) {
    const auto byte = static_cast<uint8_t>(c);
    const int32_t id = byte_ids_[byte];
    if (id >= 0) {
      if (unk) {
        add_symbol(unk->first, unk->second);
        unk.reset();
      }
      add_symbol(id, 1);
      continue;
    }
    // The byte's character is missing from the vocabulary (rare: hand-made vocabularies).
    const std::string& character = byte_to_unicode_utf8(byte);
    if (options_.byte_fallback) {
      std::vector<int32_t> fallback;
      for (char part : character) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<unsigned>(static_cast<uint8_t>(part)));
        const auto it = token_to_id_.find(std::string_view(name));
        if (it == token_to_id_.end()) break;
        fallback.push_back(it->second);
      }
      if (fallback.size() == character.size()) {
        for (int32_t fallback_id : fallback) add_symbol(fallback_id, 1);
        continue;
      }
    }
    if (options_.unk_token) {
      FRUGAL_CHECK(unk_id_.has_value(), "BPE: unk_token '{}' is not in the vocabulary",
                   *options_.unk_token);
      const auto len = static_cast<uint32_t>(character.size());
      if (unk && options_.fuse_unk) {
        unk->second += len;
      } else {
        if (unk) add_symbol(unk->first, unk->second);
        unk = std::make_pair(*unk_id_, len);
      }
    }
    // Without unk_token the character is dropped, as tokenizers does.
  }
  if (unk) add_symbol(unk->first, unk->second);

  std::vector<Candidate>& heap = scratch.heap;
  heap.clear();
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeMap::Value* m = merge_map_.find(symbols[i].id, symbols[i + 1].id))
      heap.push_back({m->rank, static_cast<uint32_t>(i), m->new_id});
  }
  std::make_heap(heap.begin(), heap.end(), CandidateAfter{});
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), CandidateAfter{});
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next == -1) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[right_pos];
    const MergeMap::Value* m = merge_map_.find(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // expired candidate
    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    symbols[right_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) {
      if (const MergeMap::Value* p = merge_map_.find(symbols[left.prev].id, left.id)) {
        heap.push_back({p->rank, static_cast<uint32_t>(left.prev), p->new_id});
        std::push_heap(heap.begin(), heap.end(), CandidateAfter{});
      }
    }
    if (left.next >= 0) {
      if (const MergeMap::Value* n = merge_map_.find(left.id, symbols[left.next].id)) {
        heap.push_back({n->rank, top.pos, n->new_id});
        std::push_heap(heap.begin(), heap.end(), CandidateAfter{});
      }
    }
  }
  for (const Symbol& symbol : symbols)
    if (symbol.len != 0) out.push_back(symbol.id);
}

}  // namespace frugal::tok
