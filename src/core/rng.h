// Counter-based random numbers (Philox-4x32-10): value = f(seed, stream, counter), no state, so
// the same numbers come out on any thread, any device and after any resume.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

namespace frugal {

struct Philox {
  // Four 32-bit random words for (key, counter).
  static void generate(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]) {
    uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
    uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      uint64_t p0 = uint64_t{0xD2511F53u} * c0;
      uint64_t p1 = uint64_t{0xCD9E8D57u} * c2;
      uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
      uint32_t n1 = static_cast<uint32_t>(p1);
      uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
      uint32_t n3 = static_cast<uint32_t>(p0);
      c0 = n0; c1 = n1; c2 = n2; c3 = n3;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
  }
};

// A stream of random numbers identified by (seed, stream); element i is a pure function of i.
class RandomStream {
 public:
  RandomStream(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}

  // Uniform in [0, 1) with 53 random bits.
  double uniform(uint64_t index) const {
    uint32_t r[4];
    Philox::generate(seed_, stream_, index, r);
    uint64_t bits = (uint64_t{r[0]} << 21) ^ uint64_t{r[1]};
    return static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) * 0x1.0p-53;
  }
  // Standard normal (Box-Muller on two uniforms of the same counter).
  double normal(uint64_t index) const {
    uint32_t r[4];
    Philox::generate(seed_, stream_, index, r);
    double u1 = (static_cast<double>((uint64_t{r[0]} << 21) ^ r[1]) + 1.0) * 0x1.0p-53;  // (0,1]
    double u2 = static_cast<double>((uint64_t{r[2]} << 21) ^ r[3]) * 0x1.0p-53;
    u1 = std::fmin(u1, 1.0);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t seed_, stream_;
};

// Stable 64-bit hash of a name (FNV-1a), used to give each parameter its own stream.
inline uint64_t hash_name(std::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace frugal
