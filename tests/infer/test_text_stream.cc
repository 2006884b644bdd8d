// Incremental detokenization and stop strings: incomplete UTF-8 suffixes are recognised exactly
// (and ill-formed bytes never wait); the decoder's pieces are each valid UTF-8 and add up to the
// sanitized bytes, however the bytes are split into tokens; the stop filter's output equals a
// character-by-character reference (the first stop string to complete ends the text) for any
// split of the text into pieces, and never contains a stop string.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <random>

#include "data/tokenizer/utf8.h"
#include "infer/text_stream.h"

namespace frugal {
namespace {

TEST(TextStream, IncompleteUtf8Suffix) {
  struct Case {
    std::string bytes;
    size_t expected;
  };
  const std::vector<Case> cases = {
      {"", 0},          {"a", 0},
      {"\xC3", 1},      {"a\xC3", 1},
      {"\xC3\xA9", 0},  {"\xE2", 1},
      {"\xE2\x82", 2},  {"\xE2\x82\xAC", 0},
      {"\xF0\x9F", 2},  {"\xF0\x9F\x98", 3},
      {"\xF0\x9F\x98\x80", 0},
      {"\x80", 0},      {"a\x80\x80", 0},     // continuation bytes without a lead
      {"\xE0\x80", 0},  {"\xED\xA0", 0},      // second bytes that can never be valid
      {"\xF0\x80", 0},  {"\xF4\x90", 0},
      {"\xC0", 0},      {"\xC1", 0},  {"\xF5", 0},  {"\xFF", 0},
      {"\xE0\xA0", 2},  {"\xED\x9F", 2},  {"\xF4\x8F\xBF", 3},
      {"\xE2\x82\xAC\xE2", 1},
  };
  for (const Case& c : cases) {
    std::string hex;
    for (unsigned char b : c.bytes) hex += fmt::format("{:02X} ", b);
    EXPECT_EQ(incomplete_utf8_suffix(c.bytes), c.expected) << hex;
  }
}

TEST(TextStream, DecoderPiecesAreValidAndAddUpForAnyTokenSplit) {
  std::mt19937 rng(5);
  const std::vector<std::string> alphabet = {"a", " ", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80",
                                             "\x80", "\xC3", "\xE0\x80", "\xFF", "\xED\xA0\x80"};
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes;
    const int pieces = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < pieces; ++i) bytes += alphabet[rng() % alphabet.size()];
    // Split into tokens of 1..4 bytes.
    std::vector<std::string> tokens;
    for (size_t pos = 0; pos < bytes.size();) {
      const size_t n = std::min<size_t>(1 + rng() % 4, bytes.size() - pos);
      tokens.push_back(bytes.substr(pos, n));
      pos += n;
    }
    TokenTextDecoder decoder([&](int32_t id) { return tokens[static_cast<size_t>(id)]; });
    std::string text;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string piece = decoder.push(static_cast<int32_t>(i));
      EXPECT_TRUE(tok::is_valid_utf8(piece));
      text += piece;
    }
    const std::string rest = decoder.finish();
    EXPECT_TRUE(tok::is_valid_utf8(rest));
    text += rest;
    EXPECT_EQ(text, tok::sanitize_utf8(bytes)) << "trial " << trial;
  }
}

TEST(TextStream, DecoderHoldsOnlyAStartedCharacter) {
  const std::vector<std::string> tokens = {"ab\xE2", "\x82", "\xAC!"};
  TokenTextDecoder decoder([&](int32_t id) { return tokens[static_cast<size_t>(id)]; });
  EXPECT_EQ(decoder.push(0), "ab");
  EXPECT_EQ(decoder.push(1), "");
  EXPECT_EQ(decoder.push(2), "\xE2\x82\xAC!");
  EXPECT_EQ(decoder.finish(), "");
  // An incomplete character at the end becomes U+FFFD.
  TokenTextDecoder cut([&](int32_t id) { return tokens[static_cast<size_t>(id)]; });
  EXPECT_EQ(cut.push(0), "ab");
  EXPECT_EQ(cut.finish(), "\xEF\xBF\xBD");
}

// Character by character: the first position where some stop string ends; of those ending
// there, the longest. Returns the text before it, or all of it.
std::string reference_stop(const std::string& text, const std::vector<std::string>& stops,
                           bool& stopped) {
  for (size_t end = 1; end <= text.size(); ++end) {
    size_t longest = 0;
    for (const std::string& s : stops)
      if (!s.empty() && s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0)
        longest = std::max(longest, s.size());
    if (longest > 0) {
      stopped = true;
      return text.substr(0, end - longest);
    }
  }
  stopped = false;
  return text;
}

TEST(TextStream, StopFilterMatchesTheReferenceForAnySplit) {
  std::mt19937 rng(11);
  const std::vector<std::vector<std::string>> stop_sets = {
      {"abc"}, {"bb"}, {"abcd", "bc"}, {"aab", "ab", "b"}, {"cacb", "acb", "ca"}, {}, {"aaaa"}};
  for (int trial = 0; trial < 2000; ++trial) {
    const std::vector<std::string>& stops = stop_sets[trial % stop_sets.size()];
    std::string text;
    const size_t length = rng() % 16;
    for (size_t i = 0; i < length; ++i) text += "abc"[rng() % 3];
    bool expect_stopped = false;
    const std::string expected = reference_stop(text, stops, expect_stopped);

    StopStringFilter filter(stops);
    std::string out;
    bool stopped = false;
    for (size_t pos = 0; pos < text.size() && !stopped;) {
      const size_t n = std::min<size_t>(1 + rng() % 5, text.size() - pos);
      const std::string piece = filter.push(text.substr(pos, n), stopped);
      for (const std::string& s : stops) EXPECT_EQ(piece.find(s), std::string::npos);
      out += piece;
      pos += n;
    }
    if (!stopped) out += filter.finish();
    EXPECT_EQ(stopped, expect_stopped) << text;
    EXPECT_EQ(out, expected) << "text '" << text << "' trial " << trial;
  }
}

TEST(TextStream, StopFilterHoldsBackPossibleStarts) {
  StopStringFilter filter({"</s>", "STOP"});
  bool stopped = false;
  EXPECT_EQ(filter.push("hello <", stopped), "hello ");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(filter.push("/", stopped), "");
  EXPECT_EQ(filter.push("x", stopped), "</x");  // not a stop string after all
  EXPECT_EQ(filter.push(" ST", stopped), " ");
  EXPECT_EQ(filter.push("OP and more", stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(filter.push("later", stopped), "");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(filter.finish(), "");
  // Held text that never completes comes out at the end.
  StopStringFilter open({"STOP"});
  EXPECT_EQ(open.push("go ST", stopped), "go ");
  EXPECT_EQ(open.finish(), "ST");
}

}  // namespace
}  // namespace frugal
