// Next-token sampling from one row of logits [vocab].
//
//   temperature == 0 : greedy argmax (the lowest index among equal maxima); no randomness.
//   temperature  > 0 : p_i proportional to exp(logit_i / temperature), then
//     top_k > 0      : keep the k most probable tokens,
//     top_p < 1      : of those, keep the smallest set of most probable tokens whose probability
//                      (renormalised over the top-k set) sums to >= top_p; always >= 1 token,
//   and draw one token by inverse CDF with u = RandomStream(seed, kSamplerStream).uniform(counter).
// Ranking ties (equal probabilities) break towards the lower index, so top_k = 1 and a tiny top_p
// both reduce to greedy. The inverse CDF walks the kept tokens in vocabulary order, so the result
// is a pure function of (logits, params, seed, counter) and, for a fixed u, the same with or without
// filters that keep every token.
// Logits may be -inf (masked tokens); NaN or +inf, or a row with no finite logit, is an error.
#pragma once

#include <cstdint>

#include "core/error.h"
#include "train/train_config.h"

namespace frugal {

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off; must be in (0, 1]
};

// The [generate] section's sampling settings.
SamplingParams sampling_params(const GenerateConfig& config);

// Random stream id used for sampling draws (so they never coincide with other uses of a seed).
inline constexpr uint64_t kSamplerStream = 0x53414D504C455221ull;  // "SAMPLER!"

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params, uint64_t seed,
                     uint64_t counter);

}  // namespace frugal
