// Deduplication: exact (xxhash64 of normalized text) and near-duplicate (MinHash + LSH banding,
// candidates verified by estimated Jaccard similarity). A document is a duplicate when it matches a
// document kept before it, so the first document of each cluster (in input order) is kept; a
// document that matches nothing is kept and indexed. Duplicates are never indexed.
//
// Exact: XXH64 (seed 0) of normalize_for_exact_match(text): ASCII lowercased, runs of whitespace
//   collapsed to one space, ends trimmed. Case and layout changes are exact duplicates.
// Shingles: the document's words (split_words; each CJK character a word) normalized by
//   normalize_word (ASCII lowercase, outer punctuation trimmed; empty results skipped); a shingle is
//   `shingle_size` consecutive normalized words, hashed with XXH3-64; the set is sorted and unique.
//   A document with fewer words than shingle_size has one shingle (all its words); a document with
//   no words has no shingles and is never a near duplicate.
//   Default shingle size 1 for spaced text. Measured on Gutenberg excerpts of 150-600 words with a
//   prototype: near copies with 5% of their words replaced keep a Jaccard similarity of about
//   0.85-0.90, while distinct excerpts stay below 0.29, distinct whole books below 0.46 and
//   distinct TinyStories below 0.56; with 2-word shingles the same copies fall to 0.80-0.82 and
//   with 5-word shingles to about 0.6, under the default threshold 0.8 (no shingle size keeps 10%
//   changes above 0.8: their similarity is about 0.79 with single words). 2 characters for zh.
// MinHash: num_perm functions h_i(x) = (a_i * x32 + b_i) >> 32 over 64-bit arithmetic
//   (multiply-add-shift, 2-universal for 32-bit keys), x32 = the shingle hash folded to 32 bits,
//   (a_i, b_i) from splitmix64(seed). Signature[i] = min over shingles of h_i.
// LSH: `bands` bands of `rows` values; a band's key is XXH3 of its values seeded by the band
//   index, folded to 32 bits (key collisions only add candidates). When not given, rows is the
//   largest r such that, with bands = num_perm / r, a pair at the threshold becomes a candidate
//   with probability >= 0.98 (1 - (1 - t^r)^b): recall first, verification removes the rest.
//   num_perm 128, threshold 0.8 -> 18 bands x 7 rows.
// Verification: candidates (ascending kept index) are compared on a 16-bit sketch of each
//   signature value (a scrambled 32-bit value truncated; a false match has probability 2^-16, so
//   the bias of the estimate is below 2e-5); the first with matches / num_perm >= threshold makes
//   the document a near duplicate.
// Memory per kept document: 2 * num_perm bytes of sketch + 8 bytes per band in an LSH table kept
//   between 37% and 75% full + 12 bytes in the exact table (same load): measured 490-520 bytes
//   at num_perm 128 (18 bands), so a million kept paragraphs need about 0.5 GB. Nothing is stored
//   for dropped documents.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "data/clean/clean_options.h"

namespace frugal::clean {

struct LshShape {
  int bands = 0;
  int rows = 0;
};

LshShape choose_lsh_shape(double threshold, int num_perm);
// Probability that a pair with Jaccard similarity `jaccard` shares at least one band.
double lsh_candidate_probability(double jaccard, LshShape shape);

uint64_t exact_hash(std::string_view text);
// Replaces `out` with the sorted, unique shingle hashes of `text`.
void shingle_hashes(std::string_view text, int shingle_size, std::vector<uint64_t>& out);

class MinHasher {
 public:
  MinHasher(int num_perm, uint64_t seed);
  // signature[num_perm]; all 0xFFFFFFFF when `shingles` is empty.
  void signature(const std::vector<uint64_t>& shingles, uint32_t* signature) const;
  int num_perm() const { return static_cast<int>(multipliers_.size()); }

 private:
  std::vector<uint64_t> multipliers_, increments_;
  std::vector<uint32_t> multipliers_lo_, multipliers_hi_;
};

// Fraction of equal positions of two signatures of length num_perm.
double estimate_jaccard(const uint32_t* a, const uint32_t* b, int num_perm);

struct DocumentFingerprint {
  uint64_t exact_hash = 0;
  bool has_shingles = false;
  std::vector<uint32_t> band_keys;  // [bands]
  std::vector<uint16_t> sketch;     // [num_perm]
};

enum class DedupVerdict { unique, exact_duplicate, near_duplicate };

struct DedupDecision {
  DedupVerdict verdict = DedupVerdict::unique;
  int64_t index = -1;         // unique: this document's kept index; duplicate: the kept match's
  double similarity = 1.0;    // estimated Jaccard with the match (1 for exact duplicates)
};

class Deduplicator {
 public:
  // shingle_size: resolved (see effective_shingle_size). Shape from options or choose_lsh_shape.
  Deduplicator(const DedupOptions& options, int shingle_size);
  ~Deduplicator();
  Deduplicator(const Deduplicator&) = delete;
  Deduplicator& operator=(const Deduplicator&) = delete;

  // Thread-safe: depends only on the text and the options.
  DocumentFingerprint fingerprint(std::string_view text) const;
  // Sequential: decides against the documents kept so far and keeps this one when unique.
  DedupDecision add(const DocumentFingerprint& fingerprint);

  LshShape shape() const { return shape_; }
  int shingle_size() const { return shingle_size_; }
  int64_t kept_documents() const { return kept_; }
  int64_t candidate_checks() const { return candidate_checks_; }
  size_t memory_bytes() const;

 private:
  DedupOptions options_;
  int shingle_size_;
  LshShape shape_;
  MinHasher hasher_;
  struct Index;
  std::unique_ptr<Index> index_;
  int64_t kept_ = 0;
  int64_t candidate_checks_ = 0;
};

}  // namespace frugal::clean
