// Helpers shared by the tokenizer tests: temporary directories, file writing, a tokenizer.json
// with the full 256-byte vocabulary (id = byte value) plus hand-written merges, and the real-data
// location.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"

namespace frugal::test {

namespace fs = std::filesystem;

using ::frugal::testing::TempDir;

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// A tokenizer.json document: vocabulary = the 256 byte-level characters with id = byte value,
// then one token per merge (ids 256, 257, ... in merge order). Merges are given as raw bytes.
inline nlohmann::json byte_vocab_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                      const nlohmann::json& pre_tokenizer) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[tok::byte_to_unicode_utf8(static_cast<uint8_t>(b))] = b;
  nlohmann::json merge_list = nlohmann::json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    const std::string left = tok::bytes_to_byte_level(a), right = tok::bytes_to_byte_level(b);
    merge_list.push_back(left + " " + right);  // legacy "a b" form
    if (!vocab.contains(left + right)) vocab[left + right] = next++;
  }
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", nlohmann::json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                       {"use_regex", true}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                     {"vocab", vocab}, {"merges", merge_list}}}};
}

inline nlohmann::json gpt2_pre_tokenizer() {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
}

inline nlohmann::json added_token(int id, const std::string& content, bool special,
                                  bool single_word = false, bool lstrip = false,
                                  bool rstrip = false, bool normalized = false) {
  return {{"id", id},           {"content", content}, {"single_word", single_word},
          {"lstrip", lstrip},   {"rstrip", rstrip},   {"normalized", normalized},
          {"special", special}};
}

// ../shared/data next to the project root, or "" when absent.
inline std::string shared_data_dir() {
  const fs::path dir = fs::path(FRUGAL_SOURCE_DIR) / ".." / "shared" / "data";
  return fs::is_directory(dir) ? dir.lexically_normal().string() : std::string();
}


}  // namespace frugal::test
