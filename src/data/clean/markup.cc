// Markup stripping, entity decoding, URL/e-mail and separator-token removal (see markup.h).
#include "data/clean/markup.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "data/clean/unicode_text.h"

namespace frugal::clean {
namespace {

constexpr size_t kMaxTagBytes = 4096;

// line: a line break (li, br, tr, ...); paragraph: a blank line (p, div, h1, table, ...);
// cell: a space (td, th); raw_text: removed with its content (script, style).
enum class TagKind { inline_tag, line, paragraph, cell, raw_text };

struct HtmlElement {
  std::string_view name;
  TagKind kind;
};

// Sorted by name for binary search.
constexpr std::array<HtmlElement, 120> kHtmlElements = {{
    {"a", TagKind::inline_tag},        {"abbr", TagKind::inline_tag},
    {"address", TagKind::paragraph},       {"area", TagKind::inline_tag},
    {"article", TagKind::paragraph},       {"aside", TagKind::paragraph},
    {"audio", TagKind::inline_tag},    {"b", TagKind::inline_tag},
    {"base", TagKind::inline_tag},     {"bdi", TagKind::inline_tag},
    {"bdo", TagKind::inline_tag},      {"big", TagKind::inline_tag},
    {"blockquote", TagKind::paragraph},    {"body", TagKind::paragraph},
    {"br", TagKind::line},            {"button", TagKind::inline_tag},
    {"canvas", TagKind::inline_tag},   {"caption", TagKind::line},
    {"center", TagKind::paragraph},        {"cite", TagKind::inline_tag},
    {"code", TagKind::inline_tag},     {"col", TagKind::inline_tag},
    {"colgroup", TagKind::inline_tag}, {"data", TagKind::inline_tag},
    {"datalist", TagKind::inline_tag}, {"dd", TagKind::line},
    {"del", TagKind::inline_tag},      {"details", TagKind::paragraph},
    {"dfn", TagKind::inline_tag},      {"dialog", TagKind::paragraph},
    {"div", TagKind::paragraph},           {"dl", TagKind::paragraph},
    {"dt", TagKind::line},            {"em", TagKind::inline_tag},
    {"embed", TagKind::inline_tag},    {"fieldset", TagKind::paragraph},
    {"figcaption", TagKind::line},    {"figure", TagKind::paragraph},
    {"font", TagKind::inline_tag},     {"footer", TagKind::paragraph},
    {"form", TagKind::paragraph},          {"frame", TagKind::line},
    {"frameset", TagKind::paragraph},      {"h1", TagKind::paragraph},
    {"h2", TagKind::paragraph},            {"h3", TagKind::paragraph},
    {"h4", TagKind::paragraph},            {"h5", TagKind::paragraph},
    {"h6", TagKind::paragraph},            {"head", TagKind::paragraph},
    {"header", TagKind::paragraph},        {"hgroup", TagKind::paragraph},
    {"hr", TagKind::paragraph},            {"html", TagKind::paragraph},
    {"i", TagKind::inline_tag},        {"iframe", TagKind::inline_tag},
    {"img", TagKind::inline_tag},      {"input", TagKind::inline_tag},
    {"ins", TagKind::inline_tag},      {"kbd", TagKind::inline_tag},
    {"label", TagKind::inline_tag},    {"legend", TagKind::line},
    {"li", TagKind::line},            {"link", TagKind::inline_tag},
    {"main", TagKind::paragraph},          {"map", TagKind::inline_tag},
    {"mark", TagKind::inline_tag},     {"math", TagKind::inline_tag},
    {"menu", TagKind::paragraph},          {"meta", TagKind::inline_tag},
    {"meter", TagKind::inline_tag},    {"nav", TagKind::paragraph},
    {"nobr", TagKind::inline_tag},     {"noscript", TagKind::paragraph},
    {"object", TagKind::inline_tag},   {"ol", TagKind::paragraph},
    {"optgroup", TagKind::line},      {"option", TagKind::line},
    {"output", TagKind::inline_tag},   {"p", TagKind::paragraph},
    {"param", TagKind::inline_tag},    {"picture", TagKind::inline_tag},
    {"pre", TagKind::paragraph},           {"progress", TagKind::inline_tag},
    {"q", TagKind::inline_tag},        {"rp", TagKind::inline_tag},
    {"rt", TagKind::inline_tag},       {"ruby", TagKind::inline_tag},
    {"s", TagKind::inline_tag},        {"samp", TagKind::inline_tag},
    {"script", TagKind::raw_text},     {"section", TagKind::paragraph},
    {"select", TagKind::line},        {"small", TagKind::inline_tag},
    {"source", TagKind::inline_tag},   {"span", TagKind::inline_tag},
    {"strike", TagKind::inline_tag},   {"strong", TagKind::inline_tag},
    {"style", TagKind::raw_text},      {"sub", TagKind::inline_tag},
    {"summary", TagKind::line},       {"sup", TagKind::inline_tag},
    {"svg", TagKind::inline_tag},      {"table", TagKind::paragraph},
    {"tbody", TagKind::paragraph},         {"td", TagKind::cell},
    {"template", TagKind::inline_tag}, {"textarea", TagKind::line},
    {"tfoot", TagKind::paragraph},         {"th", TagKind::cell},
    {"thead", TagKind::paragraph},         {"time", TagKind::inline_tag},
    {"title", TagKind::line},         {"tr", TagKind::line},
    {"track", TagKind::inline_tag},    {"tt", TagKind::inline_tag},
    {"u", TagKind::inline_tag},        {"ul", TagKind::paragraph},
    {"var", TagKind::inline_tag},      {"video", TagKind::inline_tag},
}};

template <class Table>
constexpr bool sorted_by_name(const Table& table) {
  for (size_t i = 1; i < table.size(); ++i) {
    if (!(table[i - 1].name < table[i].name)) return false;
  }
  return true;
}
static_assert(sorted_by_name(kHtmlElements), "kHtmlElements must be sorted and full");

struct NamedEntity {
  std::string_view name;
  char32_t value;
};

// Sorted by name (byte order) for binary search.
constexpr std::array<NamedEntity, 38> kNamedEntities = {{
    {"amp", '&'},        {"apos", '\''},      {"bull", 0x2022},   {"cent", 0xA2},
    {"copy", 0xA9},      {"deg", 0xB0},       {"divide", 0xF7},   {"euro", 0x20AC},
    {"frac12", 0xBD},    {"frac14", 0xBC},    {"frac34", 0xBE},   {"gt", '>'},
    {"hellip", 0x2026},  {"iexcl", 0xA1},     {"iquest", 0xBF},   {"laquo", 0xAB},
    {"larr", 0x2190},    {"ldquo", 0x201C},   {"lsaquo", 0x2039}, {"lsquo", 0x2018},
    {"lt", '<'},         {"mdash", 0x2014},   {"middot", 0xB7},   {"nbsp", ' '},
    {"ndash", 0x2013},   {"para", 0xB6},      {"plusmn", 0xB1},   {"pound", 0xA3},
    {"quot", '"'},       {"raquo", 0xBB},     {"rarr", 0x2192},   {"rdquo", 0x201D},
    {"reg", 0xAE},       {"rsaquo", 0x203A},  {"rsquo", 0x2019},  {"sect", 0xA7},
    {"times", 0xD7},     {"trade", 0x2122},
}};

static_assert(sorted_by_name(kNamedEntities), "kNamedEntities must be sorted and full");

bool is_ascii_alpha(char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }
bool is_ascii_alnum(char c) { return is_ascii_alpha(c) || is_ascii_digit(c); }
bool is_hex_digit(char c) { return is_ascii_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); }
bool is_ascii_space(char c) { return c == ' ' || (c >= 9 && c <= 13); }
char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool starts_with_icase(std::string_view text, size_t pos, std::string_view prefix) {
  if (text.size() - pos < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (ascii_lower(text[pos + i]) != prefix[i]) return false;
  }
  return true;
}

size_t find_icase(std::string_view text, size_t from, std::string_view needle) {
  for (size_t pos = from; pos + needle.size() <= text.size(); ++pos) {
    if (starts_with_icase(text, pos, needle)) return pos;
  }
  return std::string_view::npos;
}

const HtmlElement* find_html_element(std::string_view lowercase_name) {
  auto it = std::lower_bound(kHtmlElements.begin(), kHtmlElements.end(), lowercase_name,
                             [](const HtmlElement& e, std::string_view n) { return e.name < n; });
  return (it != kHtmlElements.end() && it->name == lowercase_name) ? &*it : nullptr;
}

// Decodes the entity at text[pos] == '&' into `out`; returns its length, or 0 when there is none.
size_t decode_entity_at(std::string_view text, size_t pos, std::string& out) {
  size_t j = pos + 1;
  if (j < text.size() && text[j] == '#') {
    ++j;
    const bool hex = j < text.size() && (text[j] == 'x' || text[j] == 'X');
    if (hex) ++j;
    const size_t digits_begin = j;
    uint64_t value = 0;
    while (j < text.size() && (hex ? is_hex_digit(text[j]) : is_ascii_digit(text[j])) &&
           j - digits_begin < 8) {
      const char c = ascii_lower(text[j]);
      value = value * (hex ? 16 : 10) + static_cast<uint64_t>(is_ascii_digit(c) ? c - '0' : c - 'a' + 10);
      ++j;
    }
    if (j == digits_begin || j >= text.size() || text[j] != ';') return 0;
    const bool invalid = value == 0 || (value >= 0xD800 && value <= 0xDFFF) || value > 0x10FFFF;
    append_utf8(out, invalid ? kReplacementCharacter : static_cast<char32_t>(value));
    return j + 1 - pos;
  }
  const size_t name_begin = j;
  while (j < text.size() && is_ascii_alnum(text[j]) && j - name_begin < 10) ++j;
  if (j == name_begin || j >= text.size() || text[j] != ';') return 0;
  const std::string_view name = text.substr(name_begin, j - name_begin);
  auto it = std::lower_bound(kNamedEntities.begin(), kNamedEntities.end(), name,
                             [](const NamedEntity& e, std::string_view n) { return e.name < n; });
  if (it == kNamedEntities.end() || it->name != name) return 0;
  append_utf8(out, it->value);
  return j + 1 - pos;
}

struct ParsedTag {
  size_t end = 0;  // one past '>'; 0 when text[pos] does not start a tag
  std::string name;  // lowercased
  bool closing = false;
  bool self_closing = false;
};

ParsedTag parse_tag(std::string_view text, size_t pos) {
  ParsedTag tag;
  size_t j = pos + 1;
  if (j < text.size() && text[j] == '/') {
    tag.closing = true;
    ++j;
  }
  if (j >= text.size() || !is_ascii_alpha(text[j])) return tag;
  const size_t name_begin = j;
  while (j < text.size() && (is_ascii_alnum(text[j]) || text[j] == ':' || text[j] == '.' ||
                             text[j] == '_' || text[j] == '-')) {
    ++j;
  }
  if (j >= text.size()) return tag;
  if (!(is_ascii_space(text[j]) || text[j] == '/' || text[j] == '>')) return tag;
  const size_t name_end = j;
  const size_t limit = std::min(text.size(), pos + kMaxTagBytes);
  char quote = 0;
  for (; j < limit; ++j) {
    const char c = text[j];
    if (quote != 0) {
      if (c == quote) quote = 0;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '<') {
      return tag;
    } else if (c == '>') {
      break;
    }
  }
  if (j >= limit) return tag;
  tag.end = j + 1;
  tag.self_closing = text[j - 1] == '/';
  tag.name.resize(name_end - name_begin);
  for (size_t i = name_begin; i < name_end; ++i) tag.name[i - name_begin] = ascii_lower(text[i]);
  return tag;
}

// Makes `out` (when not empty) end in at least `newlines` newlines.
void end_line(std::string& out, int newlines) {
  if (out.empty()) return;
  int present = 0;
  for (size_t i = out.size(); i > 0 && out[i - 1] == '\n' && present < newlines; --i) ++present;
  out.append(static_cast<size_t>(newlines - present), '\n');
}

// Spaces and tabs collapsed, lines trimmed, blank-line runs reduced to one, ends trimmed.
std::string tidy_whitespace(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_blank = false;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string line;
    bool pending_space = false;
    for (size_t i = pos; i < end; ++i) {
      const char c = text[i];
      if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
        pending_space = true;
      } else {
        if (pending_space && !line.empty()) line.push_back(' ');
        pending_space = false;
        line.push_back(c);
      }
    }
    if (line.empty()) {
      pending_blank = !out.empty();
    } else {
      if (!out.empty()) out += pending_blank ? "\n\n" : "\n";
      pending_blank = false;
      out += line;
    }
    pos = end + 1;
  }
  return out;
}

// One pass over `text`: markup (unless entities_only) and entities.
std::string process_markup(std::string_view text, MarkupMode mode, bool entities_only,
                           size_t* changed) {
  std::string out;
  out.reserve(text.size());
  size_t count = 0;
  bool removed_markup = false;
  size_t pos = 0;
  while (pos < text.size()) {
    const char* next = static_cast<const char*>(
        std::memchr(text.data() + pos, entities_only ? '&' : '<', text.size() - pos));
    if (!entities_only) {
      const char* amp = static_cast<const char*>(std::memchr(text.data() + pos, '&',
                                                             text.size() - pos));
      if (amp != nullptr && (next == nullptr || amp < next)) next = amp;
    }
    if (next == nullptr) {
      out.append(text.data() + pos, text.size() - pos);
      break;
    }
    const size_t at = static_cast<size_t>(next - text.data());
    out.append(text.data() + pos, at - pos);
    pos = at;
    if (text[at] == '&') {
      const size_t length = decode_entity_at(text, at, out);
      if (length == 0) {
        out.push_back('&');
        pos = at + 1;
      } else {
        ++count;
        pos = at + length;
      }
      continue;
    }
    // text[at] == '<'
    if (text.compare(at, 4, "<!--") == 0) {
      const size_t close = text.find("-->", at + 4);
      if (close != std::string_view::npos) {
        pos = close + 3;
        ++count;
        removed_markup = true;
        continue;
      }
    } else if (text.compare(at, 9, "<![CDATA[") == 0) {
      const size_t close = text.find("]]>", at + 9);
      if (close != std::string_view::npos) {
        out.append(text.data() + at + 9, close - at - 9);
        pos = close + 3;
        ++count;
        removed_markup = true;
        continue;
      }
    } else if (at + 1 < text.size() && (text[at + 1] == '?' ||
                                        (text[at + 1] == '!' && at + 2 < text.size() &&
                                         is_ascii_alpha(text[at + 2])))) {
      const size_t close = text.find('>', at + 2);
      if (close != std::string_view::npos && close - at < kMaxTagBytes) {
        pos = close + 1;
        ++count;
        removed_markup = true;
        continue;
      }
    } else {
      const ParsedTag tag = parse_tag(text, at);
      if (tag.end != 0) {
        const HtmlElement* element = find_html_element(tag.name);
        if (element != nullptr || mode == MarkupMode::xml) {
          ++count;
          removed_markup = true;
          pos = tag.end;
          const TagKind kind = element != nullptr ? element->kind : TagKind::cell;
          if (kind == TagKind::line) {
            end_line(out, 1);
          } else if (kind == TagKind::paragraph) {
            end_line(out, 2);
          } else if (kind == TagKind::cell) {
            out.push_back(' ');
          } else if (kind == TagKind::raw_text && !tag.closing && !tag.self_closing) {
            // Drop the content up to and including the closing tag (or to the end).
            const std::string closing = "</" + tag.name;
            const size_t close = find_icase(text, tag.end, closing);
            const size_t close_end = close == std::string_view::npos
                                         ? std::string_view::npos
                                         : text.find('>', close + closing.size());
            pos = close_end == std::string_view::npos ? text.size() : close_end + 1;
            end_line(out, 1);
          }
          continue;
        }
      }
    }
    out.push_back('<');
    pos = at + 1;
  }
  if (changed != nullptr) *changed = count;
  return removed_markup ? tidy_whitespace(out) : out;
}

bool is_url_char(std::string_view text, size_t pos, size_t& length) {
  const unsigned char b = static_cast<unsigned char>(text[pos]);
  length = 1;
  if (b < 0x80) return b > 0x20 && b != 0x7F && b != '<' && b != '>' && b != '"';
  const DecodedCodePoint decoded = decode_utf8(text, pos);
  length = decoded.length;
  return !is_space(decoded.value);
}

// After a removal: drop one space when the text kept so far ends in whitespace (or is empty).
size_t skip_doubled_space(const std::string& out, std::string_view text, size_t pos) {
  if (pos < text.size() && text[pos] == ' ' &&
      (out.empty() || out.back() == ' ' || out.back() == '\n')) {
    return pos + 1;
  }
  return pos;
}

bool is_local_part_char(char c) {
  return is_ascii_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
bool is_domain_char(char c) { return is_ascii_alnum(c) || c == '.' || c == '-'; }

// Checks text[begin, end) as a dotted domain whose last label is 2+ letters.
bool valid_domain(std::string_view domain) {
  if (domain.empty() || domain.front() == '.' || domain.find("..") != std::string_view::npos) {
    return false;
  }
  const size_t last_dot = domain.rfind('.');
  if (last_dot == std::string_view::npos) return false;
  const std::string_view tld = domain.substr(last_dot + 1);
  return tld.size() >= 2 && std::all_of(tld.begin(), tld.end(), is_ascii_alpha);
}

}  // namespace

std::string strip_markup(std::string_view text, MarkupMode mode, size_t* removed) {
  if (mode == MarkupMode::off) {
    if (removed != nullptr) *removed = 0;
    return std::string(text);
  }
  return process_markup(text, mode, false, removed);
}

std::string decode_entities(std::string_view text, size_t* decoded) {
  return process_markup(text, MarkupMode::off, true, decoded);
}

std::string remove_urls(std::string_view text, size_t* removed) {
  static constexpr std::array<std::string_view, 4> kPrefixes = {"http://", "https://", "ftp://",
                                                                "www."};
  std::string out;
  out.reserve(text.size());
  size_t count = 0, copied = 0, pos = 0;
  while (pos < text.size()) {
    const char c = text[pos];
    const bool word_start = pos == 0 || !(is_ascii_alnum(text[pos - 1]) || text[pos - 1] == '.' ||
                                          text[pos - 1] == '/' || text[pos - 1] == '@');
    if (!word_start || !(c == 'h' || c == 'H' || c == 'f' || c == 'F' || c == 'w' || c == 'W')) {
      ++pos;
      continue;
    }
    size_t prefix = 0;
    for (std::string_view p : kPrefixes) {
      if (starts_with_icase(text, pos, p)) prefix = p.size();
    }
    if (prefix == 0) {
      ++pos;
      continue;
    }
    size_t end = pos + prefix, length;
    while (end < text.size() && is_url_char(text, end, length)) end += length;
    // Trailing punctuation and unbalanced closing brackets belong to the sentence.
    for (bool trimmed = true; trimmed && end > pos + prefix;) {
      trimmed = false;
      const char last = text[end - 1];
      const std::string_view url = text.substr(pos, end - pos);
      if (std::strchr(".,;:!?'\"", last) != nullptr ||
          (last == ')' && std::count(url.begin(), url.end(), '(') < std::count(url.begin(), url.end(), ')')) ||
          (last == ']' && std::count(url.begin(), url.end(), '[') < std::count(url.begin(), url.end(), ']'))) {
        --end;
        trimmed = true;
      }
    }
    if (end == pos + prefix) {
      pos += prefix;
      continue;
    }
    out.append(text.data() + copied, pos - copied);
    ++count;
    copied = skip_doubled_space(out, text, end);
    pos = end;
  }
  out.append(text.data() + copied, text.size() - copied);
  if (removed != nullptr) *removed = count;
  return out;
}

std::string remove_emails(std::string_view text, size_t* removed) {
  std::string out;
  out.reserve(text.size());
  size_t count = 0, copied = 0;
  size_t at = text.find('@');
  while (at != std::string_view::npos) {
    size_t begin = at;
    while (begin > copied && is_local_part_char(text[begin - 1])) --begin;
    while (begin < at && text[begin] == '.') ++begin;
    size_t end = at + 1;
    while (end < text.size() && is_domain_char(text[end])) ++end;
    while (end > at + 1 && (text[end - 1] == '.' || text[end - 1] == '-')) --end;
    if (begin < at && valid_domain(text.substr(at + 1, end - at - 1))) {
      out.append(text.data() + copied, begin - copied);
      ++count;
      copied = skip_doubled_space(out, text, end);
      at = text.find('@', copied);
    } else {
      at = text.find('@', at + 1);
    }
  }
  out.append(text.data() + copied, text.size() - copied);
  if (removed != nullptr) *removed = count;
  return out;
}

std::string remove_separator_tokens(std::string_view text, size_t* removed) {
  std::string out;
  size_t count = 0, copied = 0;
  for (size_t at = text.find(kDocumentSeparator); at != std::string_view::npos;
       at = text.find(kDocumentSeparator, copied)) {
    if (count == 0) out.reserve(text.size());
    out.append(text.data() + copied, at - copied);
    copied = at + kDocumentSeparator.size();
    ++count;
  }
  if (count == 0) out.assign(text);
  else out.append(text.data() + copied, text.size() - copied);
  if (removed != nullptr) *removed = count;
  return out;
}

}  // namespace frugal::clean
