// Byte-level BPE tokenizer: hand-made tokenizer.json files with ids derived by hand (merge order,
// GPT-2 pre-tokenization, Split behaviors, DeepSeek-shaped splits, added tokens with single_word /
// lstrip / rstrip / normalized, templates), decoding, save/load and hash stability, invalid UTF-8,
// rejected files with clear errors, cache and multi-thread invariance, and real-text round trips.
#include <gtest/gtest.h>

#include <random>

#include "data/tokenizer/nfc.h"
#include "data/tokenizer/pre_tokenizer.h"
#include "data/tokenizer/regex.h"
#include "io/text_file.h"
#include "tokenizer_test_util.h"

namespace frugal {
namespace {

using test::added_token;
using test::byte_vocab_json;
using test::gpt2_pre_tokenizer;
using test::TempDir;
using test::write_text;
using Ids = std::vector<int32_t>;

// A complete hand-written tokenizer.json: 16 model tokens, 7 merges, two added special tokens and
// a template that adds <s>.
constexpr const char* kHandMade = R"({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 16, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 17, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [17], "tokens": ["<s>"]}}},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
    "vocab": {"h": 0, "e": 1, "l": 2, "o": 3, "Ġ": 4, "w": 5, "r": 6, "d": 7, "he": 8, "ll": 9,
              "hell": 10, "hello": 11, "Ġw": 12, "or": 13, "Ġwor": 14, "!": 15},
    "merges": [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], ["Ġ", "w"], ["o", "r"], ["Ġw", "or"]]}
})";

Tokenizer load_hand_made(const TempDir& dir) {
  const std::string path = dir.file("hand.tokenizer.json");
  write_text(path, kHandMade);
  return Tokenizer::from_file(path);
}

TEST(Tokenizer, HandMadeMergeOrder) {
  TempDir dir;
  const Tokenizer tokenizer = load_hand_made(dir);
  // "hello": he, ll (ranks 0, 1), then he+ll, hell+o. " world": Ġw and or, then Ġw+or; l, d stay.
  EXPECT_EQ(tokenizer.encode("hello world!"), (Ids{11, 14, 2, 7, 15}));
  // "lll": the leftmost (l, l) merges first; the second candidate is then stale.
  EXPECT_EQ(tokenizer.encode("lll"), (Ids{9, 2}));
  // Characters missing from the vocabulary (no unk_token) are dropped, as tokenizers does.
  EXPECT_EQ(tokenizer.encode("hex"), (Ids{8}));
  EXPECT_EQ(tokenizer.encode("hello<|endoftext|> world"), (Ids{11, 16, 14, 2, 7}));
  EXPECT_EQ(tokenizer.encode("hello", /*add_special_tokens=*/true), (Ids{17, 11}));
  EXPECT_EQ(tokenizer.encode("", true), (Ids{17}));
  EXPECT_EQ(tokenizer.vocab_size(), 18);
  EXPECT_EQ(tokenizer.merge_count(), 7);
  EXPECT_EQ(tokenizer.token_to_id("Ġwor"), 14);
  EXPECT_EQ(tokenizer.token_to_id("<s>"), 17);
  EXPECT_EQ(tokenizer.id_to_token(12), "Ġw");
  EXPECT_FALSE(tokenizer.id_to_token(18).has_value());
  EXPECT_EQ(tokenizer.bos_id(), 17);  // the template's leading special token
  EXPECT_EQ(tokenizer.eos_id(), 16);  // "<|endoftext|>" by its usual spelling
}

TEST(Tokenizer, HandMadeDecode) {
  TempDir dir;
  const Tokenizer tokenizer = load_hand_made(dir);
  EXPECT_EQ(tokenizer.decode(Ids{11, 14, 2, 7, 15}), "hello world!");
  EXPECT_EQ(tokenizer.decode(Ids{17, 11, 16}), "<s>hello<|endoftext|>");
  EXPECT_EQ(tokenizer.decode(Ids{17, 11, 16}, /*skip_special_tokens=*/true), "hello");
  EXPECT_EQ(tokenizer.decode(Ids{11, 999, 15}), "hello!");  // unknown ids are skipped
  EXPECT_THROW(tokenizer.decode(Ids{-1}), Error);
}

TEST(Tokenizer, GptPreTokenizationAndMerges) {
  const Tokenizer tokenizer = Tokenizer::from_json(
      byte_vocab_json({{"t", "h"}, {"th", "e"}, {" ", "the"}}, gpt2_pre_tokenizer()), "bytes");
  // 256 "th", 257 "the", 258 " the".
  EXPECT_EQ(tokenizer.encode("the theme"), (Ids{257, 258, 'm', 'e'}));
  EXPECT_EQ(tokenizer.pre_tokenize("I'll  see 42 cats!!\n\n  ok"),
            (std::vector<std::string>{"I", "'ll", " ", " see", " 42", " cats", "!!", "\n\n ", " ok"}));
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("the theme")), "the theme");
}

TEST(Tokenizer, AddPrefixSpaceAppliesToEachPiece) {
  nlohmann::json pre = gpt2_pre_tokenizer();
  pre["add_prefix_space"] = true;
  nlohmann::json json = byte_vocab_json({}, pre);
  json["added_tokens"].push_back(added_token(256, "<x>", true));
  const Tokenizer tokenizer = Tokenizer::from_json(json, "prefix");
  // Both pieces around the added token get a leading space; a piece already starting with one
  // does not get another.
  EXPECT_EQ(tokenizer.encode("a<x>b"), (Ids{' ', 'a', 256, ' ', 'b'}));
  EXPECT_EQ(tokenizer.encode(" a"), (Ids{' ', 'a'}));
}

nlohmann::json split_pre_tokenizer(const std::string& behavior, bool invert) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
}

TEST(Tokenizer, SplitBehaviors) {
  using Pieces = std::vector<std::string>;
  const std::string text = "the-final--word-";
  const auto pieces = [&](const std::string& behavior, bool invert) {
    return Tokenizer::from_json(byte_vocab_json({}, split_pre_tokenizer(behavior, invert)), behavior)
        .pre_tokenize(text);
  };
  EXPECT_EQ(pieces("Removed", false), (Pieces{"the", "final", "word"}));
  EXPECT_EQ(pieces("Isolated", false), (Pieces{"the", "-", "final", "-", "-", "word", "-"}));
  EXPECT_EQ(pieces("MergedWithPrevious", false), (Pieces{"the-", "final-", "-", "word-"}));
  EXPECT_EQ(pieces("MergedWithNext", false), (Pieces{"the", "-final", "-", "-word", "-"}));
  EXPECT_EQ(pieces("Contiguous", false), (Pieces{"the", "-", "final", "--", "word", "-"}));
  EXPECT_EQ(pieces("Removed", true), (Pieces{"-", "-", "-", "-"}));
}

TEST(Tokenizer, DeepSeekShapedSplits) {
  const nlohmann::json pre = tok::PreTokenizerConfig::deepseek_v3().to_json();
  const Tokenizer tokenizer = Tokenizer::from_json(byte_vocab_json({}, pre), "deepseek");
  using Pieces = std::vector<std::string>;
  // Digits in groups of at most 3, CJK runs, letters with one leading non-letter, punctuation with
  // trailing newlines, white space.
  EXPECT_EQ(tokenizer.pre_tokenize("abc 12345 你好世界!\n\nx"),
            (Pieces{"abc", " ", "123", "45", " ", "你好世界", "!\n\n", "x"}));
  EXPECT_EQ(tokenizer.pre_tokenize("I'm (ok).Done"), (Pieces{"I", "'m", " (", "ok", ").", "Done"}));
  EXPECT_EQ(tokenizer.pre_tokenize("カタカナとひらがな"), (Pieces{"カタカナとひらがな"}));
  EXPECT_EQ(tokenizer.pre_tokenize("a\t\tb  \n c"), (Pieces{"a", "\t", "\tb", "  \n", " c"}));
  // Byte level without regex: every byte of a piece is a symbol, so the ids are the bytes.
  const std::string text = "Ünïcödé 2024";
  Ids expected;
  for (char c : text) expected.push_back(static_cast<uint8_t>(c));
  EXPECT_EQ(tokenizer.encode(text), expected);
  EXPECT_EQ(tokenizer.decode(expected), text);
  // DeepSeek-V3's file has an empty normalizer Sequence: no normalization.
  nlohmann::json json = byte_vocab_json({}, pre);
  json["normalizer"] = {{"type", "Sequence"}, {"normalizers", nlohmann::json::array()}};
  const Tokenizer empty_sequence = Tokenizer::from_json(json, "deepseek normalizer");
  EXPECT_EQ(empty_sequence.encode("e\xCC\x81"), (Ids{'e', 0xCC, 0x81}));
}

TEST(Tokenizer, AddedTokenSingleWordAndStrip) {
  nlohmann::json json = byte_vocab_json({}, gpt2_pre_tokenizer());
  json["added_tokens"] = {added_token(300, "ab", false, /*single_word=*/true),
                          added_token(301, "<m>", true, false, /*lstrip=*/true, /*rstrip=*/true),
                          added_token(302, "<mask>", true)};
  const Tokenizer tokenizer = Tokenizer::from_json(json, "added");
  // "ab" inside "cab" touches a word character: it stays text.
  EXPECT_EQ(tokenizer.encode("ab cab ab"), (Ids{300, ' ', 'c', 'a', 'b', ' ', 300}));
  // lstrip/rstrip absorb the white space around <m>.
  EXPECT_EQ(tokenizer.encode("a  <m>  b"), (Ids{'a', 301, 'b'}));
  // Leftmost-longest: "<mask>" wins over "<m>" only where it matches in full.
  EXPECT_EQ(tokenizer.encode("<mask><m>"), (Ids{302, 301}));
  EXPECT_EQ(tokenizer.decode(Ids{'a', 301, 'b'}), "a<m>b");
}

TEST(Tokenizer, NormalizedAddedTokenAndNfc) {
  nlohmann::json json = byte_vocab_json({}, gpt2_pre_tokenizer());
  json["normalizer"] = {{"type", "NFC"}};
  json["added_tokens"] = {added_token(300, "\xC3\xA9", false, false, false, false, /*normalized=*/true)};
  const Tokenizer nfc = Tokenizer::from_json(json, "nfc");
  // "e" + U+0301 normalizes to U+00E9, which the normalized added token then matches.
  EXPECT_EQ(nfc.encode("e\xCC\x81"), (Ids{300}));
  json["added_tokens"][0]["normalized"] = false;
  const Tokenizer raw = Tokenizer::from_json(json, "raw");
  EXPECT_EQ(raw.encode("e\xCC\x81"), (Ids{0xC3, 0xA9}));  // NFC'd text, but no raw match
  EXPECT_EQ(tok::nfc("e\xCC\x81"), "\xC3\xA9");
  EXPECT_EQ(tok::nfc("\xEA\xB0\x80"), "\xEA\xB0\x80");              // Hangul syllable stays
  EXPECT_EQ(tok::nfc("\xE1\x84\x80\xE1\x85\xA1"), "\xEA\xB0\x80");  // L + V jamo compose
  // Canonical ordering: dot below (220) before acute (230), then composition with the base.
  EXPECT_EQ(tok::nfc("a\xCC\x81\xCC\xA3"), "\xE1\xBA\xA1\xCC\x81");
  EXPECT_TRUE(tok::nfc_quick_check("plain text 你好"));
}

TEST(Tokenizer, InvalidUtf8IsReplacedByU_FFFD) {
  // Python: bytes.decode("utf-8", "replace") gives one U+FFFD per maximal ill-formed subpart.
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(tok::sanitize_utf8("\xE2\x82x"), r + "x");
  EXPECT_EQ(tok::sanitize_utf8("\xF0\x9F\x98"), r);
  EXPECT_EQ(tok::sanitize_utf8("\xED\xA0\x80"), r + r + r);
  EXPECT_EQ(tok::sanitize_utf8("ab\xFF\xFE" "cd"), "ab" + r + r + "cd");
  EXPECT_EQ(tok::sanitize_utf8("\xE0\x80\xAF"), r + r + r);
  EXPECT_EQ(tok::sanitize_utf8("\xF4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(tok::sanitize_utf8("\xF0\x9F\x98\x80\x80"), "\xF0\x9F\x98\x80" + r);
  const Tokenizer tokenizer = Tokenizer::from_json(byte_vocab_json({}, gpt2_pre_tokenizer()), "utf8");
  EXPECT_EQ(tokenizer.encode("ab\xFF\xFE" "cd\xC3"), tokenizer.encode("ab" + r + r + "cd" + r));
  // Decoding bytes that do not form UTF-8 gives U+FFFD too.
  EXPECT_EQ(tokenizer.decode(Ids{'a', 0xC3}), "a" + r);
}

TEST(Tokenizer, SaveLoadRoundTripAndHash) {
  TempDir dir;
  const Tokenizer original = load_hand_made(dir);
  const std::string path = dir.file("saved.tokenizer.json");
  original.save(path);
  const Tokenizer reloaded = Tokenizer::from_file(path);
  EXPECT_EQ(reloaded.hash(), original.hash());
  EXPECT_EQ(reloaded.to_json_string(), original.to_json_string());
  for (const char* text : {"hello world!", "hello<|endoftext|> world", "lll"}) {
    EXPECT_EQ(reloaded.encode(text, true), original.encode(text, true)) << text;
  }
  // A different merge list (or vocabulary, or pipeline) changes the hash.
  nlohmann::json json = nlohmann::json::parse(kHandMade);
  json["model"]["merges"].erase(json["model"]["merges"].end() - 1);
  EXPECT_NE(Tokenizer::from_json(json, "fewer merges").hash(), original.hash());
  json = nlohmann::json::parse(kHandMade);
  json["pre_tokenizer"]["use_regex"] = false;
  EXPECT_NE(Tokenizer::from_json(json, "no regex").hash(), original.hash());
  // Roles are saved with the file.
  SpecialTokenNames names;
  names.bos = "<s>";
  names.eos = "<s>";
  names.pad = "<|endoftext|>";
  const Tokenizer renamed = original.with_special_names(names);
  renamed.save(path);
  EXPECT_EQ(Tokenizer::from_file(path).pad_id(), 16);
  EXPECT_EQ(Tokenizer::from_file(path).eos_id(), 17);
  EXPECT_EQ(renamed.hash(), original.hash());
}

void expect_error(const std::string& json_text, const std::vector<std::string>& fragments) {
  TempDir dir;
  const std::string path = dir.file("bad.tokenizer.json");
  write_text(path, json_text);
  try {
    Tokenizer::from_file(path);
    ADD_FAILURE() << "no error for " << json_text.substr(0, 80);
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    for (const std::string& fragment : fragments)
      EXPECT_NE(message.find(fragment), std::string::npos) << "'" << fragment << "' not in: " << message;
  }
}

TEST(Tokenizer, RejectsUnsupportedAndMalformedFiles) {
  const auto with = [](const std::string& key, const nlohmann::json& value) {
    nlohmann::json json = byte_vocab_json({}, gpt2_pre_tokenizer());
    json[key] = value;
    return json.dump();
  };
  expect_error(with("model", {{"type", "WordPiece"}, {"vocab", {{"a", 0}}}, {"unk_token", "[UNK]"}}),
               {"model type 'WordPiece'", "not supported"});
  expect_error(with("model", {{"type", "Unigram"}, {"vocab", nlohmann::json::array()}}),
               {"model type 'Unigram'"});
  expect_error(with("pre_tokenizer", {{"type", "Whitespace"}}), {"pre_tokenizer type 'Whitespace'"});
  expect_error(with("pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}}}}}),
               {"pre_tokenizer type 'Digits'"});
  expect_error(with("normalizer", {{"type", "Lowercase"}}), {"normalizer type 'Lowercase'"});
  expect_error(with("normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}}}}),
               {"normalizer type 'NFKC'"});
  expect_error(with("decoder", {{"type", "WordPiece"}}), {"decoder type 'WordPiece'"});
  expect_error(with("post_processor", {{"type", "RobertaProcessing"}}),
               {"post_processor type 'RobertaProcessing'"});
  expect_error(with("pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "a"}}},
                                      {"behavior", "Isolated"}, {"invert", false}}),
               {"no ByteLevel"});
  expect_error("{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\", ", {"malformed JSON"});
  expect_error("[1, 2, 3]", {"JSON object"});
  nlohmann::json json = byte_vocab_json({}, gpt2_pre_tokenizer());
  json["model"]["merges"].push_back("a zz");
  expect_error(json.dump(), {"merges[0]", "'zz'"});
  json = byte_vocab_json({}, gpt2_pre_tokenizer());
  json["model"]["vocab"]["dup"] = 5;
  expect_error(json.dump(), {"id 5"});
  json = byte_vocab_json({}, gpt2_pre_tokenizer());
  json["pre_tokenizer"] = {{"type", "Sequence"},
                           {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                                               {"behavior", "Isolated"}, {"invert", false}},
                                              gpt2_pre_tokenizer()}}};
  expect_error(json.dump(), {"cannot compile regex '(unclosed'"});
  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), Error);
}

TEST(Tokenizer, OnigurumaTranslation) {
  EXPECT_EQ(tok::Regex::translate_oniguruma(R"(\s+(?!\S))"),
            R"([\x{09}-\x{0D}\x{85}\p{Zs}\p{Zl}\p{Zp}]+(?![^\x{09}-\x{0D}\x{85}\p{Zs}\p{Zl}\p{Zp}]))");
  EXPECT_EQ(tok::Regex::translate_oniguruma(R"([^\s\p{L}])"),
            R"([^\x{09}-\x{0D}\x{85}\p{Zs}\p{Zl}\p{Zp}\p{L}])");
  EXPECT_EQ(tok::Regex::translate_oniguruma(R"(\u3040[a[bc]])"), R"(\x{3040}[abc])");
  const tok::Regex space(R"(\s+)", "test");
  std::vector<std::pair<uint32_t, uint32_t>> matches;
  space.find_all("a\xE1\xA0\x8E" "b \xC2\xA0" "c", matches);  // U+180E is not \s; NBSP is
  ASSERT_EQ(matches.size(), 1u);
  EXPECT_EQ(matches[0], (std::pair<uint32_t, uint32_t>{5, 8}));
  matches.clear();
  const tok::Regex empty("x*", "test");
  empty.find_all("axxb", matches);  // onig find_iter: empty matches, none right after a match
  EXPECT_EQ(matches, (std::vector<std::pair<uint32_t, uint32_t>>{{0, 0}, {1, 3}, {4, 4}}));
}

std::vector<std::string> varied_documents(size_t count) {
  std::mt19937 rng(7);
  const std::vector<std::string> words = {"the", "cat", "sat", " ", "\n", "on", "mat", "42", "1999",
                                          "naïve", "日本語", "<|endoftext|>", "!!", "\t", "emoji 😀",
                                          "don't", "THE", "x\xFFy"};
  std::vector<std::string> docs(count);
  for (std::string& doc : docs) {
    const size_t n = 5 + rng() % 200;
    for (size_t i = 0; i < n; ++i) {
      doc += words[rng() % words.size()];
      if (rng() % 3) doc += ' ';
    }
  }
  return docs;
}

Tokenizer small_merges_tokenizer() {
  nlohmann::json json = byte_vocab_json(
      {{"t", "h"}, {"th", "e"}, {" ", "the"}, {"a", "t"}, {" ", "c"}, {" c", "at"}, {"1", "9"}},
      tok::PreTokenizerConfig::deepseek_v3().to_json());
  json["added_tokens"].push_back(added_token(400, "<|endoftext|>", true));
  return Tokenizer::from_json(json, "merges");
}

TEST(Tokenizer, CacheDoesNotChangeResults) {
  const std::vector<std::string> docs = varied_documents(200);
  Tokenizer cached = small_merges_tokenizer();
  Tokenizer uncached = cached;
  uncached.set_cache_capacity(0);
  Tokenizer tiny = cached;
  tiny.set_cache_capacity(3);  // evicts constantly
  for (const std::string& doc : docs) {
    const Ids reference = uncached.encode(doc, true);
    EXPECT_EQ(cached.encode(doc, true), reference);
    EXPECT_EQ(cached.encode(doc, true), reference);  // second pass hits the cache
    EXPECT_EQ(tiny.encode(doc, true), reference);
  }
}

TEST(Tokenizer, MultiThreadEqualsSingleThread) {
  const std::vector<std::string> docs = varied_documents(300);
  const Tokenizer tokenizer = small_merges_tokenizer();
  const auto one = tokenizer.encode_batch(std::span<const std::string>(docs), false, 1);
  ASSERT_EQ(one.size(), docs.size());
  for (size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(one[i], tokenizer.encode(docs[i]));
  EXPECT_EQ(tokenizer.encode_batch(docs, false, 2), one);
  EXPECT_EQ(tokenizer.encode_batch(std::span<const std::string>(docs), false, 4), one);
}

TEST(Tokenizer, RealTextRoundTrip) {
  const std::string data = test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data not found: real-text round trip skipped";
  const Tokenizer tokenizer = small_merges_tokenizer();
  for (const char* name : {"tinyshakespeare.txt.zst", "zh_modern_sample.txt.zst"}) {
    std::string text = read_text_file(data + "/" + name);
    text.resize(std::min<size_t>(text.size(), 400000));
    text = tok::sanitize_utf8(text);  // the cut may split a character
    const Ids ids = tokenizer.encode(text);
    EXPECT_EQ(tokenizer.decode(ids), text) << name;
    EXPECT_LT(ids.size(), text.size()) << name;  // the merges apply
  }
}

}  // namespace
}  // namespace frugal
