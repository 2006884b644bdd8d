// Added-token matching (leftmost-longest) with single_word / lstrip / rstrip.
#include "data/tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "data/tokenizer/utf8.h"

namespace frugal::tok {
namespace {

bool ends_with_word(std::string_view text) {
  return !text.empty() && is_word_char(last_code_point(text));
}

bool starts_with_word(std::string_view text) {
  if (text.empty()) return false;
  size_t pos = 0;
  return is_word_char(decode_utf8(text, pos));
}

// Start of the white-space run that ends `text` (text.size() when there is none).
size_t trailing_space_start(std::string_view text) {
  size_t start = text.size();
  while (start > 0) {
    size_t char_start = start - 1;
    while (char_start > 0 && (static_cast<uint8_t>(text[char_start]) & 0xC0) == 0x80) --char_start;
    size_t pos = char_start;
    if (!is_white_space(decode_utf8(text, pos))) break;
    start = char_start;
  }
  return start;
}

// Length of the white-space run that starts `text`.
size_t leading_space_length(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t next = pos;
    if (!is_white_space(decode_utf8(text, next))) break;
    pos = next;
  }
  return pos;
}

}  // namespace

void AddedVocabulary::build(std::vector<AddedToken> tokens,
                            const std::function<std::string(std::string_view)>& normalize,
                            std::string_view file) {
  tokens_.clear();
  by_content_.clear();
  by_id_.clear();
  special_contents_.clear();
  // Matching order of tokenizers: special tokens, then the others, each in the given order.
  std::stable_partition(tokens.begin(), tokens.end(), [](const AddedToken& t) { return t.special; });
  std::vector<AddedToken> kept;
  for (AddedToken& token : tokens) {
    if (token.content.empty()) continue;  // tokenizers ignores empty added tokens
    FRUGAL_CHECK(is_valid_utf8(token.content), "{}: added token with id {} is not valid UTF-8",
                 file, token.id);
    FRUGAL_CHECK(token.id >= 0, "{}: added token '{}' has the negative id {}", file, token.content,
                 token.id);
    FRUGAL_CHECK(by_content_.find(token.content) == by_content_.end(),
                 "{}: added token '{}' is listed twice", file, token.content);
    FRUGAL_CHECK(by_id_.find(token.id) == by_id_.end(),
                 "{}: added tokens '{}' and '{}' share id {}", file,
                 kept[by_id_[token.id]].content, token.content, token.id);
    by_content_.emplace(token.content, kept.size());
    by_id_.emplace(token.id, kept.size());
    if (token.special) special_contents_.emplace(token.content, true);
    kept.push_back(std::move(token));
  }
  tokens_ = std::move(kept);
  build_matcher(raw_, false, normalize);
  build_matcher(normalized_, true, normalize);
}

std::vector<AddedToken> AddedVocabulary::tokens_by_id() const {
  std::vector<AddedToken> sorted = tokens_;
  std::sort(sorted.begin(), sorted.end(),
            [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  return sorted;
}

void AddedVocabulary::build_matcher(Matcher& matcher, bool normalized,
                                    const std::function<std::string(std::string_view)>& normalize) {
  matcher = Matcher();
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].normalized != normalized) continue;
    std::string pattern = normalized && normalize ? normalize(tokens_[i].content) : tokens_[i].content;
    if (pattern.empty()) continue;
    matcher.by_first[static_cast<uint8_t>(pattern[0])].push_back(
        static_cast<uint32_t>(matcher.patterns.size()));
    matcher.patterns.push_back(std::move(pattern));
    matcher.token_index.push_back(i);
  }
  for (auto& bucket : matcher.by_first) {
    // Longest first; among equal patterns the earlier one wins (stable).
    std::stable_sort(bucket.begin(), bucket.end(), [&](uint32_t a, uint32_t b) {
      return matcher.patterns[a].size() > matcher.patterns[b].size();
    });
  }
}

void AddedVocabulary::split(std::string_view text, bool normalized_set,
                            std::vector<AddedSplit>& out) const {
  const Matcher& matcher = normalized_set ? normalized_ : raw_;
  const auto n = static_cast<uint32_t>(text.size());
  if (n == 0 || matcher.empty()) {
    out.push_back({0, n, -1});
    return;
  }
  uint32_t start_offset = 0;
  uint32_t pos = 0;
  while (pos < n) {
    const std::vector<uint32_t>& bucket = matcher.by_first[static_cast<uint8_t>(text[pos])];
    int64_t found = -1;
    for (uint32_t index : bucket) {
      const std::string& pattern = matcher.patterns[index];
      if (pattern.size() <= n - pos && std::memcmp(text.data() + pos, pattern.data(), pattern.size()) == 0) {
        found = index;
        break;
      }
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[matcher.token_index[found]];
    uint32_t start = pos;
    uint32_t stop = pos + static_cast<uint32_t>(matcher.patterns[found].size());
    pos = stop;  // the match iterator resumes after the match, whatever happens to it below
    if (token.single_word) {
      const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      const bool stop_space = stop == n || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      const auto new_start = static_cast<uint32_t>(trailing_space_start(text.substr(0, start)));
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) stop += static_cast<uint32_t>(leading_space_length(text.substr(stop)));
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset != n) out.push_back({start_offset, n, -1});
}

const AddedToken* AddedVocabulary::find_id(int32_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::find_content(std::string_view content) const {
  const auto it = by_content_.find(content);
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

bool AddedVocabulary::is_special_content(std::string_view content) const {
  return special_contents_.find(content) != special_contents_.end();
}

}  // namespace frugal::tok
