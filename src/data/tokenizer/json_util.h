// Checked access to tokenizer.json values: every type or presence problem throws frugal::Error
// naming the file and the key path ("tokenizer.json: pre_tokenizer.pretokenizers[1].behavior
// must be a string").
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "core/error.h"

namespace frugal::tok {

inline const nlohmann::json& json_member(const nlohmann::json& object, std::string_view key,
                                         std::string_view file, std::string_view where) {
  FRUGAL_CHECK(object.is_object(), "{}: {} must be a JSON object", file, where);
  const auto it = object.find(key);
  FRUGAL_CHECK(it != object.end(), "{}: {} has no key '{}'", file, where, key);
  return *it;
}

inline bool json_bool(const nlohmann::json& object, std::string_view key, bool fallback,
                      std::string_view file, std::string_view where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  FRUGAL_CHECK(it->is_boolean(), "{}: {}.{} must be true or false", file, where, key);
  return it->get<bool>();
}

inline std::string json_string(const nlohmann::json& object, std::string_view key,
                               std::string_view file, std::string_view where) {
  const nlohmann::json& value = json_member(object, key, file, where);
  FRUGAL_CHECK(value.is_string(), "{}: {}.{} must be a string", file, where, key);
  return value.get<std::string>();
}

// The "type" of a component object, or "" when it has none.
inline std::string json_type(const nlohmann::json& object, std::string_view file,
                             std::string_view where) {
  FRUGAL_CHECK(object.is_object(), "{}: {} must be a JSON object or null", file, where);
  const auto it = object.find("type");
  if (it == object.end()) return "";
  FRUGAL_CHECK(it->is_string(), "{}: {}.type must be a string", file, where);
  return it->get<std::string>();
}

}  // namespace frugal::tok
