// Tokenizer: loading/saving entry points, the encode pipeline with its per-thread pre-token
// cache, batch encoding on threads, decoding and vocabulary lookups.
#include "data/tokenizer/tokenizer.h"

#include <omp.h>

#include <exception>
#include <mutex>

#include "data/tokenizer/encode_cache.h"
#include "data/tokenizer/nfc.h"
#include "data/tokenizer/tokenizer_state.h"
#include "data/tokenizer/utf8.h"
#include "io/atomic_file.h"
#include "io/text_file.h"

namespace frugal {
namespace {

using tok::AddedSplit;
using tok::Span;
using tok::TokenizerState;

// Per-thread encode state: buffers reused across calls and the bounded pre-token cache
// (pre-token bytes -> ids). The cache belongs to one tokenizer state at a time.
struct EncodeScratch {
  std::string arena;
  std::vector<Span> spans;
  std::vector<AddedSplit> raw_splits, normalized_splits;
  uint64_t cache_owner = 0;
  tok::PreTokenCache cache;
};

EncodeScratch& encode_scratch() {
  thread_local EncodeScratch scratch;
  return scratch;
}

// Pre-tokens at least this long skip the cache (tokenizers' cache uses the same bound).
constexpr size_t kMaxCachedWordBytes = 256;

// Encodes ordinary (normalized, added-token-free) text.
void encode_ordinary(const TokenizerState& state, std::string_view text, size_t cache_capacity,
                     EncodeScratch& s, std::vector<int32_t>& out) {
  if (text.empty()) return;
  FRUGAL_CHECK(text.size() < (1ull << 31), "encode: a text piece of {} bytes is too large (2 GiB)",
               text.size());
  s.arena.assign(text);
  s.spans.clear();
  state.pre_tokenizer->run(s.arena, {0, static_cast<uint32_t>(text.size())}, s.spans);
  if (s.cache_owner != state.instance || s.cache.capacity() != cache_capacity) {
    s.cache.reset(cache_capacity);
    s.cache_owner = state.instance;
  }
  for (const Span& span : s.spans) {
    const std::string_view word(s.arena.data() + span.begin, span.size());
    if (cache_capacity == 0 || word.size() >= kMaxCachedWordBytes) {
      state.model.encode_word(word, out);
      continue;
    }
    const uint64_t hash = tok::PreTokenCache::hash(word);
    if (s.cache.lookup(word, hash, out)) continue;
    const size_t before = out.size();
    state.model.encode_word(word, out);
    s.cache.insert(word, hash, out.data() + before, out.size() - before);
  }
}

}  // namespace

SpecialTokenNames SpecialTokenNames::deepseek() {
  SpecialTokenNames names;
  names.bos = "<｜begin▁of▁sentence｜>";
  names.eos = "<｜end▁of▁sentence｜>";
  names.pad = "<｜▁pad▁｜>";
  names.fim_begin = "<｜fim▁begin｜>";
  names.fim_hole = "<｜fim▁hole｜>";
  names.fim_end = "<｜fim▁end｜>";
  names.user = "<｜User｜>";
  names.assistant = "<｜Assistant｜>";
  return names;
}

std::vector<std::string> SpecialTokenNames::list() const {
  std::vector<std::string> out;
  for (int r = 0; r < 8; ++r)
    if (!(*this)[static_cast<SpecialRole>(r)].empty()) out.push_back((*this)[static_cast<SpecialRole>(r)]);
  return out;
}

std::string& SpecialTokenNames::operator[](SpecialRole role) {
  return const_cast<std::string&>(static_cast<const SpecialTokenNames&>(*this)[role]);
}

const std::string& SpecialTokenNames::operator[](SpecialRole role) const {
  switch (role) {
    case SpecialRole::kBos: return bos;
    case SpecialRole::kEos: return eos;
    case SpecialRole::kPad: return pad;
    case SpecialRole::kFimBegin: return fim_begin;
    case SpecialRole::kFimHole: return fim_hole;
    case SpecialRole::kFimEnd: return fim_end;
    case SpecialRole::kUser: return user;
    case SpecialRole::kAssistant: return assistant;
  }
  return bos;
}

std::string_view special_role_name(SpecialRole role) {
  static constexpr std::string_view names[] = {"bos",      "eos",      "pad",  "fim_begin",
                                               "fim_hole", "fim_end", "user", "assistant"};
  return names[static_cast<int>(role)];
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  const std::string text = read_text_file(path);
  return from_json_string(text, path);
}

Tokenizer Tokenizer::from_json_string(std::string_view text, const std::string& source) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: malformed JSON: {}", source, e.what());
  }
  return from_json(json, source);
}

Tokenizer Tokenizer::from_json(const nlohmann::json& json, const std::string& source) {
  return Tokenizer(tok::build_state(json, source));
}

void Tokenizer::save(const std::string& path) const { write_file_atomic(path, to_json_string()); }

std::string Tokenizer::to_json_string() const { return tok::write_json(*state_); }

void Tokenizer::encode_into(std::string_view input, bool add_special_tokens,
                            std::vector<int32_t>& out) const {
  const TokenizerState& state = *state_;
  std::string sanitized;
  std::string_view text = input;
  if (!tok::is_valid_utf8(text)) {
    sanitized = tok::sanitize_utf8(text);
    text = sanitized;
  }
  EncodeScratch& s = encode_scratch();
  std::vector<AddedSplit> raw_splits, normalized_splits;
  raw_splits.swap(s.raw_splits);
  normalized_splits.swap(s.normalized_splits);
  raw_splits.clear();
  std::vector<int32_t> ids;
  state.added.split(text, /*normalized_set=*/false, raw_splits);
  std::string normalized;
  for (const AddedSplit& raw : raw_splits) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    std::string_view piece = text.substr(raw.begin, raw.end - raw.begin);
    if (state.nfc && !tok::nfc_quick_check(piece)) {
      normalized = tok::nfc(piece);
      piece = normalized;
    }
    normalized_splits.clear();
    state.added.split(piece, /*normalized_set=*/true, normalized_splits);
    for (const AddedSplit& split : normalized_splits) {
      if (split.id >= 0)
        ids.push_back(split.id);
      else
        encode_ordinary(state, piece.substr(split.begin, split.end - split.begin), cache_capacity_,
                        s, ids);
    }
  }
  raw_splits.swap(s.raw_splits);
  normalized_splits.swap(s.normalized_splits);

  if (add_special_tokens) {
    for (const std::vector<tok::TemplateItem>& items : state.templates) {
      std::vector<int32_t> processed;
      processed.reserve(ids.size() + 4);
      for (const tok::TemplateItem& item : items) {
        if (item.sequence == 0)
          processed.insert(processed.end(), ids.begin(), ids.end());
        else if (item.sequence < 0)
          processed.insert(processed.end(), item.ids.begin(), item.ids.end());
      }
      ids.swap(processed);
    }
  }
  out = std::move(ids);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  encode_into(text, add_special_tokens, ids);
  return ids;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(std::span<const std::string_view> documents,
                                                          bool add_special_tokens, int threads) const {
  std::vector<std::vector<int32_t>> results(documents.size());
  if (threads <= 0) threads = omp_get_max_threads();
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto count = static_cast<int64_t>(documents.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < count; ++i) {
    try {
      encode_into(documents[static_cast<size_t>(i)], add_special_tokens, results[static_cast<size_t>(i)]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return results;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(std::span<const std::string> documents,
                                                          bool add_special_tokens, int threads) const {
  std::vector<std::string_view> views(documents.begin(), documents.end());
  return encode_batch(std::span<const std::string_view>(views), add_special_tokens, threads);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const TokenizerState& state = *state_;
  std::string bytes;
  bool first = true;
  for (const int32_t id : ids) {
    FRUGAL_CHECK(id >= 0, "decode: negative token id {}", id);
    if (id >= state.id_end || !state.has_id[id]) continue;  // unknown ids are skipped
    if (skip_special_tokens && state.special[id]) continue;
    if (!state.byte_level_decoder && !first) bytes.push_back(' ');
    bytes += state.decoded_bytes[id];
    first = false;
  }
  return tok::is_valid_utf8(bytes) ? bytes : tok::sanitize_utf8(bytes);
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view input) const {
  const TokenizerState& state = *state_;
  std::string text = tok::is_valid_utf8(input) ? std::string(input) : tok::sanitize_utf8(input);
  if (state.nfc) text = tok::nfc(text);
  std::string arena = text;
  std::vector<Span> spans;
  state.pre_tokenizer->run(arena, {0, static_cast<uint32_t>(arena.size())}, spans);
  std::vector<std::string> out;
  out.reserve(spans.size());
  for (const Span& span : spans) out.emplace_back(arena.substr(span.begin, span.size()));
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto id = state_->added.find_content(token)) return id;
  return state_->model.token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= state_->id_end || !state_->has_id[id]) return std::nullopt;
  return state_->token_of_id[id];
}

int64_t Tokenizer::vocab_size() const { return state_->id_end; }

int64_t Tokenizer::merge_count() const { return static_cast<int64_t>(state_->model.merges().size()); }

uint64_t Tokenizer::hash() const { return state_->hash; }

std::optional<int32_t> Tokenizer::special_id(SpecialRole role) const {
  return state_->role_ids[static_cast<int>(role)];
}

const SpecialTokenNames& Tokenizer::special_names() const { return state_->names; }

Tokenizer Tokenizer::with_special_names(const SpecialTokenNames& names) const {
  auto state = std::make_shared<TokenizerState>(*state_);
  tok::finish_state(*state, names);
  Tokenizer copy(std::move(state));
  copy.cache_capacity_ = cache_capacity_;
  return copy;
}

const std::string& Tokenizer::source() const { return state_->source; }

}  // namespace frugal
