// Helpers shared by the cleaning tests: temporary folders, file writing, zstd compression, a
// deterministic generator of English-like text, error capture and the real-data folder.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <zstd.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"
#include "core/error.h"

namespace frugal::clean::test {

namespace fs = std::filesystem;

using ::frugal::testing::TempDir;
using ::frugal::testing::error_message;
using ::frugal::testing::zstd_compress;

inline void write_bytes(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}


// splitmix64: a small deterministic generator for test data.
class TestRng {
 public:
  explicit TestRng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

// A made-up word: 1-3 consonant-vowel syllables chosen by `index` (about 10^5 distinct words).
inline std::string made_up_word(size_t index) {
  static const char* kSyllables[] = {"ka", "lo", "mi", "ra", "te", "nu", "so", "pe", "di", "va",
                                     "go", "ze", "bu", "fi", "ho", "ja", "ku", "le", "mo", "ni",
                                     "pa", "ri", "sa", "to", "ve", "wu", "ye", "zo", "ba", "de",
                                     "fu", "gi", "he", "ji", "ko", "lu", "ma", "ne", "po", "ru"};
  constexpr size_t kCount = sizeof(kSyllables) / sizeof(kSyllables[0]);
  std::string word = kSyllables[index % kCount];
  index /= kCount;
  word += kSyllables[index % kCount];
  index /= kCount;
  if (index > 0) word += kSyllables[index % kCount];
  return word;
}

// English-like prose: sentences of 8-15 words, a quarter of them common English stop words, the
// rest made-up words drawn with a skewed (roughly Zipfian) distribution from a large vocabulary.
// Paragraphs of 3-5 sentences separated by blank lines.
inline std::string english_like_text(uint64_t seed, size_t words) {
  static const char* kStop[] = {"the", "of", "and", "to", "with", "that", "have", "be", "in", "a"};
  TestRng rng(seed);
  std::string text;
  size_t written = 0, sentence_words = 0, sentence_length = 0, sentences = 0, paragraph_length = 4;
  while (written < words) {
    if (sentence_words == 0) sentence_length = 8 + rng.below(8);
    std::string word;
    if (rng.uniform() < 0.25) {
      word = kStop[rng.below(10)];
    } else {
      const double u = rng.uniform();
      word = made_up_word(static_cast<size_t>(std::pow(60000.0, u)));
    }
    if (sentence_words == 0) word[0] = static_cast<char>(std::toupper(word[0]));
    if (!text.empty()) text += text.back() == '\n' ? "" : " ";
    text += word;
    ++written;
    if (++sentence_words == sentence_length || written == words) {
      text += ".";
      sentence_words = 0;
      if (++sentences == paragraph_length && written < words) {
        text += "\n\n";
        sentences = 0;
        paragraph_length = 3 + rng.below(3);
      }
    }
  }
  return text;
}

// ../shared/data from the project root, or "" when absent.
inline std::string shared_data_dir() {
  const fs::path dir = fs::path(FRUGAL_SOURCE_DIR) / ".." / "shared" / "data";
  return fs::is_directory(dir) ? dir.string() : std::string();
}

}  // namespace frugal::clean::test
