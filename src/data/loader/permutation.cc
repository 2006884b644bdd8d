// Feistel permutation with cycle walking (see permutation.h).
#include "data/loader/permutation.h"

#include "core/error.h"
#include "core/rng.h"

namespace frugal {

namespace {
constexpr int kRounds = 6;
}

uint64_t mix_keys(uint64_t a, uint64_t b) {
  uint64_t z = a ^ (b + 0x9E3779B97F4A7C15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

FeistelPermutation::FeistelPermutation(uint64_t n, uint64_t seed, uint64_t stream)
    : n_(n), seed_(seed), stream_(stream) {
  FRUGAL_CHECK(n >= 1, "permutation of an empty range");
  int bits = 0;
  while (bits < 64 && (uint64_t{1} << bits) < n) ++bits;  // 2^bits >= n
  half_bits_ = bits <= 2 ? 1 : (bits + 1) / 2;
  FRUGAL_CHECK(half_bits_ <= 31, "permutation of {} elements is too large", n);
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
}

uint64_t FeistelPermutation::network(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (int round = 0; round < kRounds; ++round) {
    uint32_t words[4];
    Philox::generate(seed_, stream_ + static_cast<uint64_t>(round), right, words);
    const uint64_t next_right = left ^ (words[0] & half_mask_);
    left = right;
    right = next_right;
  }
  return (left << half_bits_) | right;
}

uint64_t FeistelPermutation::operator()(uint64_t i) const {
  FRUGAL_CHECK(i < n_, "permutation position {} is out of range [0, {})", i, n_);
  uint64_t x = network(i);
  while (x >= n_) x = network(x);
  return x;
}

}  // namespace frugal
