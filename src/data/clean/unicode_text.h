// UTF-8 validation and repair, code point classes and the word tokenizer shared by the cleaning
// rules and deduplication.
//
// Validation is strict (Unicode 15, table 3-7): no overlong forms, no surrogates, nothing above
// U+10FFFF, no truncated sequences. Repair replaces each maximal invalid subpart with one U+FFFD
// (the W3C/Unicode "substitution of maximal subparts" practice), so it is idempotent.
//
// Words: maximal runs of non-whitespace code points, except that every CJK code point (ideographs,
// kana, CJK and fullwidth punctuation) is a word of its own, so text without spaces (Chinese,
// Japanese) falls back to characters. Letters and whitespace are classified by code point ranges
// (an approximation of the Unicode categories that covers Latin, Greek, Cyrillic, Armenian, Hebrew,
// Arabic, Indic, Thai, Georgian, Hangul and CJK); no case folding beyond ASCII.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace frugal::clean {

constexpr char32_t kReplacementCharacter = 0xFFFD;

struct DecodedCodePoint {
  char32_t value;   // U+FFFD when invalid
  uint32_t length;  // bytes consumed (>= 1); for an invalid sequence, its maximal subpart
  bool valid;
};

// Decodes the code point starting at text[pos] (pos < text.size()).
DecodedCodePoint decode_utf8_multibyte(std::string_view text, size_t pos);  // text[pos] >= 0x80
inline DecodedCodePoint decode_utf8(std::string_view text, size_t pos) {
  const unsigned char b = static_cast<unsigned char>(text[pos]);
  if (b < 0x80) return {b, 1, true};
  return decode_utf8_multibyte(text, pos);
}
bool is_valid_utf8(std::string_view text);
// Copy of `text` with each maximal invalid subpart replaced by U+FFFD; `invalid_sequences` (when
// given) receives the number replaced.
std::string repair_utf8(std::string_view text, size_t* invalid_sequences = nullptr);
void append_utf8(std::string& out, char32_t code_point);
size_t count_code_points(std::string_view text);

bool is_space_non_ascii(char32_t c);
bool is_letter_non_ascii(char32_t c);
inline bool is_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 9 && c <= 13);
  return is_space_non_ascii(c);
}
inline bool is_letter(char32_t c) {  // approximate, see above
  if (c < 0x80) return ((c | 0x20) - 'a') < 26;
  return is_letter_non_ascii(c);
}
inline bool is_digit(char32_t c) {  // ASCII, Arabic-Indic and fullwidth digits
  return (c - '0') < 10 || (c - 0x660) < 10 || (c - 0xFF10) < 10;
}
bool is_cjk(char32_t c);  // a code point that is a word by itself

struct Words {
  std::vector<std::string_view> words;  // views into the text
  std::vector<uint32_t> char_lengths;   // code points per word
  uint64_t total_chars = 0;             // sum of char_lengths
};
// Replaces `out` with the words of `text`.
void split_words(std::string_view text, Words& out);

// Lowercases ASCII letters and trims leading and trailing code points that are neither letters
// nor digits ("The," -> "the"); may return an empty string (a punctuation-only word).
void normalize_word(std::string_view word, std::string& out);
// Normalized text for exact deduplication: ASCII lowercased, runs of whitespace collapsed to one
// space, leading and trailing whitespace removed.
std::string normalize_for_exact_match(std::string_view text);

// Removes leading and trailing whitespace code points.
std::string_view trim_space(std::string_view text);

}  // namespace frugal::clean
