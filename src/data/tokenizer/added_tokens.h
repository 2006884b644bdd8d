// Added tokens (special or not), matched in the text before pre-tokenization exactly as the
// Hugging Face `tokenizers` AddedVocabulary does:
//
// - Two sets: tokens with normalized=false are found in the raw text first; the text between them
//   is normalized and then searched for the normalized=true tokens (their content normalized too).
// - Matching is leftmost-longest and non-overlapping (Aho-Corasick LeftmostLongest): scanning
//   left to right, the longest token starting at the first position where any token starts.
// - single_word: a match is dropped when a word character (Unicode \w) touches it on either side;
//   scanning still resumes after it.
// - lstrip: the match absorbs the white space before it (not past the previous match);
//   rstrip: the match absorbs the white space after it. White space is Unicode White_Space.
//   The absorbed white space belongs to the added token's piece (it produces no ids).
// The pieces cover the text; an rstrip that runs into the next match makes two pieces overlap,
// as in `tokenizers`.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer/bpe_model.h"

namespace frugal::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;  // tokenizers' default for non-special tokens; special ones use false
  bool special = false;
};

// A piece of text after added-token splitting: [begin, end) and the added token's id, or -1 for
// ordinary text.
struct AddedSplit {
  uint32_t begin, end;
  int32_t id;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // `normalize` is the tokenizer's normalizer, applied to the content of normalized=true tokens.
  void build(std::vector<AddedToken> tokens,
             const std::function<std::string(std::string_view)>& normalize, std::string_view file);

  // Splits `text` with the raw (normalized=false) or the normalized set; appends pieces covering
  // the text (an empty text gives one empty ordinary piece).
  void split(std::string_view text, bool normalized_set, std::vector<AddedSplit>& out) const;

  const AddedToken* find_id(int32_t id) const;
  std::optional<int32_t> find_content(std::string_view content) const;
  bool is_special_content(std::string_view content) const;
  std::vector<AddedToken> tokens_by_id() const;
  bool empty() const { return tokens_.empty(); }

 private:
  struct Matcher {
    std::vector<std::string> patterns;
    std::vector<size_t> token_index;                  // into tokens_
    std::array<std::vector<uint32_t>, 256> by_first;  // pattern indices, longest first
    bool empty() const { return patterns.empty(); }
  };
  void build_matcher(Matcher& matcher, bool normalized,
                     const std::function<std::string(std::string_view)>& normalize);

  std::vector<AddedToken> tokens_;
  StringMap<size_t> by_content_;
  std::unordered_map<int32_t, size_t> by_id_;
  StringMap<bool> special_contents_;
  Matcher raw_, normalized_;
};

}  // namespace frugal::tok
