// UTF-8 and byte-level helpers shared by the BPE tokenizer.
//
// - decode_utf8 / append_utf8: one code point from / to UTF-8.
// - sanitize_utf8: replaces every ill-formed sequence with U+FFFD using the "maximal subpart"
//   rule of the Unicode standard (§3.9, the rule of Python's bytes.decode("utf-8", "replace") and
//   Rust's String::from_utf8_lossy), so raw file bytes tokenize like the text Python would hand to
//   the Hugging Face `tokenizers` library after a lossy decode.
// - The GPT-2 byte <-> unicode map of the ByteLevel pre-tokenizer/decoder: printable bytes
//   '!'..'~', 0xA1..0xAC, 0xAE..0xFF map to themselves; the other 68 bytes map, in byte order,
//   to U+0100, U+0101, ... (so ' ' is U+0120 'Ġ' and '\n' is U+010A 'Ċ').
// - is_white_space (Unicode White_Space, Rust's char::is_whitespace) and is_word_char (Rust
//   regex's Unicode \w: Alphabetic, M, Nd, Pc, Join_Control), used by added-token matching.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace frugal::tok {

// Decodes the code point starting at text[pos] of *valid* UTF-8 and advances pos past it.
char32_t decode_utf8(std::string_view text, size_t& pos);
// Code point of the last character of valid UTF-8 text (text must be non-empty).
char32_t last_code_point(std::string_view text);
void append_utf8(std::string& out, char32_t code_point);

// Length of the well-formed prefix of `text` (== text.size() when it is valid UTF-8).
size_t valid_utf8_prefix(std::string_view text);
bool is_valid_utf8(std::string_view text);
// Copy of `text` with each maximal ill-formed subpart replaced by U+FFFD (EF BF BD).
std::string sanitize_utf8(std::string_view text);

// The GPT-2 byte-level alphabet.
char32_t byte_to_unicode(uint8_t byte);
// The byte whose mapped character is `code_point`, or -1 when it is not one of the 256.
int byte_from_unicode(char32_t code_point);
// UTF-8 of the mapped character of `byte` (1 or 2 bytes).
const std::string& byte_to_unicode_utf8(uint8_t byte);
// Maps raw bytes to the byte-level string used in vocabularies ("hi there" -> "hiĠthere").
std::string bytes_to_byte_level(std::string_view bytes);
// Inverse: true and the raw bytes when every character of `token` is in the alphabet.
bool byte_level_to_bytes(std::string_view token, std::string& bytes);

bool is_white_space(char32_t code_point);
bool is_word_char(char32_t code_point);

}  // namespace frugal::tok
