// Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis
// & Insights from Training Gopher", appendix A: the MassiveText filters), as measurements on one
// document plus the checks that compare them with the thresholds of clean_options.h.
//
// Definitions (words from split_words: whitespace tokens, each CJK character a word of its own;
// lines: split on '\n', whitespace-trimmed, empty ones ignored; paragraphs: runs of non-empty lines
// separated by blank lines; "chars" are code points):
//   non_symbol_words       words with at least one letter or digit (word-count and mean-length
//                          rules use these)
//   hash_ratio             occurrences of '#' / non_symbol_words
//   ellipsis_ratio         occurrences of "..." (non-overlapping) and U+2026 / non_symbol_words
//   bullet_line_fraction   lines starting with - * • ‣ ◦ ▪ ● ○ ■ □ ► ▶ ➢ ➤ – / lines
//   ellipsis_line_fraction lines ending in "..." or U+2026 / lines
//   alpha_word_fraction    words with at least one letter / words
//   stop_words             words (lowercased, outer punctuation trimmed) in the stop-word list
//   duplicate line/paragraph fraction: elements equal to an earlier element / elements;
//     char fraction: chars of those repeats / chars of all elements
//   top n-gram char fraction (n = 2..4): chars of the words covered by the occurrences of the most
//     frequent word n-gram / chars of all words; 0 when no n-gram occurs twice. Ties: the higher
//     count, then the longer n-gram, then the earlier first occurrence.
//   duplicate n-gram char fraction (n = 5..10): chars of the words covered by n-grams that repeat an
//     earlier occurrence (first occurrences not counted, overlaps counted once) / chars of words.
// N-grams are compared by a 64-bit hash of their words (collisions ~2^-64 per pair).
#pragma once

#include <cstdint>
#include <string_view>

#include "data/clean/clean_options.h"
#include "data/clean/unicode_text.h"

namespace frugal::clean {

struct QualityMetrics {
  int64_t words = 0;
  int64_t non_symbol_words = 0;
  double mean_word_length = 0;
  double hash_ratio = 0;
  double ellipsis_ratio = 0;
  int64_t lines = 0;  // non-empty lines
  double bullet_line_fraction = 0;
  double ellipsis_line_fraction = 0;
  double alpha_word_fraction = 0;
  int64_t stop_words = 0;
};

QualityMetrics measure_quality(std::string_view text, const Words& words,
                               const QualityOptions& options);
// The first quality rule (too_few_words .. stop_words) that fails and is enabled, or Rule::none.
Rule check_quality(const QualityMetrics& metrics, const CleanOptions& options);

struct LineDuplication {
  double line_fraction = 0;
  double paragraph_fraction = 0;
  double line_char_fraction = 0;
  double paragraph_char_fraction = 0;
};

LineDuplication measure_line_duplication(std::string_view text);
double top_ngram_char_fraction(const Words& words, int n);
double duplicate_ngram_char_fraction(const Words& words, int n);
// The first repetition rule (duplicate_lines .. duplicate_10gram) that fails and is enabled, or
// Rule::none. Stops measuring at the first failure.
Rule check_repetition(std::string_view text, const Words& words, const CleanOptions& options);

}  // namespace frugal::clean
