// Every setting of document cleaning and deduplication (`frugal data clean`), the rules and
// transforms it names, and the language presets.
//
// A document goes through, in this fixed order:
//   transforms (change the text; counted as documents changed and net bytes removed):
//     utf8_repair       invalid UTF-8 sequences -> U+FFFD (Utf8Policy::repair); with
//                       Utf8Policy::drop the document is dropped by the rule invalid_utf8 instead
//     separator_tokens  the literal "<|endoftext|>" removed from the text (it is the .txt document
//                       separator and the end-of-text special token)
//     markup            HTML/XML tags, comments, script/style blocks removed, entities decoded;
//                       Markdown and wiki markup are never altered
//     urls, emails      optional removal
//   rules (drop the document; the first failing rule wins, counted as documents and bytes):
//     invalid_utf8, empty, Gopher quality rules, Gopher repetition rules, exact_duplicate,
//     near_duplicate  (the enum order below is the evaluation order)
//
// Language: the Gopher quality rules were designed for English web text. `en` runs every rule.
// `other` (text with spaces between words, not English) turns off stop_words. `zh` (Chinese,
// Japanese and other text without spaces) turns off stop_words, mean_word_length and alpha_words;
// there each CJK character counts as one word (see unicode_text.h), so the word-count, symbol and
// repetition rules work on characters, and MinHash shingles default to 2 characters.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace frugal::clean {

enum class Language { en, other, zh };
// How .txt input splits into documents: at separator lines "<|endoftext|>" only (a file without
// them is one document), or also at blank lines (every paragraph a document).
enum class TextDocuments { separator, paragraph };
enum class Utf8Policy { repair, drop };
// html: only tags whose name is an HTML element (so "<stdio.h>" or "if a < b" in plain text
// stay); xml: any well-formed tag.
enum class MarkupMode { off, html, xml };

// Drop rules in evaluation order. `none` (last) means "kept".
enum class Rule : int {
  invalid_utf8,
  empty,  // nothing but whitespace left after the transforms
  too_few_words,
  too_many_words,
  mean_word_length,
  symbol_ratio,  // '#' per word or ellipses per word too high
  bullet_lines,
  ellipsis_lines,
  alpha_words,
  stop_words,
  duplicate_lines,
  duplicate_paragraphs,
  duplicate_line_chars,
  duplicate_paragraph_chars,
  top_2gram,
  top_3gram,
  top_4gram,
  duplicate_5gram,
  duplicate_6gram,
  duplicate_7gram,
  duplicate_8gram,
  duplicate_9gram,
  duplicate_10gram,
  exact_duplicate,
  near_duplicate,
  none,
};
constexpr int kRuleCount = static_cast<int>(Rule::none);

enum class Transform : int { utf8_repair, separator_tokens, markup, urls, emails, count };
constexpr int kTransformCount = static_cast<int>(Transform::count);

// Gopher quality filters (Rae et al. 2021, MassiveText, appendix A). Words are whitespace tokens
// (each CJK character one token); a "non-symbol word" has at least one letter or digit.
struct QualityOptions {
  int64_t min_words = 50;  // non-symbol words
  int64_t max_words = 100000;
  double min_mean_word_length = 3;  // code points, over non-symbol words
  double max_mean_word_length = 10;
  double max_symbol_word_ratio = 0.1;          // '#' count and ellipsis count, each per word
  double max_bullet_line_fraction = 0.9;       // non-empty lines starting with a bullet
  double max_ellipsis_line_fraction = 0.3;     // non-empty lines ending in "..." or U+2026
  double min_alpha_word_fraction = 0.8;        // words with at least one letter
  int64_t min_stop_words = 2;                  // occurrences of stop words (lowercased)
  std::vector<std::string> stop_words = {"the", "be", "to", "of", "and", "that", "have", "with"};
};

// Gopher repetition filters. Line and paragraph rules compare whole (whitespace-trimmed) lines
// and blank-line-separated paragraphs; n-gram rules work on words (characters for CJK).
struct RepetitionOptions {
  double max_duplicate_line_fraction = 0.30;
  double max_duplicate_paragraph_fraction = 0.30;
  double max_duplicate_line_char_fraction = 0.20;
  double max_duplicate_paragraph_char_fraction = 0.20;
  std::array<double, 3> max_top_ngram_char_fraction = {0.20, 0.18, 0.16};  // n = 2, 3, 4
  std::array<double, 6> max_duplicate_ngram_char_fraction = {0.15, 0.14, 0.13,
                                                             0.12, 0.11, 0.10};  // n = 5..10
};

struct DedupOptions {
  bool exact = true;  // xxhash64 of the normalized text (lowercased ASCII, whitespace collapsed)
  bool near = true;   // MinHash + LSH
  double threshold = 0.8;  // estimated Jaccard similarity of shingle sets that makes a duplicate
  int num_perm = 128;      // MinHash functions
  int shingle_size = 0;    // words (CJK: characters) per shingle; 0 = 1 (en, other) or 2 (zh)
  int bands = 0;           // LSH shape; 0 = chosen from threshold and num_perm
  int rows = 0;
  uint64_t seed = 0x6672756761ull;  // MinHash function seeds
};

struct CleanOptions {
  Language language = Language::en;
  std::string jsonl_text_field = "text";  // the string field holding a JSONL record's text
  TextDocuments text_documents = TextDocuments::separator;
  Utf8Policy invalid_utf8 = Utf8Policy::repair;
  bool remove_separator_tokens = true;
  MarkupMode markup = MarkupMode::html;
  bool remove_urls = false;
  bool remove_emails = false;
  bool quality_rules = true;     // all Gopher quality rules
  bool repetition_rules = true;  // all Gopher repetition rules
  std::vector<Rule> disabled_rules;  // any rule turned off one by one
  QualityOptions quality;
  RepetitionOptions repetition;
  DedupOptions dedup;

  int threads = 0;                          // 0 = OpenMP's default
  size_t batch_bytes = size_t{32} << 20;    // documents processed together (memory bound)
  size_t batch_documents = size_t{1} << 16;
  int zstd_level = 3;                       // output compression when the name ends in .zst
  // Called once per warning (a malformed JSONL line, an input skipped), in input order, from the
  // calling thread. The report keeps the first kMaxStoredWarnings as well.
  std::function<void(const std::string&)> on_warning;
};

std::string_view rule_name(Rule rule);
std::string_view transform_name(Transform transform);
std::string_view language_name(Language language);
// Parsers for settings given as text (CLI, TOML); an unknown name throws frugal::Error listing
// the accepted ones.
Rule parse_rule(std::string_view name);
Language parse_language(std::string_view name);  // "en", "other", "zh" (alias "cjk")
Utf8Policy parse_utf8_policy(std::string_view name);  // "repair", "drop"
MarkupMode parse_markup_mode(std::string_view name);  // "off", "html", "xml"
TextDocuments parse_text_documents(std::string_view name);  // "separator", "paragraph"

// Whether `rule` runs under these options (master switches, disabled_rules, language, policy).
bool rule_enabled(const CleanOptions& options, Rule rule);
// The shingle size in effect (resolves dedup.shingle_size = 0 by language).
int effective_shingle_size(const CleanOptions& options);
// Throws frugal::Error naming the setting when a value is out of range.
void validate_options(const CleanOptions& options);

}  // namespace frugal::clean
