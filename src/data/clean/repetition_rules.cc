// Gopher repetition rules: duplicate lines/paragraphs and word n-gram repetition
// (see quality_rules.h for the definitions).
#include <xxhash.h>

#include <algorithm>
#include <string>
#include <unordered_set>
#include <vector>

#include "data/clean/quality_rules.h"

namespace frugal::clean {
namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t mix64(uint64_t x) {  // murmur3 finalizer: a bijection with good avalanche
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  x ^= x >> 33;
  return x;
}

// Open-addressing counter of 64-bit keys (0 is reserved for empty slots; key 0 is stored as 1).
class FlatCounter {
 public:
  void reset(size_t expected) {
    size_t capacity = 16;
    while (capacity < 2 * expected) capacity *= 2;
    keys_.assign(capacity, 0);
    counts_.assign(capacity, 0);
    mask_ = capacity - 1;
  }
  // Increments the key's count; returns the new count.
  uint32_t increment(uint64_t key) {
    if (key == 0) key = 1;
    for (size_t slot = mix64(key) & mask_;; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return ++counts_[slot];
      if (keys_[slot] == 0) {
        keys_[slot] = key;
        return counts_[slot] = 1;
      }
    }
  }
  uint32_t count(uint64_t key) const {
    if (key == 0) key = 1;
    for (size_t slot = mix64(key) & mask_;; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return counts_[slot];
      if (keys_[slot] == 0) return 0;
    }
  }

 private:
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> counts_;
  size_t mask_ = 0;
};

// Hashes of all word n-grams of one document, for n = 1, 2, ... in turn.
class NgramScanner {
 public:
  explicit NgramScanner(const Words& words) : words_(words) {
    const size_t count = words.words.size();
    word_hashes_.resize(count);
    prefix_chars_.resize(count + 1, 0);
    for (size_t i = 0; i < count; ++i) {
      word_hashes_[i] = XXH3_64bits(words.words[i].data(), words.words[i].size());
      prefix_chars_[i + 1] = prefix_chars_[i] + words.char_lengths[i];
    }
    ngram_hashes_ = word_hashes_;
  }

  // Advances the n-gram hashes to size n (n >= the current size).
  void advance_to(int n) {
    while (n_ < n) {
      ++n_;
      const size_t count = words_.words.size() >= static_cast<size_t>(n_)
                               ? words_.words.size() - static_cast<size_t>(n_) + 1
                               : 0;
      for (size_t i = 0; i < count; ++i) {
        ngram_hashes_[i] = mix64(ngram_hashes_[i] * kGolden + word_hashes_[i + n_ - 1]);
      }
      ngram_hashes_.resize(count);
    }
  }

  double top_fraction() {
    const size_t count = ngram_hashes_.size();
    if (count == 0 || prefix_chars_.back() == 0) return 0.0;
    counter_.reset(count);
    for (uint64_t h : ngram_hashes_) counter_.increment(h);
    uint64_t best = 0;
    uint32_t best_count = 0;
    uint64_t best_chars = 0;
    for (size_t i = 0; i < count; ++i) {
      const uint32_t c = counter_.count(ngram_hashes_[i]);
      const uint64_t chars = prefix_chars_[i + n_] - prefix_chars_[i];
      if (c > best_count || (c == best_count && chars > best_chars)) {
        best = ngram_hashes_[i];
        best_count = c;
        best_chars = chars;
      }
    }
    if (best_count < 2) return 0.0;
    uint64_t covered = 0;
    size_t covered_end = 0;
    for (size_t i = 0; i < count; ++i) {
      if (ngram_hashes_[i] != best) continue;
      covered += prefix_chars_[i + n_] - prefix_chars_[std::max(i, covered_end)];
      covered_end = i + n_;
    }
    return static_cast<double>(covered) / static_cast<double>(prefix_chars_.back());
  }

  double duplicate_fraction() {
    const size_t count = ngram_hashes_.size();
    if (count == 0 || prefix_chars_.back() == 0) return 0.0;
    counter_.reset(count);
    uint64_t covered = 0;
    size_t covered_end = 0;
    for (size_t i = 0; i < count; ++i) {
      if (counter_.increment(ngram_hashes_[i]) < 2) continue;
      const size_t begin = std::max(i, covered_end);
      if (begin < i + n_) covered += prefix_chars_[i + n_] - prefix_chars_[begin];
      covered_end = i + n_;
    }
    return static_cast<double>(covered) / static_cast<double>(prefix_chars_.back());
  }

 private:
  const Words& words_;
  std::vector<uint64_t> word_hashes_;
  std::vector<uint64_t> ngram_hashes_;
  std::vector<uint64_t> prefix_chars_;
  FlatCounter counter_;
  int n_ = 1;
};

}  // namespace

LineDuplication measure_line_duplication(std::string_view text) {
  std::unordered_set<std::string_view> seen_lines;
  std::unordered_set<std::string> seen_paragraphs;  // trimmed lines joined with '\n'
  int64_t lines = 0, duplicate_lines = 0, paragraphs = 0, duplicate_paragraphs = 0;
  uint64_t line_chars = 0, duplicate_line_chars = 0, paragraph_chars = 0,
           duplicate_paragraph_chars = 0;
  std::string paragraph;
  uint64_t current_paragraph_chars = 0;
  auto end_paragraph = [&] {
    if (paragraph.empty()) return;
    ++paragraphs;
    paragraph_chars += current_paragraph_chars;
    if (!seen_paragraphs.insert(paragraph).second) {
      ++duplicate_paragraphs;
      duplicate_paragraph_chars += current_paragraph_chars;
    }
    paragraph.clear();
    current_paragraph_chars = 0;
  };
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = trim_space(text.substr(pos, end - pos));
    if (line.empty()) {
      end_paragraph();
    } else {
      const uint64_t chars = count_code_points(line);
      ++lines;
      line_chars += chars;
      if (!seen_lines.insert(line).second) {
        ++duplicate_lines;
        duplicate_line_chars += chars;
      }
      if (!paragraph.empty()) {
        paragraph.push_back('\n');
        ++current_paragraph_chars;
      }
      paragraph.append(line);
      current_paragraph_chars += chars;
    }
    pos = end + 1;
  }
  end_paragraph();
  auto fraction = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  LineDuplication d;
  d.line_fraction = fraction(static_cast<double>(duplicate_lines), static_cast<double>(lines));
  d.paragraph_fraction =
      fraction(static_cast<double>(duplicate_paragraphs), static_cast<double>(paragraphs));
  d.line_char_fraction =
      fraction(static_cast<double>(duplicate_line_chars), static_cast<double>(line_chars));
  d.paragraph_char_fraction = fraction(static_cast<double>(duplicate_paragraph_chars),
                                       static_cast<double>(paragraph_chars));
  return d;
}

double top_ngram_char_fraction(const Words& words, int n) {
  NgramScanner scanner(words);
  scanner.advance_to(n);
  return scanner.top_fraction();
}

double duplicate_ngram_char_fraction(const Words& words, int n) {
  NgramScanner scanner(words);
  scanner.advance_to(n);
  return scanner.duplicate_fraction();
}

Rule check_repetition(std::string_view text, const Words& words, const CleanOptions& options) {
  const RepetitionOptions& r = options.repetition;
  const bool line_rules = rule_enabled(options, Rule::duplicate_lines) ||
                          rule_enabled(options, Rule::duplicate_paragraphs) ||
                          rule_enabled(options, Rule::duplicate_line_chars) ||
                          rule_enabled(options, Rule::duplicate_paragraph_chars);
  if (line_rules) {
    const LineDuplication d = measure_line_duplication(text);
    if (rule_enabled(options, Rule::duplicate_lines) && d.line_fraction > r.max_duplicate_line_fraction) {
      return Rule::duplicate_lines;
    }
    if (rule_enabled(options, Rule::duplicate_paragraphs) &&
        d.paragraph_fraction > r.max_duplicate_paragraph_fraction) {
      return Rule::duplicate_paragraphs;
    }
    if (rule_enabled(options, Rule::duplicate_line_chars) &&
        d.line_char_fraction > r.max_duplicate_line_char_fraction) {
      return Rule::duplicate_line_chars;
    }
    if (rule_enabled(options, Rule::duplicate_paragraph_chars) &&
        d.paragraph_char_fraction > r.max_duplicate_paragraph_char_fraction) {
      return Rule::duplicate_paragraph_chars;
    }
  }
  bool any_ngram_rule = false;
  for (int rule = static_cast<int>(Rule::top_2gram); rule <= static_cast<int>(Rule::duplicate_10gram); ++rule) {
    any_ngram_rule = any_ngram_rule || rule_enabled(options, static_cast<Rule>(rule));
  }
  if (!any_ngram_rule) return Rule::none;
  NgramScanner scanner(words);
  for (int n = 2; n <= 4; ++n) {
    const Rule rule = static_cast<Rule>(static_cast<int>(Rule::top_2gram) + n - 2);
    if (!rule_enabled(options, rule)) continue;
    scanner.advance_to(n);
    if (scanner.top_fraction() > r.max_top_ngram_char_fraction[n - 2]) return rule;
  }
  for (int n = 5; n <= 10; ++n) {
    const Rule rule = static_cast<Rule>(static_cast<int>(Rule::duplicate_5gram) + n - 5);
    if (!rule_enabled(options, rule)) continue;
    scanner.advance_to(n);
    if (scanner.duplicate_fraction() > r.max_duplicate_ngram_char_fraction[n - 5]) return rule;
  }
  return Rule::none;
}

}  // namespace frugal::clean
