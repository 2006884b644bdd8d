// tokenizer.json reading (validation of the supported family, with errors naming the file and
// the unsupported type) and writing in the layout of the Hugging Face tokenizers library.
#include <xxhash.h>

#include <atomic>
#include <cstring>

#include "core/error.h"
#include "data/tokenizer/json_util.h"
#include "data/tokenizer/nfc.h"
#include "data/tokenizer/tokenizer_state.h"
#include "data/tokenizer/utf8.h"

namespace frugal::tok {
namespace {

using json = nlohmann::json;

const json& member_or_null(const json& object, std::string_view key) {
  static const json null_value;
  const auto it = object.find(key);
  return it == object.end() ? null_value : *it;
}

// Returns whether the normalizer applies NFC; rejects everything but null, NFC and Sequences of
// those.
bool parse_normalizer(const json& value, const std::string& source, const std::string& where) {
  if (value.is_null()) return false;
  const std::string type = json_type(value, source, where);
  if (type == "NFC") return true;
  if (type == "Sequence") {
    const json& list = json_member(value, "normalizers", source, where);
    FRUGAL_CHECK(list.is_array(), "{}: {}.normalizers must be an array", source, where);
    bool nfc = false;
    for (size_t i = 0; i < list.size(); ++i)
      nfc = parse_normalizer(list[i], source, fmt::format("{}.normalizers[{}]", where, i)) || nfc;
    return nfc;
  }
  fail("{}: normalizer type '{}' is not supported: frugal supports no normalizer or NFC", source,
       type.empty() ? "(none)" : type);
}

// TemplateProcessing "single" template with its special tokens resolved to ids.
std::vector<TemplateItem> parse_template(const json& value, const std::string& source,
                                         const std::string& where) {
  const json& specials = member_or_null(value, "special_tokens");
  FRUGAL_CHECK(specials.is_null() || specials.is_object(), "{}: {}.special_tokens must be an object",
               source, where);
  const json& single = json_member(value, "single", source, where);
  FRUGAL_CHECK(single.is_array(), "{}: {}.single must be an array", source, where);
  std::vector<TemplateItem> items;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string item_where = fmt::format("{}.single[{}]", where, i);
    const json& item = single[i];
    FRUGAL_CHECK(item.is_object() && item.size() == 1,
                 "{}: {} must be {{\"SpecialToken\": ...}} or {{\"Sequence\": ...}}", source, item_where);
    TemplateItem out;
    if (item.contains("Sequence")) {
      const std::string id = json_string(item["Sequence"], "id", source, item_where + ".Sequence");
      FRUGAL_CHECK(id == "A" || id == "B", "{}: {}.Sequence.id must be \"A\" or \"B\", not '{}'",
                   source, item_where, id);
      out.sequence = id == "A" ? 0 : 1;
    } else if (item.contains("SpecialToken")) {
      const std::string name = json_string(item["SpecialToken"], "id", source, item_where + ".SpecialToken");
      FRUGAL_CHECK(specials.is_object() && specials.contains(name),
                   "{}: {} names special token '{}', which {}.special_tokens does not define",
                   source, item_where, name, where);
      const json& ids = json_member(specials[name], "ids", source, where + ".special_tokens." + name);
      FRUGAL_CHECK(ids.is_array(), "{}: {}.special_tokens.{}.ids must be an array", source, where, name);
      for (const json& id : ids) {
        FRUGAL_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < INT32_MAX,
                     "{}: {}.special_tokens.{}.ids must hold non-negative integers", source, where, name);
        out.ids.push_back(id.get<int32_t>());
      }
    } else {
      fail("{}: {} must be {{\"SpecialToken\": ...}} or {{\"Sequence\": ...}}", source, item_where);
    }
    items.push_back(std::move(out));
  }
  return items;
}

void parse_post_processor(const json& value, const std::string& source, const std::string& where,
                          std::vector<std::vector<TemplateItem>>& templates) {
  if (value.is_null()) return;
  const std::string type = json_type(value, source, where);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "TemplateProcessing") {
    templates.push_back(parse_template(value, source, where));
    return;
  }
  if (type == "Sequence") {
    const json& list = json_member(value, "processors", source, where);
    FRUGAL_CHECK(list.is_array(), "{}: {}.processors must be an array", source, where);
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(list[i], source, fmt::format("{}.processors[{}]", where, i), templates);
    return;
  }
  fail("{}: post_processor type '{}' is not supported: frugal supports TemplateProcessing, "
       "ByteLevel and Sequences of them", source, type.empty() ? "(none)" : type);
}

void parse_model(const json& root, TokenizerState& state) {
  const std::string& source = state.source;
  const json& model = json_member(root, "model", source, "the top level");
  const std::string type = json_type(model, source, "model");
  FRUGAL_CHECK(type == "BPE" || (type.empty() && model.contains("merges")),
               "{}: model type '{}' is not supported: frugal reads byte-level BPE tokenizers only",
               source, type.empty() ? "(none)" : type);
  const json& dropout = member_or_null(model, "dropout");
  FRUGAL_CHECK(dropout.is_null() || (dropout.is_number() && dropout.get<double>() == 0.0),
               "{}: model.dropout {} is not supported (BPE dropout is for training only)", source,
               dropout.dump());
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json& v = member_or_null(model, key);
    FRUGAL_CHECK(v.is_null() || (v.is_string() && v.get<std::string>().empty()),
                 "{}: model.{} {} is not supported by byte-level BPE", source, key, v.dump());
  }
  BpeOptions options;
  const json& unk = member_or_null(model, "unk_token");
  FRUGAL_CHECK(unk.is_null() || unk.is_string(), "{}: model.unk_token must be a string or null", source);
  if (unk.is_string()) options.unk_token = unk.get<std::string>();
  options.fuse_unk = json_bool(model, "fuse_unk", false, source, "model");
  options.byte_fallback = json_bool(model, "byte_fallback", false, source, "model");
  options.ignore_merges = json_bool(model, "ignore_merges", false, source, "model");
  state.model_options = {{"dropout", dropout},
                         {"unk_token", unk},
                         {"continuing_subword_prefix", member_or_null(model, "continuing_subword_prefix")},
                         {"end_of_word_suffix", member_or_null(model, "end_of_word_suffix")},
                         {"fuse_unk", options.fuse_unk},
                         {"byte_fallback", options.byte_fallback},
                         {"ignore_merges", options.ignore_merges}};

  const json& vocab_json = json_member(model, "vocab", source, "model");
  FRUGAL_CHECK(vocab_json.is_object(), "{}: model.vocab must be an object of token: id", source);
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(vocab_json.size());
  for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
    FRUGAL_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                     it.value().get<int64_t>() < INT32_MAX,
                 "{}: model.vocab['{}'] must be a non-negative integer id", source, it.key());
    vocab.emplace_back(it.key(), it.value().get<int32_t>());
  }
  const json& merges_json = json_member(model, "merges", source, "model");
  FRUGAL_CHECK(merges_json.is_array(), "{}: model.merges must be an array", source);
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_json.size());
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const json& m = merges_json[i];
    if (m.is_string()) {
      const std::string line = m.get<std::string>();
      const size_t space = line.find(' ');
      FRUGAL_CHECK(space != std::string::npos && line.find(' ', space + 1) == std::string::npos,
                   "{}: model.merges[{}] '{}' must be two tokens separated by one space", source, i, line);
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    } else {
      FRUGAL_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                   "{}: model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", source, i);
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }
  state.model = BpeModel(std::move(vocab), merges, options, source);
}

std::vector<AddedToken> parse_added_tokens(const json& root, const std::string& source) {
  std::vector<AddedToken> tokens;
  const json& list = member_or_null(root, "added_tokens");
  if (list.is_null()) return tokens;
  FRUGAL_CHECK(list.is_array(), "{}: added_tokens must be an array", source);
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = fmt::format("added_tokens[{}]", i);
    const json& t = list[i];
    AddedToken token;
    const json& id = json_member(t, "id", source, where);
    FRUGAL_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < INT32_MAX,
                 "{}: {}.id must be a non-negative integer", source, where);
    token.id = id.get<int32_t>();
    token.content = json_string(t, "content", source, where);
    token.special = json_bool(t, "special", false, source, where);
    token.single_word = json_bool(t, "single_word", false, source, where);
    token.lstrip = json_bool(t, "lstrip", false, source, where);
    token.rstrip = json_bool(t, "rstrip", false, source, where);
    token.normalized = json_bool(t, "normalized", !token.special, source, where);
    tokens.push_back(std::move(token));
  }
  return tokens;
}

std::optional<SpecialTokenNames> parse_names(const json& root, const std::string& source) {
  const json& value = member_or_null(root, "frugal_special_tokens");
  if (value.is_null()) return std::nullopt;
  FRUGAL_CHECK(value.is_object(), "{}: frugal_special_tokens must be an object", source);
  SpecialTokenNames names;
  for (int r = 0; r < 8; ++r) {
    const auto role = static_cast<SpecialRole>(r);
    const json& name = member_or_null(value, special_role_name(role));
    FRUGAL_CHECK(name.is_null() || name.is_string(), "{}: frugal_special_tokens.{} must be a string",
                 source, special_role_name(role));
    if (name.is_string()) names[role] = name.get<std::string>();
  }
  return names;
}

// Usual spellings of each role, first match wins (after the template's BOS for kBos).
const std::vector<std::vector<std::string>>& known_spellings() {
  static const std::vector<std::vector<std::string>> spellings = {
      {"<｜begin▁of▁sentence｜>", "<|begin_of_text|>", "<|bos|>", "<bos>", "<s>", "<|startoftext|>"},
      {"<｜end▁of▁sentence｜>", "<|end_of_text|>", "<|endoftext|>", "<|eos|>", "<eos>", "</s>"},
      {"<｜▁pad▁｜>", "<|pad|>", "<pad>", "[PAD]"},
      {"<｜fim▁begin｜>", "<|fim_prefix|>", "<fim_prefix>"},
      {"<｜fim▁hole｜>", "<|fim_suffix|>", "<fim_suffix>"},
      {"<｜fim▁end｜>", "<|fim_middle|>", "<fim_middle>"},
      {"<｜User｜>", "<|user|>"},
      {"<｜Assistant｜>", "<|assistant|>"}};
  return spellings;
}

void put_u32(XXH64_state_t* h, uint64_t v) {
  const uint8_t bytes[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                            static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
  XXH64_update(h, bytes, 4);
}

void put_string(XXH64_state_t* h, std::string_view s) {
  put_u32(h, s.size());
  XXH64_update(h, s.data(), s.size());
}

uint64_t compute_hash(const TokenizerState& state) {
  XXH64_state_t* h = XXH64_createState();
  XXH64_reset(h, 0);
  XXH64_update(h, "frugal-bpe-v1", 13);
  put_u32(h, static_cast<uint64_t>(state.model.size()));
  for (int32_t id = 0; id < state.model.id_end(); ++id) {
    if (const std::string* token = state.model.id_to_token(id)) {
      put_u32(h, static_cast<uint64_t>(id));
      put_string(h, *token);
    }
  }
  put_u32(h, state.model.merges().size());
  for (const auto& [left, right] : state.model.merges()) {
    put_u32(h, static_cast<uint64_t>(left));
    put_u32(h, static_cast<uint64_t>(right));
  }
  const std::vector<AddedToken> added = state.added.tokens_by_id();
  put_u32(h, added.size());
  for (const AddedToken& t : added) {
    put_u32(h, static_cast<uint64_t>(t.id));
    put_string(h, t.content);
    put_u32(h, (t.single_word ? 1u : 0u) | (t.lstrip ? 2u : 0u) | (t.rstrip ? 4u : 0u) |
                   (t.normalized ? 8u : 0u) | (t.special ? 16u : 0u));
  }
  const json pipeline = {{"normalizer", state.normalizer_json},
                         {"pre_tokenizer", state.pre_tokenizer_json},
                         {"post_processor", state.post_processor_json},
                         {"decoder", state.decoder_json},
                         {"model", state.model_options}};
  put_string(h, pipeline.dump());
  const uint64_t digest = XXH64_digest(h);
  XXH64_freeState(h);
  return digest;
}

std::string quote(std::string_view s) { return json(std::string(s)).dump(); }

}  // namespace

void finish_state(TokenizerState& state, const std::optional<SpecialTokenNames>& names) {
  int64_t id_end = state.model.id_end();
  for (const AddedToken& t : state.added.tokens_by_id()) id_end = std::max<int64_t>(id_end, t.id + 1);
  state.id_end = id_end;
  state.token_of_id.assign(static_cast<size_t>(id_end), std::string());
  state.decoded_bytes.assign(static_cast<size_t>(id_end), std::string());
  state.has_id.assign(static_cast<size_t>(id_end), 0);
  state.special.assign(static_cast<size_t>(id_end), 0);
  for (int32_t id = 0; id < id_end; ++id) {
    const AddedToken* added = state.added.find_id(id);
    const std::string* token = added ? &added->content : state.model.id_to_token(id);
    if (token == nullptr) continue;
    state.has_id[id] = 1;
    state.token_of_id[id] = *token;
    if (!state.byte_level_decoder || !byte_level_to_bytes(*token, state.decoded_bytes[id]))
      state.decoded_bytes[id] = *token;
    state.special[id] = state.added.is_special_content(*token) ? 1 : 0;
  }
  const auto lookup = [&](const std::string& token) -> std::optional<int32_t> {
    if (auto id = state.added.find_content(token)) return id;
    return state.model.token_to_id(token);
  };
  if (names) {
    state.names = *names;
    for (int r = 0; r < 8; ++r) {
      const std::string& name = state.names[static_cast<SpecialRole>(r)];
      if (name.empty()) continue;
      FRUGAL_CHECK(lookup(name).has_value(), "{}: special token '{}' ({}) is not in the vocabulary",
                   state.source, name, special_role_name(static_cast<SpecialRole>(r)));
    }
  } else {
    state.names = SpecialTokenNames();
    if (!state.templates.empty()) {
      for (const TemplateItem& item : state.templates.front()) {
        if (item.sequence >= 0) break;
        if (!item.ids.empty() && item.ids[0] < id_end && state.has_id[item.ids[0]]) {
          state.names.bos = state.token_of_id[item.ids[0]];
          break;
        }
      }
    }
    for (int r = 0; r < 8; ++r) {
      std::string& name = state.names[static_cast<SpecialRole>(r)];
      if (!name.empty()) continue;
      for (const std::string& candidate : known_spellings()[r]) {
        if (lookup(candidate)) {
          name = candidate;
          break;
        }
      }
    }
  }
  for (int r = 0; r < 8; ++r) {
    const std::string& name = state.names[static_cast<SpecialRole>(r)];
    state.role_ids[r] = name.empty() ? std::nullopt : lookup(name);
  }
  state.hash = compute_hash(state);
  static std::atomic<uint64_t> next_instance{1};
  state.instance = next_instance.fetch_add(1);
}

std::shared_ptr<TokenizerState> build_state(const json& root, const std::string& source) {
  auto state = std::make_shared<TokenizerState>();
  state->source = source;
  FRUGAL_CHECK(root.is_object(), "{}: a tokenizer.json must hold a JSON object", source);
  try {
    state->truncation = member_or_null(root, "truncation");
    state->padding = member_or_null(root, "padding");
    state->normalizer_json = member_or_null(root, "normalizer");
    state->nfc = parse_normalizer(state->normalizer_json, source, "normalizer");
    state->pre_tokenizer_json = member_or_null(root, "pre_tokenizer");
    state->pre_tokenizer = std::make_shared<PreTokenizer>(
        PreTokenizerConfig::from_json(state->pre_tokenizer_json, source), source);
    state->post_processor_json = member_or_null(root, "post_processor");
    parse_post_processor(state->post_processor_json, source, "post_processor", state->templates);
    state->decoder_json = member_or_null(root, "decoder");
    if (state->decoder_json.is_null()) {
      state->byte_level_decoder = false;
    } else {
      const std::string type = json_type(state->decoder_json, source, "decoder");
      FRUGAL_CHECK(type == "ByteLevel", "{}: decoder type '{}' is not supported: frugal supports "
                   "the ByteLevel decoder", source, type.empty() ? "(none)" : type);
    }
    parse_model(root, *state);
    const bool nfc_on = state->nfc;
    state->added.build(parse_added_tokens(root, source),
                       [nfc_on](std::string_view s) { return nfc_on ? nfc(s) : std::string(s); },
                       source);
    finish_state(*state, parse_names(root, source));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid tokenizer.json: {}", source, e.what());
  }
  return state;
}

std::string write_json(const TokenizerState& state) {
  std::string out;
  out.reserve(static_cast<size_t>(state.id_end) * 24 + state.model.merges().size() * 24 + 4096);
  const auto section = [&](const char* key, const json& value, bool last = false) {
    out += "  \"";
    out += key;
    out += "\": ";
    out += value.dump();
    out += last ? "\n" : ",\n";
  };
  out += "{\n  \"version\": \"1.0\",\n";
  section("truncation", state.truncation);
  section("padding", state.padding);
  out += "  \"added_tokens\": [";
  const std::vector<AddedToken> added = state.added.tokens_by_id();
  for (size_t i = 0; i < added.size(); ++i) {
    const AddedToken& t = added[i];
    out += i ? ",\n    " : "\n    ";
    out += fmt::format(
        "{{\"id\": {}, \"content\": {}, \"single_word\": {}, \"lstrip\": {}, \"rstrip\": {}, "
        "\"normalized\": {}, \"special\": {}}}",
        t.id, quote(t.content), t.single_word, t.lstrip, t.rstrip, t.normalized, t.special);
  }
  out += added.empty() ? "],\n" : "\n  ],\n";
  section("normalizer", state.normalizer_json);
  section("pre_tokenizer", state.pre_tokenizer_json);
  section("post_processor", state.post_processor_json);
  section("decoder", state.decoder_json);
  out += "  \"model\": {\n    \"type\": \"BPE\",\n";
  for (const char* key : {"dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                          "fuse_unk", "byte_fallback", "ignore_merges"})
    out += fmt::format("    \"{}\": {},\n", key, state.model_options.at(key).dump());
  out += "    \"vocab\": {";
  bool first = true;
  for (int32_t id = 0; id < state.model.id_end(); ++id) {
    const std::string* token = state.model.id_to_token(id);
    if (token == nullptr) continue;
    out += first ? "\n      " : ",\n      ";
    first = false;
    out += quote(*token);
    out += ": ";
    out += std::to_string(id);
  }
  out += "\n    },\n    \"merges\": [";
  first = true;
  for (const auto& [left, right] : state.model.merges()) {
    out += first ? "\n      [" : ",\n      [";
    first = false;
    out += quote(*state.model.id_to_token(left));
    out += ", ";
    out += quote(*state.model.id_to_token(right));
    out += "]";
  }
  out += "\n    ]\n  },\n";
  json names = json::object();
  for (int r = 0; r < 8; ++r) {
    const std::string& name = state.names[static_cast<SpecialRole>(r)];
    if (!name.empty()) names[std::string(special_role_name(static_cast<SpecialRole>(r)))] = name;
  }
  section("frugal_special_tokens", names, /*last=*/true);
  out += "}\n";
  return out;
}

}  // namespace frugal::tok
