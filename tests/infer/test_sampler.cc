// Sampler: greedy, top-k/top-p reductions to greedy, empirical frequencies against the softmax,
// temperature, filters, determinism and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "infer/sampler.h"

namespace frugal {
namespace {

std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  double max = -1e300;
  for (float x : logits) max = std::max(max, x / temperature);
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += p[i] = std::exp(logits[i] / temperature - max);
  for (double& x : p) x /= total;
  return p;
}

std::vector<double> frequencies(const std::vector<float>& logits, const SamplingParams& params,
                                int64_t draws, uint64_t seed = 42) {
  std::vector<double> count(logits.size(), 0.0);
  for (int64_t c = 0; c < draws; ++c) {
    int32_t token = sample_token(logits.data(), static_cast<int64_t>(logits.size()), params, seed,
                                 static_cast<uint64_t>(c));
    EXPECT_GE(token, 0);
    EXPECT_LT(token, static_cast<int32_t>(logits.size()));
    count[token] += 1.0;
  }
  for (double& x : count) x /= static_cast<double>(draws);
  return count;
}

// Each frequency within 5 standard errors of its expected probability.
void expect_matches(const std::vector<double>& freq, const std::vector<double>& prob, int64_t draws) {
  ASSERT_EQ(freq.size(), prob.size());
  for (size_t i = 0; i < prob.size(); ++i) {
    double sigma = std::sqrt(std::max(prob[i] * (1 - prob[i]), 1e-12) / static_cast<double>(draws));
    EXPECT_NEAR(freq[i], prob[i], 5 * sigma + 1e-12) << "token " << i;
  }
}

const std::vector<float> kLogits = {1.0f, 2.5f, -0.5f, 2.5f, 0.0f, 1.7f};  // max 2.5 at 1 and 3

TEST(Sampler, GreedyTakesLowestIndexOfTheMaximum) {
  SamplingParams greedy{0.0, 0, 1.0};
  for (uint64_t c = 0; c < 20; ++c) EXPECT_EQ(sample_token(kLogits.data(), 6, greedy, 9, c), 1);
  std::vector<float> masked = {-std::numeric_limits<float>::infinity(), -3.0f, -2.0f};
  EXPECT_EQ(sample_token(masked.data(), 3, greedy, 0, 0), 2);
}

TEST(Sampler, TopKOneAndTinyTopPEqualGreedy) {
  SamplingParams top1{1.0, 1, 1.0}, tiny_p{1.3, 0, 1e-9}, both{0.7, 3, 1e-6};
  for (uint64_t c = 0; c < 200; ++c) {
    EXPECT_EQ(sample_token(kLogits.data(), 6, top1, 5, c), 1);
    EXPECT_EQ(sample_token(kLogits.data(), 6, tiny_p, 5, c), 1);
    EXPECT_EQ(sample_token(kLogits.data(), 6, both, 5, c), 1);
  }
}

TEST(Sampler, FrequenciesMatchSoftmax) {
  const int64_t draws = 200000;
  for (double temperature : {1.0, 0.6, 2.0}) {
    SamplingParams params{temperature, 0, 1.0};
    expect_matches(frequencies(kLogits, params, draws), softmax(kLogits, temperature), draws);
  }
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  const int64_t draws = 50000;
  auto cold = frequencies(kLogits, {0.05, 0, 1.0}, draws);
  auto warm = frequencies(kLogits, {1.0, 0, 1.0}, draws);
  auto hot = frequencies(kLogits, {10.0, 0, 1.0}, draws);
  // Near zero temperature only the two tied maxima appear, about half each.
  EXPECT_NEAR(cold[1] + cold[3], 1.0, 1e-3);
  EXPECT_NEAR(cold[1], 0.5, 0.02);
  // The least likely token gains mass as the temperature rises; the leaders lose it.
  EXPECT_LT(cold[2], warm[2]);
  EXPECT_LT(warm[2], hot[2]);
  EXPECT_GT(warm[1], hot[1]);
  EXPECT_NEAR(hot[2], softmax(kLogits, 10.0)[2], 0.01);
}

TEST(Sampler, TopKAndTopPRestrictAndRenormalise) {
  const int64_t draws = 100000;
  // top_k = 3 keeps tokens 1, 3 (tied maxima) and 5.
  auto p = softmax(kLogits, 1.0);
  double kept = p[1] + p[3] + p[5];
  std::vector<double> expected_k = {0, p[1] / kept, 0, p[3] / kept, 0, p[5] / kept};
  expect_matches(frequencies(kLogits, {1.0, 3, 1.0}, draws), expected_k, draws);

  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p = 0.75 keeps the first two (0.5 + 0.3 >= 0.75).
  std::vector<float> logits = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  std::vector<double> expected_p = {0, 0.5 / 0.8, 0, 0.3 / 0.8};
  expect_matches(frequencies(logits, {1.0, 0, 0.75}, draws), expected_p, draws);
  // top_p = 0.85 also needs the third most probable token.
  std::vector<double> expected_p3 = {0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95};
  expect_matches(frequencies(logits, {1.0, 0, 0.85}, draws), expected_p3, draws);
  // top_p applies to the top-k set renormalised: k = 2 gives 0.625/0.375, so p = 0.6 keeps one.
  for (uint64_t c = 0; c < 100; ++c)
    EXPECT_EQ(sample_token(logits.data(), 4, {1.0, 2, 0.6}, 3, c), 1);
}

TEST(Sampler, DeterministicForSeedAndCounter) {
  SamplingParams params{1.0, 0, 1.0};
  std::vector<int32_t> a, b, other_seed;
  for (uint64_t c = 0; c < 64; ++c) {
    a.push_back(sample_token(kLogits.data(), 6, params, 77, c));
    b.push_back(sample_token(kLogits.data(), 6, params, 77, c));
    other_seed.push_back(sample_token(kLogits.data(), 6, params, 78, c));
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other_seed);
}

TEST(Sampler, MaskedTokensNeverSampled) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> logits = {ninf, 0.0f, ninf, 0.5f, ninf};
  auto freq = frequencies(logits, {1.5, 0, 1.0}, 5000);
  EXPECT_EQ(freq[0] + freq[2] + freq[4], 0.0);
  EXPECT_GT(freq[1], 0.0);
}

TEST(Sampler, RejectsBadInput) {
  std::vector<float> logits = {0.0f, std::nanf(""), 1.0f};
  EXPECT_THROW(sample_token(logits.data(), 3, {1.0, 0, 1.0}, 0, 0), Error);
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> all_masked = {ninf, ninf};
  EXPECT_THROW(sample_token(all_masked.data(), 2, {1.0, 0, 1.0}, 0, 0), Error);
  EXPECT_THROW(sample_token(kLogits.data(), 6, {-1.0, 0, 1.0}, 0, 0), Error);
  EXPECT_THROW(sample_token(kLogits.data(), 6, {1.0, -2, 1.0}, 0, 0), Error);
  EXPECT_THROW(sample_token(kLogits.data(), 6, {1.0, 0, 0.0}, 0, 0), Error);
  EXPECT_THROW(sample_token(kLogits.data(), 6, {1.0, 0, 1.5}, 0, 0), Error);
  EXPECT_THROW(sample_token(kLogits.data(), 0, {1.0, 0, 1.0}, 0, 0), Error);
}

TEST(Sampler, ParamsFromGenerateConfig) {
  GenerateConfig config;
  config.temperature = 0.3;
  config.top_k = 40;
  config.top_p = 0.9;
  SamplingParams params = sampling_params(config);
  EXPECT_EQ(params.temperature, 0.3);
  EXPECT_EQ(params.top_k, 40);
  EXPECT_EQ(params.top_p, 0.9);
}

}  // namespace
}  // namespace frugal
