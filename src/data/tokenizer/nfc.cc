// NFC normalization: quick check, decomposition, canonical ordering, composition.
#include "data/tokenizer/nfc.h"

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "data/tokenizer/utf8.h"

namespace frugal::tok {
namespace {

struct CccRange {
  uint32_t first, last, klass;
};
struct Decomposition {
  uint32_t code_point, first, second;  // second == 0: singleton
};
struct CodeRange {
  uint32_t first, last;
};

#include "data/tokenizer/nfc_tables.inc"

constexpr char32_t kHangulBase = 0xAC00, kHangulLast = 0xD7A3;
constexpr char32_t kLeadBase = 0x1100, kVowelBase = 0x1161, kTrailBase = 0x11A7;
constexpr uint32_t kLeadCount = 19, kVowelCount = 21, kTrailCount = 28;
constexpr uint32_t kSyllablesPerLead = kVowelCount * kTrailCount;  // 588

bool is_unstable(char32_t cp) {
  if (cp < 0x300) return false;
  const auto it = std::upper_bound(std::begin(kUnstableRanges), std::end(kUnstableRanges), cp,
                                   [](char32_t v, const CodeRange& r) { return v < r.first; });
  return it != std::begin(kUnstableRanges) && cp <= std::prev(it)->last;
}

uint32_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto it = std::upper_bound(std::begin(kCccRanges), std::end(kCccRanges), cp,
                                   [](char32_t v, const CccRange& r) { return v < r.first; });
  if (it == std::begin(kCccRanges)) return 0;
  const CccRange& range = *std::prev(it);
  return cp <= range.last ? range.klass : 0;
}

const Decomposition* find_decomposition(char32_t cp) {
  const auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), cp,
                                   [](const Decomposition& d, char32_t v) { return d.code_point < v; });
  return it != std::end(kDecompositions) && it->code_point == cp ? &*it : nullptr;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kHangulBase && cp <= kHangulLast) {
    const uint32_t index = cp - kHangulBase;
    out.push_back(kLeadBase + index / kSyllablesPerLead);
    out.push_back(kVowelBase + (index % kSyllablesPerLead) / kTrailCount);
    if (index % kTrailCount != 0) out.push_back(kTrailBase + index % kTrailCount);
    return;
  }
  const Decomposition* d = find_decomposition(cp);
  if (d == nullptr) {
    out.push_back(cp);
    return;
  }
  decompose(d->first, out);
  if (d->second != 0) decompose(d->second, out);
}

const std::unordered_map<uint64_t, char32_t>& composition_table() {
  static const std::unordered_map<uint64_t, char32_t> table = [] {
    std::unordered_map<uint64_t, char32_t> t;
    for (const Decomposition& d : kDecompositions) {
      if (d.second == 0) continue;
      if (std::binary_search(std::begin(kCompositionExcluded), std::end(kCompositionExcluded),
                             d.code_point))
        continue;
      t.emplace((static_cast<uint64_t>(d.first) << 32) | d.second, d.code_point);
    }
    return t;
  }();
  return table;
}

// The primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLeadBase && a < kLeadBase + kLeadCount && b >= kVowelBase && b < kVowelBase + kVowelCount)
    return kHangulBase + ((a - kLeadBase) * kVowelCount + (b - kVowelBase)) * kTrailCount;
  if (a >= kHangulBase && a <= kHangulLast && (a - kHangulBase) % kTrailCount == 0 &&
      b > kTrailBase && b < kTrailBase + kTrailCount)
    return a + (b - kTrailBase);
  const auto& table = composition_table();
  const auto it = table.find((static_cast<uint64_t>(a) << 32) | b);
  return it == table.end() ? 0 : it->second;
}

}  // namespace

const char* nfc_unicode_version() { return kUnicodeVersion; }

bool nfc_quick_check(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0xCC) {  // every code point below U+0300 is stable
      pos += static_cast<uint8_t>(text[pos]) < 0x80 ? 1 : 2;
      continue;
    }
    if (is_unstable(decode_utf8(text, pos))) return false;
  }
  return true;
}

std::string nfc(std::string_view text) {
  if (nfc_quick_check(text)) return std::string(text);
  std::vector<char32_t> decomposed;
  decomposed.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) decompose(decode_utf8(text, pos), decomposed);
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < decomposed.size();) {
    if (combining_class(decomposed[i]) == 0) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < decomposed.size() && combining_class(decomposed[end]) != 0) ++end;
    std::stable_sort(decomposed.begin() + static_cast<std::ptrdiff_t>(i),
                     decomposed.begin() + static_cast<std::ptrdiff_t>(end),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = end;
  }
  // Canonical composition.
  std::vector<char32_t> composed;
  composed.reserve(decomposed.size());
  int64_t starter = -1;
  uint32_t last_class = 0;
  for (char32_t ch : decomposed) {
    const uint32_t klass = combining_class(ch);
    if (starter >= 0) {
      const bool adjacent = static_cast<int64_t>(composed.size()) - 1 == starter;
      if (adjacent || (last_class != 0 && last_class < klass)) {
        if (const char32_t c = compose(composed[starter], ch)) {
          composed[starter] = c;
          continue;
        }
      }
    }
    if (klass == 0) starter = static_cast<int64_t>(composed.size());
    last_class = klass;
    composed.push_back(ch);
  }
  std::string out;
  out.reserve(text.size());
  for (char32_t ch : composed) append_utf8(out, ch);
  return out;
}

}  // namespace frugal::tok
