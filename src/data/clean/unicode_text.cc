// UTF-8 validation/repair, code point classes and word splitting (see unicode_text.h).
#include "data/clean/unicode_text.h"

#include <cstring>

namespace frugal::clean {
namespace {

bool in(char32_t c, char32_t lo, char32_t hi) { return c >= lo && c <= hi; }

bool is_ascii_space(unsigned char b) { return b == ' ' || (b >= 9 && b <= 13); }

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// Start (>= floor) of the code point that ends at `end` (exclusive, > floor), and its decoding.
DecodedCodePoint decode_before(std::string_view text, size_t floor, size_t end, size_t& start) {
  const unsigned char last = static_cast<unsigned char>(text[end - 1]);
  if (last < 0x80) {
    start = end - 1;
    return {last, 1, true};
  }
  size_t pos = end - 1;
  int continuation = 0;
  while (pos > floor && continuation < 3 &&
         (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) {
    --pos;
    ++continuation;
  }
  DecodedCodePoint decoded = decode_utf8(text, pos);
  if (pos + decoded.length != end) {  // not one well-formed code point: take the last byte alone
    start = end - 1;
    return decode_utf8(text, end - 1);
  }
  start = pos;
  return decoded;
}

bool is_word_char(char32_t c) { return is_letter(c) || is_digit(c); }

}  // namespace

DecodedCodePoint decode_utf8_multibyte(std::string_view text, size_t pos) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  const unsigned char b0 = s[pos];
  int need;
  char32_t value;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the next byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    value = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    value = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    value = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return {kReplacementCharacter, 1, false};
  }
  for (int i = 1; i <= need; ++i) {
    if (pos + i >= size) return {kReplacementCharacter, static_cast<uint32_t>(i), false};
    const unsigned char b = s[pos + i];
    if (b < lo || b > hi) return {kReplacementCharacter, static_cast<uint32_t>(i), false};
    value = (value << 6) | (b & 0x3F);
    lo = 0x80;
    hi = 0xBF;
  }
  return {value, static_cast<uint32_t>(need + 1), true};
}

bool is_valid_utf8(std::string_view text) {
  size_t pos = 0;
  const size_t size = text.size();
  while (pos < size) {
    // Skip 8 ASCII bytes at a time.
    while (pos + 8 <= size) {
      uint64_t chunk;
      std::memcpy(&chunk, text.data() + pos, 8);
      if ((chunk & 0x8080808080808080ull) != 0) break;
      pos += 8;
    }
    if (pos >= size) break;
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const DecodedCodePoint decoded = decode_utf8(text, pos);
    if (!decoded.valid) return false;
    pos += decoded.length;
  }
  return true;
}

std::string repair_utf8(std::string_view text, size_t* invalid_sequences) {
  std::string out;
  out.reserve(text.size() + 16);
  size_t replaced = 0, pos = 0, run_start = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const DecodedCodePoint decoded = decode_utf8(text, pos);
    if (decoded.valid) {
      pos += decoded.length;
      continue;
    }
    out.append(text.data() + run_start, pos - run_start);
    append_utf8(out, kReplacementCharacter);
    ++replaced;
    pos += decoded.length;
    run_start = pos;
  }
  out.append(text.data() + run_start, text.size() - run_start);
  if (invalid_sequences != nullptr) *invalid_sequences = replaced;
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

size_t count_code_points(std::string_view text) {
  size_t count = 0, pos = 0;
  while (pos < text.size()) {
    pos += static_cast<unsigned char>(text[pos]) < 0x80 ? 1 : decode_utf8(text, pos).length;
    ++count;
  }
  return count;
}

bool is_space_non_ascii(char32_t c) {
  return c == 0x85 || c == 0xA0 || c == 0x1680 || in(c, 0x2000, 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_cjk(char32_t c) {
  if (c < 0x2E80) return false;
  return in(c, 0x2E80, 0x2FDF) || in(c, 0x3001, 0x303F) || in(c, 0x3040, 0x30FF) ||
         in(c, 0x3100, 0x312F) || in(c, 0x31F0, 0x31FF) || in(c, 0x3400, 0x4DBF) ||
         in(c, 0x4E00, 0x9FFF) || in(c, 0xF900, 0xFAFF) || in(c, 0xFE30, 0xFE4F) ||
         in(c, 0xFF00, 0xFFEF) || in(c, 0x20000, 0x3134F);
}

bool is_letter_non_ascii(char32_t c) {
  if (c < 0x250) return c == 0xAA || c == 0xB5 || c == 0xBA || (c >= 0xC0 && c != 0xD7 && c != 0xF7);
  if (c < 0x300) return true;  // IPA, spacing modifier letters
  if (c < 0x370) return false;  // combining marks
  if (c < 0x400) return c != 0x37E && c != 0x384 && c != 0x385 && c != 0x387 && c != 0x3F6;
  if (c < 0x530) return !in(c, 0x482, 0x489);  // Cyrillic
  if (c < 0x900) {
    return in(c, 0x531, 0x556) || in(c, 0x561, 0x587) || in(c, 0x5D0, 0x5EA) ||
           in(c, 0x620, 0x64A) || in(c, 0x671, 0x6D3) || in(c, 0x710, 0x72F) ||
           in(c, 0x780, 0x7A5);
  }
  if (c < 0x1000) return !in(c, 0xE50, 0xE59) && !in(c, 0x964, 0x96F);  // Indic, Thai, Lao
  if (c < 0x2000) {
    return in(c, 0x1000, 0x102A) || in(c, 0x10A0, 0x10FF) || in(c, 0x1100, 0x11FF) ||
           in(c, 0x1200, 0x137F) || in(c, 0x13A0, 0x13FF) || in(c, 0x1401, 0x166C) ||
           in(c, 0x1780, 0x17B3) || in(c, 0x1820, 0x1878) || in(c, 0x1E00, 0x1FBC) ||
           in(c, 0x1FC2, 0x1FCC) || in(c, 0x1FD0, 0x1FDB) || in(c, 0x1FE0, 0x1FEC) ||
           in(c, 0x1FF2, 0x1FFC);
  }
  if (c < 0x3000) return in(c, 0x2C00, 0x2DFF) || c == 0x2071 || c == 0x207F;
  return in(c, 0x3041, 0x3096) || in(c, 0x309D, 0x309F) || in(c, 0x30A1, 0x30FA) ||
         in(c, 0x30FC, 0x30FF) || in(c, 0x3105, 0x312F) || in(c, 0x31F0, 0x31FF) ||
         in(c, 0x3400, 0x4DBF) || in(c, 0x4E00, 0x9FFF) || in(c, 0xA000, 0xA4CF) ||
         in(c, 0xA640, 0xA69F) || in(c, 0xA720, 0xA7FF) || in(c, 0xAC00, 0xD7A3) ||
         in(c, 0xF900, 0xFAFF) || in(c, 0xFB00, 0xFB4F) || in(c, 0xFB50, 0xFDFB) ||
         in(c, 0xFE70, 0xFEFC) || in(c, 0xFF21, 0xFF3A) || in(c, 0xFF41, 0xFF5A) ||
         in(c, 0xFF66, 0xFFDC) || in(c, 0x20000, 0x3134F);
}

void split_words(std::string_view text, Words& out) {
  out.words.clear();
  out.char_lengths.clear();
  out.total_chars = 0;
  size_t pos = 0, start = 0;
  uint32_t chars = 0;
  bool in_word = false;
  auto end_word = [&](size_t end) {
    if (!in_word) return;
    out.words.emplace_back(text.data() + start, end - start);
    out.char_lengths.push_back(chars);
    out.total_chars += chars;
    in_word = false;
  };
  while (pos < text.size()) {
    const unsigned char b = static_cast<unsigned char>(text[pos]);
    if (b < 0x80) {
      if (is_ascii_space(b)) {
        end_word(pos);
      } else {
        if (!in_word) {
          in_word = true;
          start = pos;
          chars = 0;
        }
        ++chars;
      }
      ++pos;
      continue;
    }
    const DecodedCodePoint decoded = decode_utf8(text, pos);
    if (is_space(decoded.value)) {
      end_word(pos);
    } else if (is_cjk(decoded.value)) {
      end_word(pos);
      out.words.emplace_back(text.data() + pos, decoded.length);
      out.char_lengths.push_back(1);
      out.total_chars += 1;
    } else {
      if (!in_word) {
        in_word = true;
        start = pos;
        chars = 0;
      }
      ++chars;
    }
    pos += decoded.length;
  }
  end_word(pos);
}

void normalize_word(std::string_view word, std::string& out) {
  out.clear();
  size_t begin = 0, end = word.size();
  while (begin < end) {
    const DecodedCodePoint decoded = decode_utf8(word, begin);
    if (is_word_char(decoded.value)) break;
    begin += decoded.length;
  }
  while (end > begin) {
    size_t start;
    const DecodedCodePoint decoded = decode_before(word, begin, end, start);
    if (is_word_char(decoded.value)) break;
    end = start;
  }
  out.reserve(end - begin);
  for (size_t i = begin; i < end; ++i) out.push_back(ascii_lower(word[i]));
}

std::string normalize_for_exact_match(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_space = false;
  size_t pos = 0;
  while (pos < text.size()) {
    const unsigned char b = static_cast<unsigned char>(text[pos]);
    size_t length = 1;
    bool space;
    if (b < 0x80) {
      space = is_ascii_space(b);
    } else {
      const DecodedCodePoint decoded = decode_utf8(text, pos);
      length = decoded.length;
      space = is_space(decoded.value);
    }
    if (space) {
      pending_space = true;
    } else {
      if (pending_space && !out.empty()) out.push_back(' ');
      pending_space = false;
      if (length == 1) {
        out.push_back(ascii_lower(static_cast<char>(b)));
      } else {
        out.append(text.data() + pos, length);
      }
    }
    pos += length;
  }
  return out;
}

std::string_view trim_space(std::string_view text) {
  size_t begin = 0, end = text.size();
  while (begin < end) {
    const DecodedCodePoint decoded = decode_utf8(text, begin);
    if (!is_space(decoded.value)) break;
    begin += decoded.length;
  }
  while (end > begin) {
    size_t start;
    const DecodedCodePoint decoded = decode_before(text, begin, end, start);
    if (!is_space(decoded.value)) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

}  // namespace frugal::clean
