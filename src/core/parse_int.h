// Strict decimal integer parsing for settings, options and metadata: the whole text must be one
// integer in int64 range (std::stoll syntax: optional leading whitespace and sign). Callers say
// what the value is and what range it must have in their own error messages.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

namespace frugal {

inline std::optional<int64_t> parse_int64(const std::string& text) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used == 0 || used != text.size()) return std::nullopt;
  return value;
}

}  // namespace frugal
