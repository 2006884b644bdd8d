// Exact and MinHash/LSH near-duplicate detection (see dedup.h).
#include "data/clean/dedup.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "core/error.h"
#include "data/clean/unicode_text.h"

namespace frugal::clean {
namespace {

constexpr double kLshRecallAtThreshold = 0.98;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint32_t mix32(uint32_t x) {  // murmur3 finalizer
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

uint32_t fold32(uint64_t h) { return static_cast<uint32_t>(h ^ (h >> 32)); }

// Open addressing, linear probing; key 0 marks an empty slot (so key 0 is stored as 1).
// Multimap: a key may appear several times, find() visits every value stored under it.
class FlatMultiMap {
 public:
  FlatMultiMap() { rehash(1024); }
  void insert(uint32_t key, uint32_t value) {
    if (key == 0) key = 1;
    if ((size_ + 1) * 4 > keys_.size() * 3) rehash(keys_.size() * 2);
    place(key, value);
    ++size_;
  }
  template <class F>
  void find(uint32_t key, F&& visit) const {
    if (key == 0) key = 1;
    for (size_t slot = mix32(key) & mask_; keys_[slot] != 0; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) visit(values_[slot]);
    }
  }
  size_t memory_bytes() const { return keys_.size() * (sizeof(uint32_t) * 2); }

 private:
  void place(uint32_t key, uint32_t value) {
    size_t slot = mix32(key) & mask_;
    while (keys_[slot] != 0) slot = (slot + 1) & mask_;
    keys_[slot] = key;
    values_[slot] = value;
  }
  void rehash(size_t capacity) {
    std::vector<uint32_t> old_keys = std::move(keys_), old_values = std::move(values_);
    keys_.assign(capacity, 0);
    values_.assign(capacity, 0);
    mask_ = capacity - 1;
    for (size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] != 0) place(old_keys[i], old_values[i]);
    }
  }
  std::vector<uint32_t> keys_, values_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Exact-hash table: 64-bit key -> kept index (unique keys).
class FlatMap64 {
 public:
  FlatMap64() { rehash(1024); }
  // Returns the stored value, or -1 after inserting (key, value).
  int64_t find_or_insert(uint64_t key, uint32_t value, bool insert) {
    if (key == 0) key = 1;
    size_t slot = static_cast<size_t>(mix32(fold32(key))) & mask_;
    for (; keys_[slot] != 0; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return values_[slot];
    }
    if (!insert) return -1;
    keys_[slot] = key;
    values_[slot] = value;
    if (++size_ * 4 > keys_.size() * 3) rehash(keys_.size() * 2);
    return -1;
  }
  size_t memory_bytes() const { return keys_.size() * (sizeof(uint64_t) + sizeof(uint32_t)); }

 private:
  void rehash(size_t capacity) {
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<uint32_t> old_values = std::move(values_);
    keys_.assign(capacity, 0);
    values_.assign(capacity, 0);
    mask_ = capacity - 1;
    for (size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] == 0) continue;
      size_t slot = static_cast<size_t>(mix32(fold32(old_keys[i]))) & mask_;
      while (keys_[slot] != 0) slot = (slot + 1) & mask_;
      keys_[slot] = old_keys[i];
      values_[slot] = old_values[i];
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> values_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Sorts `values` and removes repeats; large inputs go through a hash set first (documents repeat
// most of their words, so the sort then sees far fewer values).
void sort_unique(std::vector<uint64_t>& values) {
  if (values.size() > 256) {
    size_t capacity = 256;
    while (capacity < 2 * values.size()) capacity *= 2;
    std::vector<uint64_t> table(capacity, 0);
    const size_t mask = capacity - 1;
    bool has_zero = false;
    size_t unique = 0;
    for (uint64_t v : values) {
      if (v == 0) {
        has_zero = true;
        continue;
      }
      size_t slot = static_cast<size_t>(mix32(fold32(v))) & mask;
      while (table[slot] != 0 && table[slot] != v) slot = (slot + 1) & mask;
      if (table[slot] == 0) {
        table[slot] = v;
        values[unique++] = v;
      }
    }
    if (has_zero) values[unique++] = 0;
    values.resize(unique);
  }
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
}

}  // namespace

// Sketches of the kept documents in fixed-size chunks (no doubling copies as the corpus grows).
class SketchStore {
 public:
  explicit SketchStore(int num_perm) : num_perm_(static_cast<size_t>(num_perm)) {}
  void append(const uint16_t* sketch) {
    if (count_ % kChunkDocuments == 0) {
      chunks_.push_back(std::make_unique<uint16_t[]>(kChunkDocuments * num_perm_));
    }
    std::copy(sketch, sketch + num_perm_, at(count_));
    ++count_;
  }
  uint16_t* at(size_t index) const {
    return chunks_[index / kChunkDocuments].get() + (index % kChunkDocuments) * num_perm_;
  }
  size_t memory_bytes() const { return chunks_.size() * kChunkDocuments * num_perm_ * 2; }

 private:
  static constexpr size_t kChunkDocuments = 4096;
  size_t num_perm_;
  size_t count_ = 0;
  std::vector<std::unique_ptr<uint16_t[]>> chunks_;
};

struct Deduplicator::Index {
  explicit Index(int num_perm) : sketches(num_perm) {}
  FlatMap64 exact;
  FlatMultiMap bands;     // band key -> kept index
  SketchStore sketches;   // [kept, num_perm]
};

double lsh_candidate_probability(double jaccard, LshShape shape) {
  return 1.0 - std::pow(1.0 - std::pow(jaccard, shape.rows), shape.bands);
}

LshShape choose_lsh_shape(double threshold, int num_perm) {
  for (int rows = num_perm; rows >= 1; --rows) {
    const LshShape shape{num_perm / rows, rows};
    if (lsh_candidate_probability(threshold, shape) >= kLshRecallAtThreshold) return shape;
  }
  return LshShape{num_perm, 1};
}

uint64_t exact_hash(std::string_view text) {
  const std::string normalized = normalize_for_exact_match(text);
  return XXH64(normalized.data(), normalized.size(), 0);
}

void shingle_hashes(std::string_view text, int shingle_size, std::vector<uint64_t>& out) {
  out.clear();
  Words words;
  split_words(text, words);
  std::vector<uint64_t> tokens;
  tokens.reserve(words.words.size());
  std::string normalized;
  for (std::string_view word : words.words) {
    normalize_word(word, normalized);
    if (!normalized.empty()) tokens.push_back(XXH3_64bits(normalized.data(), normalized.size()));
  }
  if (tokens.empty()) return;
  const size_t k = static_cast<size_t>(shingle_size);
  if (k == 1) {
    out = std::move(tokens);
  } else if (tokens.size() <= k) {
    out.push_back(XXH3_64bits(tokens.data(), tokens.size() * sizeof(uint64_t)));
  } else {
    out.reserve(tokens.size() - k + 1);
    for (size_t i = 0; i + k <= tokens.size(); ++i) {
      out.push_back(XXH3_64bits(tokens.data() + i, k * sizeof(uint64_t)));
    }
  }
  sort_unique(out);
}

MinHasher::MinHasher(int num_perm, uint64_t seed) {
  FRUGAL_CHECK(num_perm >= 1, "MinHash: num_perm = {} < 1", num_perm);
  uint64_t state = seed;
  multipliers_.resize(static_cast<size_t>(num_perm));
  increments_.resize(static_cast<size_t>(num_perm));
  for (int i = 0; i < num_perm; ++i) {
    multipliers_[i] = splitmix64(state);
    increments_[i] = splitmix64(state);
    multipliers_lo_.push_back(static_cast<uint32_t>(multipliers_[i]));
    multipliers_hi_.push_back(static_cast<uint32_t>(multipliers_[i] >> 32));
  }
}

void MinHasher::signature(const std::vector<uint64_t>& shingles, uint32_t* signature) const {
  const size_t n = multipliers_.size();
  std::fill(signature, signature + n, 0xFFFFFFFFu);
  // (a * x + b) >> 32 in 64-bit arithmetic, written with 32-bit halves of a so that it vectorizes:
  // the high half of a only adds a_hi * x to the upper 32 bits.
  const uint32_t* a_lo = multipliers_lo_.data();
  const uint32_t* a_hi = multipliers_hi_.data();
  const uint64_t* b = increments_.data();
  for (uint64_t shingle : shingles) {
    const uint32_t x = fold32(shingle);
#pragma omp simd
    for (size_t i = 0; i < n; ++i) {
      const uint64_t low = static_cast<uint64_t>(a_lo[i]) * x + b[i];
      const uint32_t h = static_cast<uint32_t>(low >> 32) + a_hi[i] * x;
      signature[i] = signature[i] < h ? signature[i] : h;
    }
  }
}

double estimate_jaccard(const uint32_t* a, const uint32_t* b, int num_perm) {
  int equal = 0;
  for (int i = 0; i < num_perm; ++i) equal += a[i] == b[i];
  return static_cast<double>(equal) / num_perm;
}

Deduplicator::Deduplicator(const DedupOptions& options, int shingle_size)
    : options_(options),
      shingle_size_(shingle_size),
      shape_(options.bands > 0 ? LshShape{options.bands, options.rows}
                               : choose_lsh_shape(options.threshold, options.num_perm)),
      hasher_(options.num_perm, options.seed),
      index_(std::make_unique<Index>(options.num_perm)) {
  FRUGAL_CHECK(shingle_size >= 1, "dedup: shingle size {} < 1", shingle_size);
  FRUGAL_CHECK(shape_.bands >= 1 && shape_.rows >= 1 &&
                   int64_t{shape_.bands} * shape_.rows <= options.num_perm,
               "dedup: LSH shape {} bands x {} rows does not fit num_perm = {}", shape_.bands,
               shape_.rows, options.num_perm);
}

Deduplicator::~Deduplicator() = default;

DocumentFingerprint Deduplicator::fingerprint(std::string_view text) const {
  DocumentFingerprint fp;
  if (options_.exact) fp.exact_hash = exact_hash(text);
  if (!options_.near) return fp;
  std::vector<uint64_t> shingles;
  shingle_hashes(text, shingle_size_, shingles);
  fp.has_shingles = !shingles.empty();
  if (!fp.has_shingles) return fp;
  const int n = options_.num_perm;
  std::vector<uint32_t> signature(static_cast<size_t>(n));
  hasher_.signature(shingles, signature.data());
  fp.sketch.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) fp.sketch[i] = static_cast<uint16_t>(mix32(signature[i]));
  fp.band_keys.resize(static_cast<size_t>(shape_.bands));
  for (int band = 0; band < shape_.bands; ++band) {
    const uint32_t* rows = signature.data() + static_cast<size_t>(band) * shape_.rows;
    fp.band_keys[band] = fold32(XXH3_64bits_withSeed(rows, sizeof(uint32_t) * shape_.rows,
                                                     static_cast<uint64_t>(band)));
  }
  return fp;
}

DedupDecision Deduplicator::add(const DocumentFingerprint& fp) {
  Index& index = *index_;
  const int n = options_.num_perm;
  const uint32_t this_index = static_cast<uint32_t>(kept_);
  if (options_.exact) {
    const int64_t match = index.exact.find_or_insert(fp.exact_hash, this_index, false);
    if (match >= 0) return {DedupVerdict::exact_duplicate, match, 1.0};
  }
  if (options_.near && fp.has_shingles) {
    std::vector<uint32_t> candidates;
    for (uint32_t key : fp.band_keys) {
      index.bands.find(key, [&](uint32_t value) { candidates.push_back(value); });
    }
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
    const double needed = options_.threshold * n - 1e-9;
    for (uint32_t candidate : candidates) {
      ++candidate_checks_;
      const uint16_t* other = index.sketches.at(candidate);
      int equal = 0;
      for (int i = 0; i < n; ++i) equal += other[i] == fp.sketch[i];
      if (equal >= needed) {
        return {DedupVerdict::near_duplicate, candidate, static_cast<double>(equal) / n};
      }
    }
  }
  // Unique: keep and index it.
  if (options_.exact) index.exact.find_or_insert(fp.exact_hash, this_index, true);
  if (options_.near) {
    if (fp.has_shingles) {
      index.sketches.append(fp.sketch.data());
      for (uint32_t key : fp.band_keys) index.bands.insert(key, this_index);
    } else {
      const std::vector<uint16_t> no_sketch(static_cast<size_t>(n), 0);  // never a candidate
      index.sketches.append(no_sketch.data());
    }
  }
  ++kept_;
  return {DedupVerdict::unique, static_cast<int64_t>(this_index), 1.0};
}

size_t Deduplicator::memory_bytes() const {
  return index_->exact.memory_bytes() + index_->bands.memory_bytes() +
         index_->sketches.memory_bytes();
}

}  // namespace frugal::clean
