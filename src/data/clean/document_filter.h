// Cleaning of one document: the transforms, then the drop rules up to (not including) the
// deduplication rules, in the order of clean_options.h. Pure and thread-safe: the corpus pipeline
// runs it on many documents at once and gets the same result for any thread count.
//
// Byte accounting: a transform's bytes_removed is the size before minus the size after (negative
// when it grows the text: U+FFFD is 3 bytes, so repairing a lone invalid byte adds 2);
// dropped_bytes is the size of the text when the rule fired (the raw size for invalid_utf8).
// So for every document: raw size = final size + sum of bytes_removed + dropped_bytes.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "data/clean/clean_options.h"

namespace frugal::clean {

struct TransformEffect {
  bool changed = false;
  int64_t bytes_removed = 0;
};

struct CleanedDocument {
  std::string text;        // the cleaned text; empty when dropped by invalid_utf8
  Rule rule = Rule::none;  // the first rule that failed, or Rule::none when kept
  int64_t dropped_bytes = 0;
  std::array<TransformEffect, kTransformCount> transforms{};
  bool kept() const { return rule == Rule::none; }
};

CleanedDocument clean_document(std::string_view text, const CleanOptions& options);

// The rules after the transforms (empty, quality, repetition) on text that is already valid UTF-8
// and transformed; the first enabled rule that fails, or Rule::none.
Rule first_failing_rule(std::string_view text, const CleanOptions& options);

}  // namespace frugal::clean
