// Byte-level BPE tokenizer that reads and writes Hugging Face `tokenizer.json` and encodes like
// the `tokenizers` library (0.2x) for that family: BPE model, ByteLevel pre-tokenizer (alone or
// after Split steps), normalizer none or NFC, ByteLevel decoder, TemplateProcessing / ByteLevel
// post-processor, added tokens (special or not) with single_word / lstrip / rstrip / normalized.
// Anything else in a tokenizer.json (WordPiece or Unigram models, other pre-tokenizers,
// normalizers, decoders or post-processors) is rejected with a frugal::Error naming the file
// and the type. "truncation" and "padding" are kept when saving but never applied.
//
// encode(text, add_special_tokens) = tokenizers' encode(text, add_special_tokens).ids:
//   1. invalid UTF-8 is replaced by U+FFFD, maximal subpart by subpart (what Python's
//      bytes.decode("utf-8", "replace") produces; tokenizers itself only accepts valid strings);
//   2. added tokens with normalized=false are split out of the raw text;
//   3. the rest is normalized (NFC or nothing) and split at normalized=true added tokens;
//   4. each remaining piece is pre-tokenized and each pre-token BPE-encoded (through a bounded
//      per-thread cache: pre-token bytes -> ids);
//   5. with add_special_tokens, the post-processor's template adds its special tokens (BOS).
// decode(ids, skip_special_tokens) = tokenizers' decode: ids unknown to the vocabulary are
// skipped, special added tokens are dropped when asked, the ByteLevel decoder maps each token's
// characters back to bytes (a token with a character outside the byte alphabet contributes its
// UTF-8 as is), and the bytes are read as UTF-8 with U+FFFD for invalid sequences.
//
// Special-token roles (BOS, EOS, PAD, FIM, chat roles) are found by name: from the
// "frugal_special_tokens" object frugal writes into tokenizer.json (the tokenizers library
// ignores unknown top-level keys), else from the template's leading special token (BOS) and the
// usual spellings (DeepSeek's "<｜begin▁of▁sentence｜>", "<|endoftext|>", "<s>", ...).
//
// A Tokenizer is immutable and cheap to copy (shared state); every method is thread-safe.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace frugal {

namespace tok {
struct TokenizerState;
}

enum class SpecialRole { kBos, kEos, kPad, kFimBegin, kFimHole, kFimEnd, kUser, kAssistant };

// Token contents of the special roles ("" = no such token).
struct SpecialTokenNames {
  std::string bos, eos, pad, fim_begin, fim_hole, fim_end, user, assistant;

  // DeepSeek-V3's spellings: <｜begin▁of▁sentence｜>, <｜end▁of▁sentence｜>, <｜▁pad▁｜>,
  // <｜fim▁begin｜>, <｜fim▁hole｜>, <｜fim▁end｜>, <｜User｜>, <｜Assistant｜>.
  static SpecialTokenNames deepseek();
  // The non-empty names, in the order bos, eos, pad, fim_begin, fim_hole, fim_end, user, assistant.
  std::vector<std::string> list() const;
  std::string& operator[](SpecialRole role);
  const std::string& operator[](SpecialRole role) const;
};

std::string_view special_role_name(SpecialRole role);  // "bos", "eos", "pad", "fim_begin", ...

class Tokenizer {
 public:
  // Reads a tokenizer.json (plain, or .zst). Errors name the file: unreadable, malformed JSON,
  // unsupported component type, inconsistent vocabulary/merges.
  static Tokenizer from_file(const std::string& path);
  // `source` names the origin in error messages.
  static Tokenizer from_json(const nlohmann::json& json, const std::string& source);
  static Tokenizer from_json_string(std::string_view text, const std::string& source);

  // Writes tokenizer.json (atomically) in the layout of the tokenizers library.
  void save(const std::string& path) const;
  std::string to_json_string() const;

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Documents are encoded independently on `threads` threads (0: all); the result equals
  // encode() of each document.
  std::vector<std::vector<int32_t>> encode_batch(std::span<const std::string_view> documents,
                                                 bool add_special_tokens = false,
                                                 int threads = 0) const;
  std::vector<std::vector<int32_t>> encode_batch(std::span<const std::string> documents,
                                                 bool add_special_tokens = false,
                                                 int threads = 0) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The pre-tokens (raw bytes) of ordinary text: normalizer and pre-tokenizer, no added tokens.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  // Added tokens first, then the model vocabulary; tokens are in byte-level form ("Ġthe").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  // One past the largest id (model or added): the rows an embedding table needs. Equals
  // tokenizers' get_vocab_size() when ids have no holes.
  int64_t vocab_size() const;
  // Number of merges of the BPE model.
  int64_t merge_count() const;

  // xxHash64 of the canonical form: every (id, token) of the model, the merges as id pairs, the
  // added tokens (id, content, flags), and the normalizer, pre-tokenizer, post-processor and
  // decoder settings (canonical JSON). Stable across save/load; for shard headers.
  uint64_t hash() const;

  std::optional<int32_t> special_id(SpecialRole role) const;
  std::optional<int32_t> bos_id() const { return special_id(SpecialRole::kBos); }
  std::optional<int32_t> eos_id() const { return special_id(SpecialRole::kEos); }
  std::optional<int32_t> pad_id() const { return special_id(SpecialRole::kPad); }
  const SpecialTokenNames& special_names() const;
  // Copy with other role names (each non-empty name must be a token); saved with the file.
  Tokenizer with_special_names(const SpecialTokenNames& names) const;

  // Entries of each thread's pre-token cache (default 65536; 0 disables caching).
  void set_cache_capacity(size_t entries) { cache_capacity_ = entries; }
  size_t cache_capacity() const { return cache_capacity_; }

  const std::string& source() const;

 private:
  explicit Tokenizer(std::shared_ptr<const tok::TokenizerState> state) : state_(std::move(state)) {}
  void encode_into(std::string_view text, bool add_special_tokens, std::vector<int32_t>& out) const;

  std::shared_ptr<const tok::TokenizerState> state_;
  size_t cache_capacity_ = 65536;
};

}  // namespace frugal
