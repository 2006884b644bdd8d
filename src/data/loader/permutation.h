// Counter-based random permutations of [0, n): element i of the permutation is computed on its
// own in O(1) expected time and memory, so a shuffled epoch needs no stored order and resuming at
// position i needs only i.
//
// Construction: a balanced Feistel network on 2h bits (the smallest even width with 4^h >= n,
// h >= 1) with 6 rounds whose round function is Philox(seed, stream + round, right half); values
// outside [0, n) are walked through the network again ("cycle walking") until they land inside,
// which keeps it a bijection on [0, n). 4^h < 4n, so the expected number of walks is below 4.
#pragma once

#include <cstdint>

namespace frugal {

class FeistelPermutation {
 public:
  // n >= 1.
  FeistelPermutation(uint64_t n, uint64_t seed, uint64_t stream);
  // The element at position i, 0 <= i < n.
  uint64_t operator()(uint64_t i) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t network(uint64_t x) const;

  uint64_t n_, seed_, stream_;
  int half_bits_;
  uint64_t half_mask_;
};

// Mixes two 64-bit values into one (splitmix64 finalizer); used to derive stream ids.
uint64_t mix_keys(uint64_t a, uint64_t b);

}  // namespace frugal
