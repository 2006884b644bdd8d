// PCRE2 (UTF + UCP + JIT) regular expressions with the matching semantics the Hugging Face
// `tokenizers` library gets from Oniguruma (Ruby syntax) for pre-tokenizer patterns.
//
// translate_oniguruma() rewrites the few constructs whose meaning differs between the engines:
//   \s, \S   Oniguruma: U+0009..U+000D, U+0085, Zs, Zl, Zp. (PCRE2's \s adds U+180E.)
//   \w, \W   Oniguruma: L, M, N, Pc. (PCRE2 10.42's UCP \w is L, N and '_'.)
//   \h, \H   Oniguruma: hexadecimal digit. (PCRE2: horizontal white space.)
//   \uHHHH   Oniguruma's escape, written \x{HHHH} for PCRE2.
// Inside a character class \S and \W are left to PCRE2 (they cannot be written as a union);
// \d is \p{Nd} in both. '^' and '$' are line anchors in Ruby syntax, so patterns compile with
// PCRE2_MULTILINE. Everything else is passed through; a pattern PCRE2 rejects is an error.
//
// find_all() follows the onig crate's find_iter: leftmost matches, left to right, not
// overlapping; an empty match right where the previous match ended is skipped by advancing one
// character. Subjects must be valid UTF-8 (the tokenizer sanitises input first). A Regex is
// immutable after construction and safe to use from many threads (match data is per thread).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace frugal::tok {

class Regex {
 public:
  // `pattern` in Oniguruma syntax (translated unless translate is false); `what` names the
  // pattern's origin (file and key) in errors.
  Regex(std::string_view pattern, std::string_view what, bool translate = true);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Byte ranges [start, end) of all matches in text.
  void find_all(std::string_view text, std::vector<std::pair<uint32_t, uint32_t>>& out) const;
  // True when the pattern matches at offset 0 of text.
  bool matches_at_start(std::string_view text) const;

  const std::string& pcre2_pattern() const { return translated_; }

  // Oniguruma -> PCRE2 rewrite described above.
  static std::string translate_oniguruma(std::string_view pattern);
  // A pattern matching `literal` exactly (what Split's {"String": ...} means).
  static std::string escape(std::string_view literal);

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  std::string translated_;
};

}  // namespace frugal::tok
