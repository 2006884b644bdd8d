// Gopher quality rules: measurements and checks (see quality_rules.h).
#include "data/clean/quality_rules.h"

#include <algorithm>
#include <limits>
#include <string>

namespace frugal::clean {
namespace {

bool is_bullet(char32_t c) {
  switch (c) {
    case '-': case '*': case 0x2022: case 0x2023: case 0x25E6: case 0x25AA: case 0x25CF:
    case 0x25CB: case 0x25A0: case 0x25A1: case 0x25BA: case 0x25B6: case 0x27A2: case 0x27A4:
    case 0x2013:
      return true;
    default:
      return false;
  }
}

bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

bool ends_with_ellipsis(std::string_view line) {
  return ends_with(line, "...") || ends_with(line, "\xE2\x80\xA6");  // U+2026
}

int64_t count_ellipses(std::string_view text) {
  int64_t count = 0;
  for (size_t pos = text.find("..."); pos != std::string_view::npos; pos = text.find("...", pos + 3)) {
    ++count;
  }
  for (size_t pos = text.find("\xE2\x80\xA6"); pos != std::string_view::npos;
       pos = text.find("\xE2\x80\xA6", pos + 3)) {
    ++count;
  }
  return count;
}

double ratio(double numerator, double denominator) {
  return denominator > 0 ? numerator / denominator : 0.0;
}

bool enabled(const CleanOptions& options, Rule rule) { return rule_enabled(options, rule); }

}  // namespace

QualityMetrics measure_quality(std::string_view text, const Words& words,
                               const QualityOptions& options) {
  QualityMetrics m;
  m.words = static_cast<int64_t>(words.words.size());
  size_t longest_stop_word = 0;
  for (const std::string& w : options.stop_words) longest_stop_word = std::max(longest_stop_word, w.size());

  int64_t alpha_words = 0;
  uint64_t non_symbol_chars = 0;
  std::string normalized;
  for (size_t i = 0; i < words.words.size(); ++i) {
    const std::string_view word = words.words[i];
    bool has_letter = false, has_digit = false;
    for (size_t pos = 0; pos < word.size() && !has_letter;) {
      const DecodedCodePoint decoded = decode_utf8(word, pos);
      has_letter = is_letter(decoded.value);
      has_digit = has_digit || is_digit(decoded.value);
      pos += decoded.length;
    }
    if (has_letter) ++alpha_words;
    if (has_letter || has_digit) {
      ++m.non_symbol_words;
      non_symbol_chars += words.char_lengths[i];
    }
    // Stop words: only words that could be one after trimming punctuation.
    if (has_letter && word.size() <= longest_stop_word + 8) {
      normalize_word(word, normalized);
      if (std::find(options.stop_words.begin(), options.stop_words.end(), normalized) !=
          options.stop_words.end()) {
        ++m.stop_words;
      }
    }
  }
  m.mean_word_length = ratio(static_cast<double>(non_symbol_chars), static_cast<double>(m.non_symbol_words));
  m.alpha_word_fraction = ratio(static_cast<double>(alpha_words), static_cast<double>(m.words));

  const int64_t hashes = static_cast<int64_t>(std::count(text.begin(), text.end(), '#'));
  const int64_t ellipses = count_ellipses(text);
  // With no words, any symbol is infinitely many per word.
  const double no_words = std::numeric_limits<double>::infinity();
  m.hash_ratio = m.non_symbol_words > 0 ? static_cast<double>(hashes) / static_cast<double>(m.non_symbol_words)
                                         : (hashes > 0 ? no_words : 0.0);
  m.ellipsis_ratio = m.non_symbol_words > 0
                         ? static_cast<double>(ellipses) / static_cast<double>(m.non_symbol_words)
                         : (ellipses > 0 ? no_words : 0.0);

  int64_t bullet_lines = 0, ellipsis_lines = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = trim_space(text.substr(pos, end - pos));
    if (!line.empty()) {
      ++m.lines;
      if (is_bullet(decode_utf8(line, 0).value)) ++bullet_lines;
      if (ends_with_ellipsis(line)) ++ellipsis_lines;
    }
    pos = end + 1;
  }
  m.bullet_line_fraction = ratio(static_cast<double>(bullet_lines), static_cast<double>(m.lines));
  m.ellipsis_line_fraction = ratio(static_cast<double>(ellipsis_lines), static_cast<double>(m.lines));
  return m;
}

Rule check_quality(const QualityMetrics& m, const CleanOptions& options) {
  const QualityOptions& q = options.quality;
  if (enabled(options, Rule::too_few_words) && m.non_symbol_words < q.min_words) {
    return Rule::too_few_words;
  }
  if (enabled(options, Rule::too_many_words) && m.non_symbol_words > q.max_words) {
    return Rule::too_many_words;
  }
  if (enabled(options, Rule::mean_word_length) &&
      (m.mean_word_length < q.min_mean_word_length || m.mean_word_length > q.max_mean_word_length)) {
    return Rule::mean_word_length;
  }
  if (enabled(options, Rule::symbol_ratio) &&
      (m.hash_ratio > q.max_symbol_word_ratio || m.ellipsis_ratio > q.max_symbol_word_ratio)) {
    return Rule::symbol_ratio;
  }
  if (enabled(options, Rule::bullet_lines) && m.bullet_line_fraction > q.max_bullet_line_fraction) {
    return Rule::bullet_lines;
  }
  if (enabled(options, Rule::ellipsis_lines) &&
      m.ellipsis_line_fraction > q.max_ellipsis_line_fraction) {
    return Rule::ellipsis_lines;
  }
  if (enabled(options, Rule::alpha_words) && m.alpha_word_fraction < q.min_alpha_word_fraction) {
    return Rule::alpha_words;
  }
  if (enabled(options, Rule::stop_words) && m.stop_words < q.min_stop_words) {
    return Rule::stop_words;
  }
  return Rule::none;
}

}  // namespace frugal::clean
