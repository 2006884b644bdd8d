// UTF-8 helpers, lossy sanitising, the GPT-2 byte-level alphabet and two character classes.
#include "data/tokenizer/utf8.h"

#include "data/tokenizer/regex.h"

namespace frugal::tok {
namespace {

// Length of the well-formed sequence starting at text[pos], or 0 when it is ill-formed; on 0,
// `subpart` is the length of the maximal subpart to replace (at least 1).
size_t sequence_length(std::string_view text, size_t pos, size_t& subpart) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t lead = byte(pos);
  subpart = 1;
  if (lead < 0x80) return 1;
  size_t need;
  uint8_t low = 0x80, high = 0xBF;  // allowed range of the first continuation byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
  } else {
    return 0;  // 0x80..0xC1, 0xF5..0xFF never start a character
  }
  for (size_t k = 1; k <= need; ++k) {
    if (pos + k >= text.size()) {
      subpart = k;
      return 0;
    }
    const uint8_t c = byte(pos + k);
    const uint8_t lo = k == 1 ? low : 0x80, hi = k == 1 ? high : 0xBF;
    if (c < lo || c > hi) {
      subpart = k;
      return 0;
    }
  }
  return need + 1;
}

struct ByteLevelTables {
  std::array<char32_t, 256> to_unicode{};
  std::array<int16_t, 512> from_unicode{};  // every mapped code point is < 0x144
  std::array<std::string, 256> utf8;
  ByteLevelTables() {
    from_unicode.fill(-1);
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_unicode[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      from_unicode[to_unicode[b]] = static_cast<int16_t>(b);
      append_utf8(utf8[b], to_unicode[b]);
    }
  }
};

const ByteLevelTables& tables() {
  static const ByteLevelTables instance;
  return instance;
}

}  // namespace

char32_t decode_utf8(std::string_view text, size_t& pos) {
  const auto byte = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(text[i])); };
  const uint32_t lead = byte(pos);
  if (lead < 0x80) {
    pos += 1;
    return lead;
  }
  if (lead < 0xE0) {
    const char32_t cp = ((lead & 0x1F) << 6) | (byte(pos + 1) & 0x3F);
    pos += 2;
    return cp;
  }
  if (lead < 0xF0) {
    const char32_t cp = ((lead & 0x0F) << 12) | ((byte(pos + 1) & 0x3F) << 6) | (byte(pos + 2) & 0x3F);
    pos += 3;
    return cp;
  }
  const char32_t cp = ((lead & 0x07) << 18) | ((byte(pos + 1) & 0x3F) << 12) |
                      ((byte(pos + 2) & 0x3F) << 6) | (byte(pos + 3) & 0x3F);
  pos += 4;
  return cp;
}

char32_t last_code_point(std::string_view text) {
  size_t start = text.size() - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  return decode_utf8(text, start);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t valid_utf8_prefix(std::string_view text) {
  size_t pos = 0, subpart = 0;
  while (pos < text.size()) {
    // ASCII fast path: 8 bytes at a time.
    while (pos + 8 <= text.size()) {
      uint64_t word;
      __builtin_memcpy(&word, text.data() + pos, 8);
      if (word & 0x8080808080808080ull) break;
      pos += 8;
    }
    if (pos >= text.size()) break;
    const size_t n = sequence_length(text, pos, subpart);
    if (n == 0) return pos;
    pos += n;
  }
  return text.size();
}

bool is_valid_utf8(std::string_view text) { return valid_utf8_prefix(text) == text.size(); }

std::string sanitize_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 16);
  size_t pos = 0, subpart = 0;
  while (pos < text.size()) {
    const size_t valid = valid_utf8_prefix(text.substr(pos));
    out.append(text.data() + pos, valid);
    pos += valid;
    if (pos >= text.size()) break;
    sequence_length(text, pos, subpart);
    out.append("\xEF\xBF\xBD");
    pos += subpart;
  }
  return out;
}

char32_t byte_to_unicode(uint8_t byte) { return tables().to_unicode[byte]; }

int byte_from_unicode(char32_t cp) {
  return cp < 512 ? tables().from_unicode[cp] : -1;
}

const std::string& byte_to_unicode_utf8(uint8_t byte) { return tables().utf8[byte]; }

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += tables().utf8[static_cast<uint8_t>(c)];
  return out;
}

bool byte_level_to_bytes(std::string_view token, std::string& bytes) {
  bytes.clear();
  if (!is_valid_utf8(token)) return false;
  size_t pos = 0;
  while (pos < token.size()) {
    const int b = byte_from_unicode(decode_utf8(token, pos));
    if (b < 0) return false;
    bytes.push_back(static_cast<char>(b));
  }
  return true;
}

bool is_white_space(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_word_char(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  static const Regex word(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])", "word class",
                          /*translate=*/false);
  std::string utf8;
  append_utf8(utf8, cp);
  return word.matches_at_start(utf8);
}

}  // namespace frugal::tok
