// Pre-tokenization of byte-level BPE: a sequence of Split steps, then ByteLevel, exactly as the
// Hugging Face `tokenizers` pre-tokenizers of those names.
//
// Split(pattern, behavior, invert): the pattern's matches (PCRE2, see regex.h) and the gaps
// between them cover the piece; `invert` swaps which are "matches"; then
//   Removed             drop the matches, keep the gaps
//   Isolated            every match and every gap is its own piece
//   MergedWithPrevious  a match joins the piece before it
//   MergedWithNext      a match joins the piece after it
//   Contiguous          consecutive pieces of the same kind join
// and empty pieces are dropped.
// ByteLevel(add_prefix_space, trim_offsets, use_regex): prepends ' ' to every piece that does not
// start with one (when add_prefix_space), then splits it with the GPT-2 pattern (when use_regex).
// trim_offsets only affects offsets, which frugal does not return; it is kept for saving.
// The byte -> unicode mapping of ByteLevel is implicit: pre-tokens stay raw bytes and the BPE
// model starts from the id of each byte's mapped character.
//
// frugal supports exactly this family: a lone ByteLevel, or a Sequence of Split steps ending in
// ByteLevel. Anything else is rejected with an error naming the file and the type.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer/regex.h"

namespace frugal::tok {

// GPT-2's pattern, used by ByteLevel when use_regex is true.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitConfig {
  std::string pattern;  // Oniguruma regex, or a literal string when is_regex is false
  bool is_regex = true;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

struct ByteLevelConfig {
  bool add_prefix_space = false;
  bool trim_offsets = true;
  bool use_regex = true;
};

struct PreTokenizerConfig {
  std::vector<SplitConfig> splits;  // applied in order, before ByteLevel
  ByteLevelConfig byte_level;

  // GPT-2 / RoBERTa style: ByteLevel(add_prefix_space=false, use_regex=true) alone.
  static PreTokenizerConfig gpt2();
  // DeepSeek-V3's tokenizer.json: Split \p{N}{1,3}, Split CJK runs, Split punctuation/letters/
  // white space (all Isolated), then ByteLevel(add_prefix_space=false, use_regex=false).
  static PreTokenizerConfig deepseek_v3();

  // Hugging Face JSON form (a Sequence when there are Split steps, else the lone ByteLevel).
  nlohmann::json to_json() const;
  // Parses the "pre_tokenizer" value of a tokenizer.json; `file` names the file in errors.
  static PreTokenizerConfig from_json(const nlohmann::json& value, std::string_view file);
};

std::string split_behavior_name(SplitBehavior behavior);

// A byte range of a pre-tokenization arena.
struct Span {
  uint32_t begin = 0, end = 0;
  uint32_t size() const { return end - begin; }
};

class PreTokenizer {
 public:
  PreTokenizer(const PreTokenizerConfig& config, std::string_view file);

  // Pre-tokenizes arena[piece] (valid UTF-8) and appends the pre-tokens to `out` as spans of
  // `arena`; the arena grows when a prefix space is added (spans stay valid, pointers do not).
  void run(std::string& arena, Span piece, std::vector<Span>& out) const;

  const PreTokenizerConfig& config() const { return config_; }

 private:
  struct CompiledSplit {
    std::unique_ptr<Regex> regex;
    SplitBehavior behavior;
    bool invert;
  };
  PreTokenizerConfig config_;
  std::vector<CompiledSplit> splits_;
  std::unique_ptr<Regex> gpt2_;
};

}  // namespace frugal::tok
