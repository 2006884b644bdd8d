// BPE training: the merges of tokenizers' BpeTrainer on its own unit-test corpus (derived by hand:
// highest count first, ties to the smaller id pair), special tokens first, determinism across runs
// and thread counts, save/load of the result, max_token_length, and that trained merges reduce
// tokens per byte on held-out text (synthetic, and real text when ../shared/data exists).
#include <gtest/gtest.h>

#include <random>

#include "data/tokenizer/bpe_trainer.h"
#include "io/text_file.h"
#include "tokenizer_test_util.h"

namespace frugal {
namespace {

using Ids = std::vector<int32_t>;

// Pre-tokenizer that only splits on spaces (no GPT-2 regex): the words are exactly the
// space-separated strings.
tok::PreTokenizerConfig space_split() {
  tok::PreTokenizerConfig config;
  config.splits.push_back({" ", false, tok::SplitBehavior::kRemoved, false});
  config.byte_level = {false, true, false};
  return config;
}

BpeTrainOptions plain_options(int64_t vocab_size) {
  BpeTrainOptions options;
  options.vocab_size = vocab_size;
  options.special_tokens.clear();
  options.roles = SpecialTokenNames();
  options.pre_tokenizer = space_split();
  options.threads = 1;
  return options;
}

// The merges of a tokenizer as (left, right) token strings.
std::vector<std::pair<std::string, std::string>> merges_of(const Tokenizer& tokenizer) {
  const nlohmann::json json = nlohmann::json::parse(tokenizer.to_json_string());
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& m : json["model"]["merges"]) out.emplace_back(m[0], m[1]);
  return out;
}

TEST(TokenizerTrain, MatchesBpeTrainerUnitTestMerges) {
  // tokenizers' trainer.rs test corpus: roses, are x2, red, voilets, blue, BERT, is x2, big, and,
  // so, GPT-2; min_frequency 2. Pair counts: (r,e) 3 ("are" x2 + "red"); then (a,re) 2 and (i,s)
  // 2 tie and the smaller pair ('a' < 'i') goes first; every other pair is seen once.
  const std::vector<std::string> docs = {"roses are are red voilets blue BERT", "is is big and so GPT-2"};
  BpeTrainOptions options = plain_options(1000);
  options.min_frequency = 2;
  const Tokenizer tokenizer = train_bpe(std::span<const std::string>(docs), options);
  const std::vector<std::pair<std::string, std::string>> expected = {{"r", "e"}, {"a", "re"}, {"i", "s"}};
  EXPECT_EQ(merges_of(tokenizer), expected);
  EXPECT_EQ(tokenizer.vocab_size(), 256 + 3);
  // The alphabet is ordered by code point of the byte-level character: '!' is id 0, 'Ā' (byte 0)
  // comes after 'ÿ'.
  EXPECT_EQ(tokenizer.token_to_id("!"), 0);
  EXPECT_EQ(tokenizer.token_to_id("ÿ"), 187);
  EXPECT_EQ(tokenizer.token_to_id("Ā"), 188);
  EXPECT_EQ(tokenizer.token_to_id("are"), 257);
  EXPECT_EQ(tokenizer.encode("are is"), (Ids{257, 258}));  // the space is removed by the split
}

TEST(TokenizerTrain, TieBreakAndVocabularyLimit) {
  // "ab" x3 and "cd" x3 tie at 3: (a, b) is the smaller pair. vocab_size 257 allows one merge.
  const std::vector<std::string> docs = {"cd ab cd ab cd ab"};
  const Tokenizer one = train_bpe(std::span<const std::string>(docs), plain_options(257));
  EXPECT_EQ(merges_of(one), (std::vector<std::pair<std::string, std::string>>{{"a", "b"}}));
  const Tokenizer two = train_bpe(std::span<const std::string>(docs), plain_options(300));
  EXPECT_EQ(merges_of(two), (std::vector<std::pair<std::string, std::string>>{{"a", "b"}, {"c", "d"}}));
}

TEST(TokenizerTrain, OverlappingPairsCountedLikeTokenizers) {
  // "aaaa": (a,a) counts 3; merging left to right gives "aa aa", then (aa,aa) -> "aaaa".
  const std::vector<std::string> docs = {"aaaa aaaa"};
  const Tokenizer tokenizer = train_bpe(std::span<const std::string>(docs), plain_options(300));
  EXPECT_EQ(merges_of(tokenizer),
            (std::vector<std::pair<std::string, std::string>>{{"a", "a"}, {"aa", "aa"}}));
  EXPECT_EQ(tokenizer.encode("aaaaaa"), (Ids{257, 256}));
}

TEST(TokenizerTrain, MaxTokenLength) {
  const std::vector<std::string> docs = {"abcdef abcdef abcdef abcdef"};
  BpeTrainOptions options = plain_options(300);
  options.max_token_length = 3;
  const Tokenizer tokenizer = train_bpe(std::span<const std::string>(docs), options);
  for (const auto& [a, b] : merges_of(tokenizer)) EXPECT_LE((a + b).size(), 3u) << a << b;
  EXPECT_GT(tokenizer.merge_count(), 0);
}

std::vector<std::string> synthetic_corpus(size_t documents, uint32_t seed) {
  std::mt19937 rng(seed);
  const std::vector<std::string> words = {"the", "quick", "brown", "fox", "jumps", "over", "lazy",
                                          "dog", "and", "then", "runs", "away", "into", "forest",
                                          "1234", "çà", "北京", "again", "!", ",", "\n"};
  std::vector<std::string> docs(documents);
  for (std::string& doc : docs) {
    const size_t n = 20 + rng() % 100;
    for (size_t i = 0; i < n; ++i) {
      // Zipf-like: early words are more frequent.
      const size_t k = std::min<size_t>(words.size() - 1, (rng() % words.size()) * (rng() % 3) / 2);
      doc += words[k];
      doc += ' ';
    }
  }
  return docs;
}

TEST(TokenizerTrain, DeterministicAcrossRunsAndThreads) {
  const std::vector<std::string> docs = synthetic_corpus(400, 1);
  BpeTrainOptions options;  // DeepSeek pre-tokenizer and special tokens
  options.vocab_size = 330;
  options.threads = 1;
  const Tokenizer a = train_bpe(std::span<const std::string>(docs), options);
  const Tokenizer b = train_bpe(std::span<const std::string>(docs), options);
  options.threads = 3;
  const Tokenizer c = train_bpe(std::span<const std::string>(docs), options);
  EXPECT_EQ(a.to_json_string(), b.to_json_string());
  EXPECT_EQ(a.to_json_string(), c.to_json_string());
  EXPECT_EQ(a.hash(), c.hash());
  EXPECT_EQ(a.vocab_size(), 330);
}

TEST(TokenizerTrain, SpecialTokensFirstAndSavedRoundTrip) {
  const std::vector<std::string> docs = synthetic_corpus(200, 2);
  BpeTrainOptions options;
  options.vocab_size = 350;
  const Tokenizer tokenizer = train_bpe(std::span<const std::string>(docs), options);
  const SpecialTokenNames names = SpecialTokenNames::deepseek();
  const std::vector<std::string> specials = names.list();
  for (size_t i = 0; i < specials.size(); ++i)
    EXPECT_EQ(tokenizer.token_to_id(specials[i]), static_cast<int32_t>(i)) << specials[i];
  EXPECT_EQ(tokenizer.bos_id(), 0);
  EXPECT_EQ(tokenizer.eos_id(), 1);
  EXPECT_EQ(tokenizer.pad_id(), 2);
  EXPECT_EQ(tokenizer.special_id(SpecialRole::kFimHole), 4);
  EXPECT_EQ(tokenizer.special_id(SpecialRole::kAssistant), 7);
  const std::string text = "the fox<｜end▁of▁sentence｜>北京 1234";
  const Ids ids = tokenizer.encode(text, /*add_special_tokens=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 0);  // BOS from the template
  EXPECT_NE(std::find(ids.begin(), ids.end(), 1), ids.end());  // the EOS inside the text
  EXPECT_EQ(tokenizer.decode(ids, /*skip_special_tokens=*/true), "the fox北京 1234");
  EXPECT_EQ(tokenizer.decode(ids), "<｜begin▁of▁sentence｜>" + text);

  test::TempDir dir;
  const std::string path = dir.file("trained.tokenizer.json");
  tokenizer.save(path);
  const Tokenizer reloaded = Tokenizer::from_file(path);
  EXPECT_EQ(reloaded.hash(), tokenizer.hash());
  EXPECT_EQ(reloaded.encode(text, true), ids);
  EXPECT_EQ(reloaded.special_id(SpecialRole::kFimEnd), 5);
}

double bytes_per_token(const Tokenizer& tokenizer, const std::vector<std::string>& docs) {
  size_t bytes = 0, tokens = 0;
  for (const std::string& doc : docs) {
    bytes += doc.size();
    tokens += tokenizer.encode(doc).size();
  }
  return static_cast<double>(bytes) / static_cast<double>(tokens);
}

TEST(TokenizerTrain, MergesReduceTokensOnHeldOutText) {
  const std::vector<std::string> train = synthetic_corpus(300, 3), held_out = synthetic_corpus(100, 4);
  BpeTrainOptions options;
  options.vocab_size = 264;  // 8 specials + 256 bytes: no merges
  const double no_merges = bytes_per_token(train_bpe(std::span<const std::string>(train), options), held_out);
  EXPECT_NEAR(no_merges, 1.0, 1e-12);
  options.vocab_size = 400;
  const double merged = bytes_per_token(train_bpe(std::span<const std::string>(train), options), held_out);
  EXPECT_GT(merged, 2.5);
  std::printf("held-out bytes/token: %.3f without merges, %.3f with 136 merges\n", no_merges, merged);
}

TEST(TokenizerTrain, RealTextBytesPerToken) {
  const std::string data = test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data not found: real-text training test skipped";
  std::string train_text = read_text_file(data + "/gutenberg_en_train.txt.zst");
  train_text.resize(4'000'000);
  std::string val_text = read_text_file(data + "/gutenberg_en_val.txt.zst");
  val_text.resize(500'000);
  const std::vector<std::string> train = split_corpus_documents(tok::sanitize_utf8(train_text));
  const std::vector<std::string> val = split_corpus_documents(tok::sanitize_utf8(val_text));
  BpeTrainOptions options;
  options.vocab_size = 4096;
  const Tokenizer tokenizer = train_bpe(std::span<const std::string>(train), options);
  const double bpt = bytes_per_token(tokenizer, val);
  std::printf("gutenberg 4K vocabulary (4 MB train): %.3f bytes/token on 0.5 MB of val\n", bpt);
  EXPECT_GT(bpt, 3.2);
  for (size_t i = 0; i < std::min<size_t>(val.size(), 3); ++i)
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(val[i])), val[i]);
}

}  // namespace
}  // namespace frugal
