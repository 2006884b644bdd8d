// One document through the transforms and the filter rules (see document_filter.h).
#include "data/clean/document_filter.h"

#include <cstring>
#include <utility>

#include "data/clean/markup.h"
#include "data/clean/quality_rules.h"
#include "data/clean/unicode_text.h"

namespace frugal::clean {
namespace {

// Replaces `text` with `next` and records the effect when the text changed.
void apply(std::string& text, std::string next, size_t changes, TransformEffect& effect) {
  if (changes == 0 && next == text) return;
  effect.changed = true;
  effect.bytes_removed += static_cast<int64_t>(text.size()) - static_cast<int64_t>(next.size());
  text = std::move(next);
}

bool has_non_space(std::string_view text) { return !trim_space(text).empty(); }

}  // namespace

Rule first_failing_rule(std::string_view text, const CleanOptions& options) {
  if (rule_enabled(options, Rule::empty) && !has_non_space(text)) return Rule::empty;
  bool any_quality = false, any_repetition = false;
  for (int r = static_cast<int>(Rule::too_few_words); r <= static_cast<int>(Rule::stop_words); ++r) {
    any_quality = any_quality || rule_enabled(options, static_cast<Rule>(r));
  }
  for (int r = static_cast<int>(Rule::duplicate_lines);
       r <= static_cast<int>(Rule::duplicate_10gram); ++r) {
    any_repetition = any_repetition || rule_enabled(options, static_cast<Rule>(r));
  }
  if (!any_quality && !any_repetition) return Rule::none;
  Words words;
  split_words(text, words);
  if (any_quality) {
    const Rule rule = check_quality(measure_quality(text, words, options.quality), options);
    if (rule != Rule::none) return rule;
  }
  if (any_repetition) return check_repetition(text, words, options);
  return Rule::none;
}

CleanedDocument clean_document(std::string_view raw, const CleanOptions& options) {
  CleanedDocument result;
  auto& effects = result.transforms;
  if (!is_valid_utf8(raw)) {
    if (options.invalid_utf8 == Utf8Policy::drop) {
      result.rule = rule_enabled(options, Rule::invalid_utf8) ? Rule::invalid_utf8 : Rule::none;
      if (result.rule != Rule::none) {
        result.dropped_bytes = static_cast<int64_t>(raw.size());
        return result;
      }
    }
    size_t replaced = 0;
    result.text = repair_utf8(raw, &replaced);
    effects[static_cast<int>(Transform::utf8_repair)].changed = true;
    effects[static_cast<int>(Transform::utf8_repair)].bytes_removed =
        static_cast<int64_t>(raw.size()) - static_cast<int64_t>(result.text.size());
  } else {
    result.text.assign(raw);
  }
  std::string& text = result.text;
  size_t changes = 0;
  if (options.remove_separator_tokens && text.find(kDocumentSeparator) != std::string::npos) {
    std::string next = remove_separator_tokens(text, &changes);
    apply(text, std::move(next), changes, effects[static_cast<int>(Transform::separator_tokens)]);
  }
  if (options.markup != MarkupMode::off &&
      (text.find('<') != std::string::npos || text.find('&') != std::string::npos)) {
    std::string next = strip_markup(text, options.markup, &changes);
    apply(text, std::move(next), changes, effects[static_cast<int>(Transform::markup)]);
  }
  if (options.remove_urls) {
    std::string next = remove_urls(text, &changes);
    apply(text, std::move(next), changes, effects[static_cast<int>(Transform::urls)]);
  }
  if (options.remove_emails && text.find('@') != std::string::npos) {
    std::string next = remove_emails(text, &changes);
    apply(text, std::move(next), changes, effects[static_cast<int>(Transform::emails)]);
  }
  result.rule = first_failing_rule(text, options);
  if (result.rule != Rule::none) result.dropped_bytes = static_cast<int64_t>(text.size());
  return result;
}

}  // namespace frugal::clean
