// Byte-level BPE training (tokenizers' BpeTrainer algorithm, see bpe_trainer.h).
#include "data/tokenizer/bpe_trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "core/error.h"
#include "data/tokenizer/bpe_model.h"
#include "data/tokenizer/nfc.h"
#include "data/tokenizer/utf8.h"

namespace frugal {
namespace {

using tok::Span;
using tok::StringMap;

uint64_t pack(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
int32_t left_of(uint64_t pair) { return static_cast<int32_t>(pair >> 32); }
int32_t right_of(uint64_t pair) { return static_cast<int32_t>(pair & 0xFFFFFFFFu); }

// A heap entry: a pair, its count when pushed, and the words that may contain it.
struct QueueEntry {
  int64_t count;
  uint64_t pair;
  std::vector<uint32_t> words;
};

// Max-heap order of tokenizers' Merge: higher count first, then the smaller pair.
struct LowerPriority {
  bool operator()(const QueueEntry& a, const QueueEntry& b) const {
    if (a.count != b.count) return a.count < b.count;
    return a.pair > b.pair;
  }
};

struct Change {
  uint64_t pair;
  int32_t delta;
  uint32_t word;
};

// Pre-token -> occurrences over all documents (threads count disjoint documents, then the
// partial maps are summed).
StringMap<uint64_t> count_words(std::span<const std::string_view> documents,
                                const BpeTrainOptions& options, int threads) {
  const tok::PreTokenizer pre_tokenizer(options.pre_tokenizer, "train_bpe");
  std::vector<StringMap<uint64_t>> partial(static_cast<size_t>(threads));
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto count = static_cast<int64_t>(documents.size());
#pragma omp parallel num_threads(threads)
  {
    StringMap<uint64_t>& local = partial[static_cast<size_t>(omp_get_thread_num())];
    std::string arena;
    std::vector<Span> spans;
#pragma omp for schedule(dynamic, 8)
    for (int64_t i = 0; i < count; ++i) {
      try {
        const std::string_view document = documents[static_cast<size_t>(i)];
        FRUGAL_CHECK(document.size() < (1ull << 31), "train_bpe: document {} is over 2 GiB", i);
        arena = tok::is_valid_utf8(document) ? std::string(document) : tok::sanitize_utf8(document);
        if (options.nfc) arena = tok::nfc(arena);
        spans.clear();
        pre_tokenizer.run(arena, {0, static_cast<uint32_t>(arena.size())}, spans);
        for (const Span& span : spans) {
          const std::string_view word(arena.data() + span.begin, span.size());
          const auto it = local.find(word);
          if (it != local.end())
            ++it->second;
          else
            local.emplace(std::string(word), 1);
        }
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
  StringMap<uint64_t>& total = partial[0];
  for (size_t t = 1; t < partial.size(); ++t) {
    for (auto& [word, n] : partial[t]) total[word] += n;
    partial[t].clear();
  }
  return std::move(total);
}

// tokenizers' Word::merge on a plain symbol vector: merges every (c1, c2) left to right and
// records the pair-count changes (neighbour pairs lost and gained).
void merge_word(std::vector<int32_t>& word, int32_t c1, int32_t c2, int32_t replacement,
                uint32_t word_index, int64_t max_length, const std::vector<int64_t>& token_chars,
                std::vector<Change>& changes) {
  const size_t n = word.size();
  size_t read = 0, write = 0;
  const int64_t replacement_chars = token_chars[replacement];
  while (read < n) {
    if (word[read] == c1 && read + 1 < n && word[read + 1] == c2) {
      if (write > 0) {
        const int32_t prev = word[write - 1];
        changes.push_back({pack(prev, c1), -1, word_index});
        if (token_chars[prev] + replacement_chars < max_length)
          changes.push_back({pack(prev, replacement), 1, word_index});
      }
      word[write++] = replacement;
      if (read + 2 < n) {
        const int32_t next = word[read + 2];
        changes.push_back({pack(c2, next), -1, word_index});
        if (token_chars[next] + replacement_chars < max_length)
          changes.push_back({pack(replacement, next), 1, word_index});
      }
      read += 2;
    } else {
      word[write++] = word[read++];
    }
  }
  word.resize(write);
}

int64_t char_count(std::string_view s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace

Tokenizer train_bpe(std::span<const std::string> documents, const BpeTrainOptions& options) {
  std::vector<std::string_view> views(documents.begin(), documents.end());
  return train_bpe(std::span<const std::string_view>(views), options);
}

Tokenizer train_bpe(std::span<const std::string_view> documents, const BpeTrainOptions& options) {
  using Clock = std::chrono::steady_clock;
  const auto start_time = Clock::now();
  FRUGAL_CHECK(options.vocab_size > 0, "train_bpe: vocab_size must be positive, not {}",
               options.vocab_size);
  FRUGAL_CHECK(options.min_frequency >= 0, "train_bpe: min_frequency must be >= 0");
  std::vector<std::string> specials;
  for (const std::string& token : options.special_tokens) {
    FRUGAL_CHECK(!token.empty() && tok::is_valid_utf8(token),
                 "train_bpe: special token '{}' must be non-empty valid UTF-8", token);
    if (std::find(specials.begin(), specials.end(), token) == specials.end()) specials.push_back(token);
  }
  for (int r = 0; r < 8; ++r) {
    const std::string& name = options.roles[static_cast<SpecialRole>(r)];
    FRUGAL_CHECK(name.empty() || std::find(specials.begin(), specials.end(), name) != specials.end(),
                 "train_bpe: the {} token '{}' is not among the special tokens",
                 special_role_name(static_cast<SpecialRole>(r)), name);
  }
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  const int64_t max_length =
      options.max_token_length ? *options.max_token_length : std::numeric_limits<int64_t>::max();

  // 1. Pre-token counts, in a fixed order.
  StringMap<uint64_t> word_counts = count_words(documents, options, threads);
  std::vector<std::pair<std::string, uint64_t>> words_sorted(word_counts.begin(), word_counts.end());
  word_counts.clear();
  std::sort(words_sorted.begin(), words_sorted.end());

  // 2. Vocabulary: special tokens, then the byte alphabet by code point.
  std::vector<std::string> id_to_word;
  StringMap<int32_t> word_to_id;
  std::vector<int64_t> token_chars;
  const auto add_token = [&](const std::string& token) -> int32_t {
    const auto it = word_to_id.find(token);
    if (it != word_to_id.end()) return it->second;
    const auto id = static_cast<int32_t>(id_to_word.size());
    id_to_word.push_back(token);
    word_to_id.emplace(token, id);
    token_chars.push_back(char_count(token));
    return id;
  };
  for (const std::string& token : specials) add_token(token);
  std::vector<int> bytes_by_code_point(256);
  for (int b = 0; b < 256; ++b) bytes_by_code_point[b] = b;
  std::sort(bytes_by_code_point.begin(), bytes_by_code_point.end(), [](int a, int b) {
    return tok::byte_to_unicode(static_cast<uint8_t>(a)) < tok::byte_to_unicode(static_cast<uint8_t>(b));
  });
  int32_t byte_id[256];
  for (int b : bytes_by_code_point) byte_id[b] = add_token(tok::byte_to_unicode_utf8(static_cast<uint8_t>(b)));

  // 3. Words as symbol ids; pair counts and the words holding each pair.
  std::vector<std::vector<int32_t>> words(words_sorted.size());
  std::vector<int64_t> counts(words_sorted.size());
  for (size_t i = 0; i < words_sorted.size(); ++i) {
    counts[i] = static_cast<int64_t>(words_sorted[i].second);
    words[i].reserve(words_sorted[i].first.size());
    for (char c : words_sorted[i].first) words[i].push_back(byte_id[static_cast<uint8_t>(c)]);
  }
  const size_t unique_words = words_sorted.size();
  words_sorted.clear();
  words_sorted.shrink_to_fit();
  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;
  for (size_t i = 0; i < words.size(); ++i) {
    for (size_t j = 0; j + 1 < words[i].size(); ++j) {
      const uint64_t pair = pack(words[i][j], words[i][j + 1]);
      pair_counts[pair] += counts[i];
      std::vector<uint32_t>& list = where[pair];
      if (list.empty() || list.back() != i) list.push_back(static_cast<uint32_t>(i));
    }
  }
  std::vector<QueueEntry> queue;
  queue.reserve(where.size());
  for (auto& [pair, list] : where) {
    const int64_t count = pair_counts[pair];
    if (count > 0) queue.push_back({count, pair, std::move(list)});
  }
  where.clear();
  std::make_heap(queue.begin(), queue.end(), LowerPriority{});
  if (options.verbose)
    std::fprintf(stderr, "train_bpe: %zu documents, %zu unique pre-tokens, %zu pairs\n",
                 documents.size(), unique_words, queue.size());

  // 4. Merges.
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<std::vector<Change>> thread_changes(static_cast<size_t>(threads));
  std::vector<Change> changes;
  while (static_cast<int64_t>(word_to_id.size()) < options.vocab_size && !queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), LowerPriority{});
    QueueEntry top = std::move(queue.back());
    queue.pop_back();
    const int64_t current = pair_counts[top.pair];
    if (top.count != current) {
      top.count = current;
      queue.push_back(std::move(top));
      std::push_heap(queue.begin(), queue.end(), LowerPriority{});
      continue;
    }
    if (top.count < 1 || options.min_frequency > top.count) break;
    const int32_t left = left_of(top.pair), right = right_of(top.pair);
    const int32_t new_id = add_token(id_to_word[left] + id_to_word[right]);
    merges.emplace_back(left, right);

    // Merge in every listed word; changes are summed, so their order does not matter.
    changes.clear();
    const auto listed = static_cast<int64_t>(top.words.size());
    if (listed >= 512 && threads > 1) {
#pragma omp parallel num_threads(threads)
      {
        std::vector<Change>& local = thread_changes[static_cast<size_t>(omp_get_thread_num())];
        local.clear();
#pragma omp for schedule(static)
        for (int64_t k = 0; k < listed; ++k) {
          const uint32_t w = top.words[static_cast<size_t>(k)];
          merge_word(words[w], left, right, new_id, w, max_length, token_chars, local);
        }
      }
      for (std::vector<Change>& local : thread_changes) changes.insert(changes.end(), local.begin(), local.end());
    } else {
      for (const uint32_t w : top.words)
        merge_word(words[w], left, right, new_id, w, max_length, token_chars, changes);
    }
    for (const Change& change : changes) {
      pair_counts[change.pair] += change.delta * counts[change.word];
      if (change.delta > 0) {
        std::vector<uint32_t>& list = where[change.pair];
        if (list.empty() || list.back() != change.word) list.push_back(change.word);
      }
    }
    for (auto& [pair, list] : where) {
      std::sort(list.begin(), list.end());
      list.erase(std::unique(list.begin(), list.end()), list.end());
      const int64_t count = pair_counts[pair];
      if (count > 0) {
        queue.push_back({count, pair, std::move(list)});
        std::push_heap(queue.begin(), queue.end(), LowerPriority{});
      }
    }
    where.clear();
    if (options.verbose && merges.size() % 2000 == 0)
      std::fprintf(stderr, "train_bpe: %zu merges, vocabulary %zu, last count %lld (%.1f s)\n",
                   merges.size(), word_to_id.size(), static_cast<long long>(top.count),
                   std::chrono::duration<double>(Clock::now() - start_time).count());
  }

  // 5. The tokenizer.json of the result.
  nlohmann::json vocab = nlohmann::json::object();
  for (size_t id = 0; id < id_to_word.size(); ++id) vocab[id_to_word[id]] = id;
  nlohmann::json merges_json = nlohmann::json::array();
  for (const auto& [a, b] : merges) merges_json.push_back({id_to_word[a], id_to_word[b]});
  nlohmann::json added = nlohmann::json::array();
  for (const std::string& token : specials)
    added.push_back({{"id", word_to_id[token]}, {"content", token}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
  nlohmann::json post_processor = nullptr;
  if (options.add_bos && !options.roles.bos.empty()) {
    const std::string& bos = options.roles.bos;
    const nlohmann::json bos0 = {{"SpecialToken", {{"id", bos}, {"type_id", 0}}}};
    const nlohmann::json bos1 = {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}};
    const nlohmann::json seq_a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
    const nlohmann::json seq_b = {{"Sequence", {{"id", "B"}, {"type_id", 1}}}};
    post_processor = {
        {"type", "TemplateProcessing"},
        {"single", {bos0, seq_a}},
        {"pair", {bos0, seq_a, bos1, seq_b}},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", {word_to_id[bos]}}, {"tokens", {bos}}}}}}};
  }
  nlohmann::json roles = nlohmann::json::object();
  for (int r = 0; r < 8; ++r) {
    const std::string& name = options.roles[static_cast<SpecialRole>(r)];
    if (!name.empty()) roles[std::string(special_role_name(static_cast<SpecialRole>(r)))] = name;
  }
  nlohmann::json root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", options.nfc ? nlohmann::json{{"type", "NFC"}} : nlohmann::json(nullptr)},
      {"pre_tokenizer", options.pre_tokenizer.to_json()},
      {"post_processor", post_processor},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                   {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                 {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab}, {"merges", merges_json}}},
      {"frugal_special_tokens", roles}};
  if (options.verbose)
    std::fprintf(stderr, "train_bpe: done, %zu merges, vocabulary %zu (%.1f s)\n", merges.size(),
                 id_to_word.size(), std::chrono::duration<double>(Clock::now() - start_time).count());
  return Tokenizer::from_json(root, "train_bpe");
}

}  // namespace frugal
