// Text files (.txt and .zst, with bad-file errors), the byte tokenizer, and the text data source:
// shifted targets, exact resume, disjoint ranks, determinism, corpus splitting.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "test_util.h"
#include "data/text_source.h"
#include "io/text_file.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;

using ::frugal::testing::TempDir;
using ::frugal::testing::error_message;
using ::frugal::testing::zstd_compress;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}


// Several MB of varied bytes, so the streaming decoder runs over many input and output chunks.
std::string sample_text(size_t bytes) {
  std::string text;
  text.reserve(bytes);
  uint64_t state = 12345;
  while (text.size() < bytes) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    text += "line " + std::to_string(state >> 40) + " of the sample text\n";
    text.push_back(static_cast<char>(state >> 56));  // any byte, including invalid UTF-8
  }
  text.resize(bytes);
  return text;
}

TEST(TextFile, ReadsPlainAndZstdFiles) {
  TempDir dir;
  const std::string text = sample_text(3 << 20);
  write_bytes(dir.file("a.txt"), text);
  write_bytes(dir.file("a.txt.zst"), zstd_compress(text));
  EXPECT_EQ(read_text_file(dir.file("a.txt")), text);
  EXPECT_EQ(read_text_file(dir.file("a.txt.zst")), text);
  // Concatenated frames decode to the concatenated texts.
  write_bytes(dir.file("two.zst"), zstd_compress("first frame\n") + zstd_compress("second\n", 19));
  EXPECT_EQ(read_text_file(dir.file("two.zst")), "first frame\nsecond\n");
  write_bytes(dir.file("empty.txt"), "");
  EXPECT_EQ(read_text_file(dir.file("empty.txt")), "");
}

TEST(TextFile, ReadsFileWrittenByZstdTool) {
  TempDir dir;
  const std::string text = sample_text(200000);
  write_bytes(dir.file("b.txt"), text);
  std::string command = "zstd -q -19 -o '" + dir.file("b.txt.zst") + "' '" + dir.file("b.txt") + "'";
  if (std::system(command.c_str()) != 0) GTEST_SKIP() << "zstd command-line tool not available";
  EXPECT_EQ(read_text_file(dir.file("b.txt.zst")), text);
}

TEST(TextFile, TruncatedZstdNamesTheFile) {
  TempDir dir;
  std::string compressed = zstd_compress(sample_text(500000));
  for (size_t keep : {compressed.size() - 1, compressed.size() / 2, size_t{6}}) {
    const std::string path = dir.file("cut" + std::to_string(keep) + ".zst");
    write_bytes(path, compressed.substr(0, keep));
    std::string message = error_message([&] { read_text_file(path); });
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  }
}

TEST(TextFile, CorruptEmptyMissingAndDirectoryErrors) {
  TempDir dir;
  const std::string garbage = dir.file("garbage.zst");
  write_bytes(garbage, "this is plainly not a zstd frame at all");
  std::string message = error_message([&] { read_text_file(garbage); });
  EXPECT_NE(message.find(garbage), std::string::npos) << message;
  EXPECT_NE(message.find("corrupt"), std::string::npos) << message;

  std::string compressed = zstd_compress(sample_text(100000));
  compressed[compressed.size() / 2] ^= 0x5a;
  compressed[compressed.size() / 2 + 1] ^= 0xa5;
  const std::string flipped = dir.file("flipped.zst");
  write_bytes(flipped, compressed);
  EXPECT_NE(error_message([&] { read_text_file(flipped); }).find(flipped), std::string::npos);

  const std::string empty = dir.file("empty.zst");
  write_bytes(empty, "");
  message = error_message([&] { read_text_file(empty); });
  EXPECT_NE(message.find(empty), std::string::npos) << message;

  const std::string missing = dir.file("missing.txt");
  message = error_message([&] { read_text_file(missing); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
  EXPECT_NE(message.find("No such file"), std::string::npos) << message;

  message = error_message([&] { read_text_file(dir.file("")); });
  EXPECT_NE(message.find("directory"), std::string::npos) << message;
}

TEST(TextFile, ReadsSharedCorpus) {
  const std::string path = std::string(FRUGAL_SOURCE_DIR) + "/../shared/data/tinyshakespeare.txt.zst";
  if (!fs::exists(path)) GTEST_SKIP() << "shared data folder absent: " << path;
  std::string text = read_text_file(path);
  EXPECT_EQ(text.size(), 1115394u);  // documented in shared/data/README.md
  EXPECT_EQ(text.substr(0, 14), "First Citizen:");
}

TEST(ByteTokenizer, RoundTripsEveryByte) {
  ByteTokenizer tokenizer;
  std::string bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(static_cast<char>(b));
  bytes += "\xff\xfe\xc3 \xe2\x82 caf\xc3\xa9 \xf0\x9f\x98\x80";  // invalid and valid UTF-8
  std::vector<int32_t> ids = tokenizer.encode(bytes);
  ASSERT_EQ(ids.size(), bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i)
    EXPECT_EQ(ids[i], static_cast<unsigned char>(bytes[i]));
  EXPECT_EQ(tokenizer.decode(ids), bytes);
  EXPECT_EQ(tokenizer.vocab_size(), 259);
}

TEST(ByteTokenizer, DocumentSeparatorLinesBecomeEos) {
  ByteTokenizer tokenizer;
  const int32_t eos = ByteTokenizer::kEos;
  EXPECT_EQ(tokenizer.encode("a\n<|endoftext|>\nb"),
            (std::vector<int32_t>{'a', '\n', eos, 'b'}));
  EXPECT_EQ(tokenizer.encode("<|endoftext|>\nx\n<|endoftext|>"),
            (std::vector<int32_t>{eos, 'x', '\n', eos}));
  // Inside a longer line the marker is plain text.
  std::string inline_marker = "say <|endoftext|>\n<|endoftext|> now\n";
  EXPECT_EQ(tokenizer.encode(inline_marker).size(), inline_marker.size());
  // Rendering specials restores the corpus text.
  std::string corpus = "doc one\n<|endoftext|>\ndoc two\xff\n<|endoftext|>\n";
  EXPECT_EQ(tokenizer.decode(tokenizer.encode(corpus), true), corpus);
  EXPECT_EQ(tokenizer.decode(tokenizer.encode(corpus)), "doc one\ndoc two\xff\n");
}

TEST(ByteTokenizer, DecodesSpecialsAndRejectsNegativeIds) {
  ByteTokenizer tokenizer;
  std::vector<int32_t> ids = {ByteTokenizer::kBos, 'h', 'i', ByteTokenizer::kPad, 300};
  EXPECT_EQ(tokenizer.decode(ids), "hi");
  EXPECT_EQ(tokenizer.decode(ids, true), "<|bos|>hi<|pad|><|id:300|>");
  EXPECT_THROW(tokenizer.decode(std::vector<int32_t>{'a', -1}), Error);
}

std::vector<int32_t> iota_tokens(int32_t n) {
  std::vector<int32_t> tokens(n);
  for (int32_t i = 0; i < n; ++i) tokens[i] = i;
  return tokens;
}

struct Batch {
  std::vector<int32_t> tokens, targets;
  bool operator==(const Batch&) const = default;
};

Batch next(DataSource& source, int64_t batch, int64_t seq) {
  Batch out{std::vector<int32_t>(batch * seq), std::vector<int32_t>(batch * seq)};
  source.next_batch(out.tokens.data(), out.targets.data(), batch, seq);
  return out;
}

TEST(TextDataSource, TargetsAreTheFollowingTokens) {
  ByteTokenizer tokenizer;
  std::vector<int32_t> corpus = tokenizer.encode(sample_text(20000));
  TextDataSource source(corpus, 3);
  const int64_t batch = 4, seq = 33;
  for (int step = 0; step < 5; ++step) {
    int64_t counter = source.batch_counter();
    Batch b = next(source, batch, seq);
    for (int64_t r = 0; r < batch; ++r) {
      int64_t start = source.window_start(counter, r, seq);
      for (int64_t t = 0; t < seq; ++t) {
        EXPECT_EQ(b.tokens[r * seq + t], corpus[start + t]);
        EXPECT_EQ(b.targets[r * seq + t], corpus[start + t + 1]);
        if (t + 1 < seq) {
          EXPECT_EQ(b.targets[r * seq + t], b.tokens[r * seq + t + 1]);
        }
      }
    }
  }
  EXPECT_EQ(source.batch_counter(), 5);
}

TEST(TextDataSource, ResumeFromStateMatchesUninterruptedRun) {
  const auto tokens = iota_tokens(5000);
  TextDataSource uninterrupted(tokens, 11, 0, 1, 5000);
  std::vector<Batch> expected;
  for (int i = 0; i < 6; ++i) expected.push_back(next(uninterrupted, 3, 16));

  TextDataSource first(tokens, 11, 0, 1, 5000);
  next(first, 3, 16);
  next(first, 3, 16);
  nlohmann::json saved = nlohmann::json::parse(first.state().dump());  // as a checkpoint would
  TextDataSource resumed(tokens, 11, 0, 1, 5000);
  resumed.restore(saved);
  for (int i = 2; i < 6; ++i) EXPECT_EQ(next(resumed, 3, 16), expected[i]) << "batch " << i;

  // Restoring into a source with other settings or from a damaged state is refused.
  TextDataSource other_seed(tokens, 12, 0, 1, 5000);
  EXPECT_NE(error_message([&] { other_seed.restore(saved); }).find("seed"), std::string::npos);
  TextDataSource other_data(iota_tokens(4000), 11, 0, 1, 5000);
  EXPECT_THROW(other_data.restore(saved), Error);
  nlohmann::json broken = saved;
  broken.erase("batch_counter");
  EXPECT_THROW(resumed.restore(broken), Error);
}

TEST(TextDataSource, RanksReadDisjointSlices) {
  const int32_t n = 9000;
  const int64_t world = 3, seq = 20;
  std::vector<std::set<int32_t>> seen(world);
  for (int64_t rank = 0; rank < world; ++rank) {
    TextDataSource source(iota_tokens(n), 5, rank, world, n);
    EXPECT_EQ(source.slice_begin(), rank * n / world);
    for (int i = 0; i < 40; ++i) {
      Batch b = next(source, 4, seq);
      for (size_t j = 0; j < b.tokens.size(); ++j) {
        seen[rank].insert(b.tokens[j]);
        seen[rank].insert(b.targets[j]);
      }
    }
    EXPECT_GE(*seen[rank].begin(), rank * n / world);
    EXPECT_LT(*seen[rank].rbegin(), (rank + 1) * n / world);
  }
  for (int64_t a = 0; a < world; ++a)
    for (int64_t b = a + 1; b < world; ++b)
      for (int32_t t : seen[a]) EXPECT_EQ(seen[b].count(t), 0u) << "ranks " << a << ", " << b;
}

TEST(TextDataSource, DeterministicAndSeedDependent) {
  const auto tokens = iota_tokens(100000);
  TextDataSource a(tokens, 1, 0, 1, 100000), b(tokens, 1, 0, 1, 100000), c(tokens, 2, 0, 1, 100000);
  TextDataSource validation(tokens, 1, 0, 1, 100000, "validation");
  for (int i = 0; i < 3; ++i) {
    Batch x = next(a, 8, 64);
    EXPECT_EQ(x, next(b, 8, 64));
    EXPECT_NE(x, next(c, 8, 64));
    EXPECT_NE(x, next(validation, 8, 64));
  }
  // Windows are spread over the whole slice, not clustered.
  int64_t lowest = 100000, highest = 0;
  for (int64_t r = 0; r < 500; ++r) {
    lowest = std::min(lowest, a.window_start(r, 0, 64));
    highest = std::max(highest, a.window_start(r, 0, 64));
  }
  EXPECT_LT(lowest, 2000);
  EXPECT_GT(highest, 100000 - 64 - 2000);
}

TEST(TextDataSource, RejectsBadInput) {
  EXPECT_THROW(TextDataSource(iota_tokens(10), 0, 0, 1, 5), Error);  // ids beyond vocab
  EXPECT_THROW(TextDataSource(iota_tokens(10), 0, 2, 2, 10), Error);  // rank out of range
  TextDataSource small(iota_tokens(10), 0, 0, 1, 10);
  std::vector<int32_t> tokens(10), targets(10);
  std::string message = error_message([&] { small.next_batch(tokens.data(), targets.data(), 1, 10); });
  EXPECT_NE(message.find("10 tokens"), std::string::npos) << message;
  small.next_batch(tokens.data(), targets.data(), 1, 9);  // exactly one window fits
  EXPECT_EQ(tokens[0], 0);
  EXPECT_EQ(targets[8], 9);
}

TEST(TextCorpus, SplitsValidationOffTheEnd) {
  TempDir dir;
  const std::string text = "alpha\n<|endoftext|>\n" + sample_text(997);
  write_bytes(dir.file("train.txt.zst"), zstd_compress(text));
  ByteTokenizer tokenizer;
  const std::vector<int32_t> all = tokenizer.encode(text);

  DataConfig config;
  config.train_path = dir.file("train.txt.zst");
  config.val_fraction = 0.1;
  TextCorpus corpus = load_text_corpus(config);
  const size_t val = static_cast<size_t>(0.1 * static_cast<double>(all.size()));
  ASSERT_EQ(corpus.validation.size(), val);
  ASSERT_EQ(corpus.train.size() + corpus.validation.size(), all.size());
  EXPECT_TRUE(std::equal(corpus.train.begin(), corpus.train.end(), all.begin()));
  EXPECT_TRUE(std::equal(corpus.validation.begin(), corpus.validation.end(), all.end() - val));
  EXPECT_EQ(corpus.train[6], ByteTokenizer::kEos);

  write_bytes(dir.file("val.txt"), "held out");
  config.val_path = dir.file("val.txt");
  corpus = load_text_corpus(config);
  EXPECT_EQ(corpus.train, all);
  EXPECT_EQ(tokenizer.decode(corpus.validation), "held out");

  config.tokenizer = "bpe";
  EXPECT_THROW(load_text_corpus(config), Error);
  config.tokenizer = "bytes";
  config.val_path.clear();
  config.val_fraction = 1.0;
  EXPECT_THROW(load_text_corpus(config), Error);
}

}  // namespace
}  // namespace frugal
