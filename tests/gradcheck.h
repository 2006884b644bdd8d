// Finite-difference gradient checks in double precision, shared by the module and model tests.
//
// check_gradient perturbs up to `max_checks` entries of `values` (chosen deterministically),
// evaluates the scalar loss with central differences, and returns the largest relative error
//   |analytic - numeric| / max(|analytic|, |numeric|, floor)
// against the analytic gradient. The floor keeps entries whose true gradient is ~0 from turning
// rounding noise into huge relative errors.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace frugal::testing {

struct GradCheckResult {
  double max_rel_error = 0;
  int64_t checked = 0;
};

inline GradCheckResult check_gradient(std::vector<double>& values, const std::vector<double>& analytic,
                                      const std::function<double()>& loss, int64_t max_checks = 64,
                                      double eps = 1e-6, double floor = 1e-7,
                                      const std::string& label = "") {
  GradCheckResult result;
  int64_t n = static_cast<int64_t>(values.size());
  std::vector<int64_t> picks;
  if (n <= max_checks) {
    for (int64_t i = 0; i < n; ++i) picks.push_back(i);
  } else {
    RandomStream rng(7, hash_name(label));
    for (int64_t i = 0; i < max_checks; ++i)
      picks.push_back(static_cast<int64_t>(rng.uniform(i) * static_cast<double>(n)) % n);
  }
  for (int64_t i : picks) {
    double saved = values[i];
    values[i] = saved + eps;
    double plus = loss();
    values[i] = saved - eps;
    double minus = loss();
    values[i] = saved;
    double numeric = (plus - minus) / (2 * eps);
    double a = analytic[i];
    double denom = std::max({std::fabs(a), std::fabs(numeric), floor});
    result.max_rel_error = std::max(result.max_rel_error, std::fabs(a - numeric) / denom);
    ++result.checked;
  }
  if (!label.empty())
    std::printf("gradcheck %-48s checked %4lld  max rel error %.3e\n", label.c_str(),
                static_cast<long long>(result.checked), result.max_rel_error);
  return result;
}

// Fill with N(0, std) from a counter-based stream.
inline void fill_normal(std::vector<double>& v, uint64_t seed, double std = 1.0) {
  RandomStream rng(seed, 0);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std * rng.normal(i);
}
inline void fill_normal(std::vector<float>& v, uint64_t seed, double std = 1.0) {
  RandomStream rng(seed, 0);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(std * rng.normal(i));
}

// A fixed random "upstream gradient" makes a scalar loss L = sum(y * w) out of any output y.
inline double weighted_sum(const std::vector<double>& y, const std::vector<double>& w) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * w[i];
  return s;
}

}  // namespace frugal::testing
