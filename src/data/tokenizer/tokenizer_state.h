// The immutable state behind a Tokenizer (internal): parsed tokenizer.json sections, the
// compiled pipeline, and tables derived for encoding and decoding.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer/added_tokens.h"
#include "data/tokenizer/bpe_model.h"
#include "data/tokenizer/pre_tokenizer.h"
#include "data/tokenizer/tokenizer.h"

namespace frugal::tok {

// One item of a TemplateProcessing "single" template: the sequence ($A = 0, $B = 1) or the ids
// of a special token.
struct TemplateItem {
  int sequence = -1;
  std::vector<int32_t> ids;
};

struct TokenizerState {
  std::string source;

  // Sections kept as read (written back by save(), hashed canonically).
  nlohmann::json truncation, padding, normalizer_json, pre_tokenizer_json, post_processor_json,
      decoder_json;

  // Compiled pipeline.
  bool nfc = false;
  std::shared_ptr<const PreTokenizer> pre_tokenizer;
  std::vector<std::vector<TemplateItem>> templates;  // TemplateProcessing steps, in order
  bool byte_level_decoder = true;                     // false: no decoder (tokens joined by ' ')
  BpeModel model;
  nlohmann::json model_options;  // dropout, unk_token, ... as written back
  AddedVocabulary added;

  // Per id in [0, id_end): token string (added tokens win), decoded bytes, flags.
  int64_t id_end = 0;
  std::vector<std::string> token_of_id;
  std::vector<std::string> decoded_bytes;
  std::vector<uint8_t> has_id;
  std::vector<uint8_t> special;  // dropped by decode(skip_special_tokens)

  SpecialTokenNames names;
  std::array<std::optional<int32_t>, 8> role_ids;

  uint64_t hash = 0;
  uint64_t instance = 0;  // unique per state: keys the per-thread encode caches
};

// Parses and validates a tokenizer.json document (tokenizer_json.cc).
std::shared_ptr<TokenizerState> build_state(const nlohmann::json& json, const std::string& source);
// Derived tables, roles, hash and instance id (called by build_state and when roles change).
void finish_state(TokenizerState& state, const std::optional<SpecialTokenNames>& names);
// tokenizer.json text in the tokenizers library's layout.
std::string write_json(const TokenizerState& state);

}  // namespace frugal::tok
