// Names, parsers, language presets and validation of the cleaning settings (see clean_options.h).
#include "data/clean/clean_options.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace frugal::clean {
namespace {

constexpr std::array<std::string_view, kRuleCount> kRuleNames = {
    "invalid_utf8",         "empty",
    "too_few_words",        "too_many_words",
    "mean_word_length",     "symbol_ratio",
    "bullet_lines",         "ellipsis_lines",
    "alpha_words",          "stop_words",
    "duplicate_lines",      "duplicate_paragraphs",
    "duplicate_line_chars", "duplicate_paragraph_chars",
    "top_2gram",            "top_3gram",
    "top_4gram",            "duplicate_5gram",
    "duplicate_6gram",      "duplicate_7gram",
    "duplicate_8gram",      "duplicate_9gram",
    "duplicate_10gram",     "exact_duplicate",
    "near_duplicate",
};

constexpr std::array<std::string_view, kTransformCount> kTransformNames = {
    "utf8_repair", "separator_tokens", "markup", "urls", "emails"};

bool is_quality_rule(Rule rule) {
  return rule >= Rule::too_few_words && rule <= Rule::stop_words;
}
bool is_repetition_rule(Rule rule) {
  return rule >= Rule::duplicate_lines && rule <= Rule::duplicate_10gram;
}

void check_fraction(double value, const char* name) {
  FRUGAL_CHECK(value >= 0 && value <= 1, "clean option {} = {}: must be in [0, 1]", name, value);
}

}  // namespace

std::string_view rule_name(Rule rule) {
  return rule == Rule::none ? std::string_view("kept") : kRuleNames[static_cast<int>(rule)];
}

std::string_view transform_name(Transform transform) {
  return kTransformNames[static_cast<int>(transform)];
}

std::string_view language_name(Language language) {
  switch (language) {
    case Language::en: return "en";
    case Language::other: return "other";
    case Language::zh: return "zh";
  }
  return "?";
}

Rule parse_rule(std::string_view name) {
  for (int i = 0; i < kRuleCount; ++i) {
    if (kRuleNames[i] == name) return static_cast<Rule>(i);
  }
  std::string all;
  for (std::string_view known : kRuleNames) all += (all.empty() ? "" : ", ") + std::string(known);
  fail("unknown cleaning rule '{}' (known rules: {})", name, all);
}

Language parse_language(std::string_view name) {
  if (name == "en") return Language::en;
  if (name == "other") return Language::other;
  if (name == "zh" || name == "cjk") return Language::zh;
  fail("unknown cleaning language '{}' (expected en, other or zh)", name);
}

Utf8Policy parse_utf8_policy(std::string_view name) {
  if (name == "repair") return Utf8Policy::repair;
  if (name == "drop") return Utf8Policy::drop;
  fail("unknown invalid-UTF-8 policy '{}' (expected repair or drop)", name);
}

MarkupMode parse_markup_mode(std::string_view name) {
  if (name == "off") return MarkupMode::off;
  if (name == "html") return MarkupMode::html;
  if (name == "xml") return MarkupMode::xml;
  fail("unknown markup mode '{}' (expected off, html or xml)", name);
}

TextDocuments parse_text_documents(std::string_view name) {
  if (name == "separator") return TextDocuments::separator;
  if (name == "paragraph") return TextDocuments::paragraph;
  fail("unknown text document split '{}' (expected separator or paragraph)", name);
}

bool rule_enabled(const CleanOptions& options, Rule rule) {
  if (rule == Rule::none) return false;
  if (std::find(options.disabled_rules.begin(), options.disabled_rules.end(), rule) !=
      options.disabled_rules.end()) {
    return false;
  }
  if (rule == Rule::invalid_utf8) return options.invalid_utf8 == Utf8Policy::drop;
  if (is_quality_rule(rule) && !options.quality_rules) return false;
  if (is_repetition_rule(rule) && !options.repetition_rules) return false;
  if (rule == Rule::exact_duplicate) return options.dedup.exact;
  if (rule == Rule::near_duplicate) return options.dedup.near;
  // English-specific rules.
  if (rule == Rule::stop_words) return options.language == Language::en;
  if (rule == Rule::mean_word_length || rule == Rule::alpha_words) {
    return options.language != Language::zh;
  }
  return true;
}

int effective_shingle_size(const CleanOptions& options) {
  if (options.dedup.shingle_size > 0) return options.dedup.shingle_size;
  return options.language == Language::zh ? 2 : 1;
}

void validate_options(const CleanOptions& options) {
  FRUGAL_CHECK(!options.jsonl_text_field.empty(), "clean option jsonl_text_field is empty");
  const QualityOptions& q = options.quality;
  FRUGAL_CHECK(q.min_words >= 0 && q.max_words >= q.min_words,
               "clean options min_words = {}, max_words = {}: need 0 <= min_words <= max_words",
               q.min_words, q.max_words);
  FRUGAL_CHECK(q.min_mean_word_length >= 0 && q.max_mean_word_length >= q.min_mean_word_length,
               "clean options min/max_mean_word_length = {}/{}: need 0 <= min <= max",
               q.min_mean_word_length, q.max_mean_word_length);
  FRUGAL_CHECK(q.max_symbol_word_ratio >= 0, "clean option max_symbol_word_ratio = {} < 0",
               q.max_symbol_word_ratio);
  check_fraction(q.max_bullet_line_fraction, "max_bullet_line_fraction");
  check_fraction(q.max_ellipsis_line_fraction, "max_ellipsis_line_fraction");
  check_fraction(q.min_alpha_word_fraction, "min_alpha_word_fraction");
  FRUGAL_CHECK(q.min_stop_words >= 0, "clean option min_stop_words = {} < 0", q.min_stop_words);
  const RepetitionOptions& r = options.repetition;
  check_fraction(r.max_duplicate_line_fraction, "max_duplicate_line_fraction");
  check_fraction(r.max_duplicate_paragraph_fraction, "max_duplicate_paragraph_fraction");
  check_fraction(r.max_duplicate_line_char_fraction, "max_duplicate_line_char_fraction");
  check_fraction(r.max_duplicate_paragraph_char_fraction, "max_duplicate_paragraph_char_fraction");
  for (double v : r.max_top_ngram_char_fraction) check_fraction(v, "max_top_ngram_char_fraction");
  for (double v : r.max_duplicate_ngram_char_fraction) {
    check_fraction(v, "max_duplicate_ngram_char_fraction");
  }
  const DedupOptions& d = options.dedup;
  FRUGAL_CHECK(d.threshold > 0 && d.threshold <= 1, "clean option dedup threshold = {}: must be "
               "in (0, 1]", d.threshold);
  FRUGAL_CHECK(d.num_perm >= 1 && d.num_perm <= 4096, "clean option num_perm = {}: must be in "
               "[1, 4096]", d.num_perm);
  FRUGAL_CHECK(d.shingle_size >= 0 && d.shingle_size <= 64, "clean option shingle_size = {}: "
               "must be in [0, 64]", d.shingle_size);
  FRUGAL_CHECK((d.bands == 0) == (d.rows == 0), "clean options bands = {}, rows = {}: give both "
               "or neither", d.bands, d.rows);
  FRUGAL_CHECK(d.bands >= 0 && d.rows >= 0 && int64_t{d.bands} * d.rows <= d.num_perm,
               "clean options bands = {}, rows = {}: bands * rows must not exceed num_perm = {}",
               d.bands, d.rows, d.num_perm);
  FRUGAL_CHECK(options.threads >= 0, "clean option threads = {} < 0", options.threads);
  FRUGAL_CHECK(options.batch_bytes >= 1 && options.batch_documents >= 1,
               "clean options batch_bytes and batch_documents must be at least 1");
  FRUGAL_CHECK(options.zstd_level >= -7 && options.zstd_level <= 22,
               "clean option zstd_level = {}: must be in [-7, 22]", options.zstd_level);
}

}  // namespace frugal::clean
