// Next-token sampling (see sampler.h for the rule). Weights are computed in double.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace frugal {

SamplingParams sampling_params(const GenerateConfig& config) {
  SamplingParams params;
  params.temperature = config.temperature;
  params.top_k = config.top_k;
  params.top_p = config.top_p;
  return params;
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params, uint64_t seed,
                     uint64_t counter) {
  FRUGAL_CHECK(vocab > 0 && vocab <= std::numeric_limits<int32_t>::max(),
               "sample_token: vocabulary size {} out of range", vocab);
  FRUGAL_CHECK(std::isfinite(params.temperature) && params.temperature >= 0.0,
               "generate.temperature = {} must be >= 0 (0 = greedy)", params.temperature);
  FRUGAL_CHECK(params.top_k >= 0, "generate.top_k = {} must be >= 0 (0 = off)", params.top_k);
  FRUGAL_CHECK(params.top_p > 0.0 && params.top_p <= 1.0,
               "generate.top_p = {} must be in (0, 1] (1 = off)", params.top_p);

  // Greedy choice and input validation in one pass.
  int64_t best = -1;
  for (int64_t i = 0; i < vocab; ++i) {
    const float x = logits[i];
    FRUGAL_CHECK(!std::isnan(x) && x != std::numeric_limits<float>::infinity(),
                 "sample_token: logit {} of token {} is not usable (NaN or +inf)", x, i);
    if (x == -std::numeric_limits<float>::infinity()) continue;
    if (best < 0 || x > logits[best]) best = i;
  }
  FRUGAL_CHECK(best >= 0, "sample_token: every one of the {} logits is -inf", vocab);
  if (params.temperature == 0.0) return static_cast<int32_t>(best);

  // Unnormalised softmax weights; the best token has weight 1.
  const double inv_temperature = 1.0 / params.temperature;
  const double max_scaled = static_cast<double>(logits[best]) * inv_temperature;
  std::vector<double> weight(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i)
    weight[i] = std::exp(static_cast<double>(logits[i]) * inv_temperature - max_scaled);

  std::vector<char> kept(static_cast<size_t>(vocab), 1);
  const bool use_top_k = params.top_k > 0 && params.top_k < vocab;
  const bool use_top_p = params.top_p < 1.0;
  if (use_top_k || use_top_p) {
    // Rank by probability, ties towards the lower index.
    std::vector<int64_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), int64_t{0});
    auto more_probable = [&](int64_t a, int64_t b) {
      return weight[a] != weight[b] ? weight[a] > weight[b] : a < b;
    };
    int64_t limit = use_top_k ? params.top_k : vocab;
    std::partial_sort(order.begin(), order.begin() + limit, order.end(), more_probable);
    if (use_top_p) {
      double ranked_total = 0.0;
      for (int64_t j = 0; j < limit; ++j) ranked_total += weight[order[j]];
      const double target = params.top_p * ranked_total;
      double cumulative = 0.0;
      int64_t count = 0;
      while (count < limit) {
        cumulative += weight[order[count]];
        ++count;
        if (cumulative >= target) break;
      }
      limit = count;
    }
    std::fill(kept.begin(), kept.end(), 0);
    for (int64_t j = 0; j < limit; ++j) kept[order[j]] = 1;
  }

  // Inverse CDF over the kept tokens in vocabulary order.
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i)
    if (kept[i]) total += weight[i];
  const double target = RandomStream(seed, kSamplerStream).uniform(counter) * total;
  double cumulative = 0.0;
  int64_t last = best;
  for (int64_t i = 0; i < vocab; ++i) {
    if (!kept[i] || weight[i] <= 0.0) continue;
    cumulative += weight[i];
    last = i;
    if (target < cumulative) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(last);  // only reached through rounding at the very top of the CDF
}

}  // namespace frugal
