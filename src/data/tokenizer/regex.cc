// PCRE2 wrapper: Oniguruma-compatible translation, JIT compilation, onig-style match iteration.
#include "data/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

namespace frugal::tok {
namespace {

// Oniguruma's \s in Unicode mode, as the body of a character class.
constexpr std::string_view kSpaceBody = R"(\x{09}-\x{0D}\x{85}\p{Zs}\p{Zl}\p{Zp})";
// Oniguruma's \w in Unicode mode.
constexpr std::string_view kWordBody = R"(\p{L}\p{M}\p{N}\p{Pc})";
constexpr std::string_view kHexBody = "0-9a-fA-F";

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

// Per-thread match state: one match-data block (whole-match offsets only) and a JIT stack large
// enough for long runs of white space under look-ahead.
struct ThreadMatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  ThreadMatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, nullptr);
    FRUGAL_CHECK(data && context && jit_stack, "PCRE2: out of memory creating match state");
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

ThreadMatchState& thread_state() {
  thread_local ThreadMatchState state;
  return state;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

}  // namespace

std::string Regex::translate_oniguruma(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  int class_depth = 0;  // nested Oniguruma classes are flattened into one PCRE2 class
  size_t i = 0;
  const auto unsupported = [&](std::string_view what) {
    fail("regex '{}': {} is not supported (Oniguruma-only syntax)", p, what);
  };
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      const bool in_class = class_depth > 0;
      std::string_view body;
      bool negated = false;
      switch (d) {
        case 's': body = kSpaceBody; break;
        case 'S': body = kSpaceBody; negated = true; break;
        case 'w': body = kWordBody; break;
        case 'W': body = kWordBody; negated = true; break;
        case 'h': body = kHexBody; break;
        case 'H': body = kHexBody; negated = true; break;
        default: break;
      }
      if (!body.empty()) {
        if (!in_class) {
          out += negated ? "[^" : "[";
          out += body;
          out += ']';
        } else if (!negated) {
          out += body;
        } else if (d == 'H') {
          unsupported("\\H inside a character class");
        } else {
          out += '\\';
          out += d;  // PCRE2's \S / \W inside a class (differs only on U+180E / M, Pc)
        }
        i += 2;
        continue;
      }
      if (d == 'u' && i + 5 < p.size() && is_hex(p[i + 2]) && is_hex(p[i + 3]) &&
          is_hex(p[i + 4]) && is_hex(p[i + 5])) {
        out += "\\x{";
        out.append(p.substr(i + 2, 4));
        out += '}';
        i += 6;
        continue;
      }
      if (d == 'Q') {  // quoted run: copy through \E untouched
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i, stop - i));
        i = stop;
        continue;
      }
      out += c;
      out += d;
      i += 2;
      continue;
    }
    if (c == '[') {
      if (class_depth > 0 && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX [:name:]
        const size_t end = p.find(":]", i + 2);
        if (end == std::string_view::npos) unsupported("an unterminated POSIX class");
        out.append(p.substr(i, end + 2 - i));
        i = end + 2;
        continue;
      }
      if (class_depth > 0) {  // nested class: union, flattened
        if (i + 1 < p.size() && p[i + 1] == '^') unsupported("a negated nested character class");
        ++class_depth;
        ++i;
        continue;
      }
      class_depth = 1;
      out += '[';
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += "\\]", ++i;  // leading ']' is literal
      continue;
    }
    if (c == ']' && class_depth > 0) {
      if (--class_depth == 0) out += ']';
      ++i;
      continue;
    }
    if (c == '&' && class_depth > 0 && i + 1 < p.size() && p[i + 1] == '&')
      unsupported("class intersection '&&'");
    out += c;
    ++i;
  }
  return out;
}

std::string Regex::escape(std::string_view literal) {
  std::string out;
  out.reserve(literal.size() * 2);
  for (char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    const bool alnum = (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z');
    if (u < 0x80 && !alnum) out += '\\';
    out += c;
  }
  return out;
}

Regex::Regex(std::string_view pattern, std::string_view what, bool translate) {
  translated_ = translate ? translate_oniguruma(pattern) : std::string(pattern);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated_.data()),
                                   translated_.size(), PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE,
                                   &error_code, &error_offset, nullptr);
  FRUGAL_CHECK(code != nullptr, "{}: cannot compile regex '{}' (as PCRE2 '{}'): {} at offset {}",
               what, pattern, translated_, pcre2_message(error_code), error_offset);
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // on failure PCRE2 interprets: same results
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, std::vector<std::pair<uint32_t, uint32_t>>& out) const {
  ThreadMatchState& state = thread_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t search_from = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (search_from <= n) {
    const int rc = pcre2_match(static_cast<pcre2_code*>(code_), subject, n, search_from,
                               PCRE2_NO_UTF_CHECK, state.data, state.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    FRUGAL_CHECK(rc >= 0, "regex '{}': matching failed: {}", translated_, pcre2_message(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
    const size_t start = ovector[0], end = ovector[1];
    if (start == end && have_last && last_match_end == end) {
      // An empty match right after the previous match: step over one character.
      if (search_from >= n) break;
      ++search_from;
      while (search_from < n && (static_cast<uint8_t>(text[search_from]) & 0xC0) == 0x80)
        ++search_from;
      continue;
    }
    out.emplace_back(static_cast<uint32_t>(start), static_cast<uint32_t>(end));
    search_from = end;
    last_match_end = end;
    have_last = true;
  }
}

bool Regex::matches_at_start(std::string_view text) const {
  ThreadMatchState& state = thread_state();
  const int rc = pcre2_match(static_cast<pcre2_code*>(code_),
                             reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                             PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, state.data, state.context);
  return rc >= 0;
}

}  // namespace frugal::tok
