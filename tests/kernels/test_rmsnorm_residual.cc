// CPU references of the RMSNorm residual fusions (kernels/rmsnorm, frugal::cpu), in double:
//   residual_rmsnorm_fwd   h is x + branch exactly and (y, rstd) are rmsnorm_fwd of that h exactly;
//                          y against a direct per-element evaluation of the formula
//   rmsnorm_bwd_input_add  the gradient of L(x) = <gh, h> + <gy, y(h)>, h = x + branch, which is
//                          gh (the skip path) + the norm's input gradient at h: against central
//                          differences of L, with d = 1 (the norm nearly cancels), odd and even d.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal {
namespace {

std::vector<double> random_values(int64_t count, uint64_t seed, double mean, double stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, stddev);
  std::vector<double> values(static_cast<size_t>(count));
  for (double& v : values) v = dist(rng);
  return values;
}

struct Shape {
  int64_t rows, cols;
};
const Shape kShapes[] = {{1, 1}, {3, 5}, {2, 16}, {4, 33}};
constexpr double kEps = 1e-6;

TEST(RmsnormResidualCpu, ForwardIsTheAddThenTheNorm) {
  for (const Shape& s : kShapes) {
    const int64_t n = s.rows, d = s.cols;
    const std::vector<double> x = random_values(n * d, 11 + d, 0.0, 2.0),
                              branch = random_values(n * d, 12 + d, 0.0, 1.0),
                              w = random_values(d, 13 + d, 1.0, 0.2);
    std::vector<double> h(n * d, NAN), y(n * d, NAN), rstd(n, NAN);
    cpu::residual_rmsnorm_fwd(h.data(), y.data(), rstd.data(), x.data(), branch.data(), w.data(), n,
                              d, kEps);
    std::vector<double> y_ref(n * d, NAN), rstd_ref(n, NAN), h_ref(n * d);
    for (int64_t i = 0; i < n * d; ++i) h_ref[i] = x[i] + branch[i];
    cpu::rmsnorm_fwd(y_ref.data(), rstd_ref.data(), h_ref.data(), w.data(), n, d, kEps);
    EXPECT_EQ(h, h_ref) << n << "x" << d;
    EXPECT_EQ(y, y_ref) << n << "x" << d;
    EXPECT_EQ(rstd, rstd_ref) << n << "x" << d;
    for (int64_t i = 0; i < n; ++i) {
      double sum_sq = 0;
      for (int64_t j = 0; j < d; ++j) sum_sq += h_ref[i * d + j] * h_ref[i * d + j];
      const double r = 1.0 / std::sqrt(sum_sq / static_cast<double>(d) + kEps);
      for (int64_t j = 0; j < d; ++j)
        EXPECT_NEAR(y[i * d + j], h_ref[i * d + j] * r * w[j], 1e-12) << n << "x" << d;
    }
  }
}

TEST(RmsnormResidualCpu, BackwardAddIsTheGradientThroughTheStreamAndTheNorm) {
  for (const Shape& s : kShapes) {
    const int64_t n = s.rows, d = s.cols;
    const std::vector<double> x = random_values(n * d, 21 + d, 0.0, 2.0),
                              branch = random_values(n * d, 22 + d, 0.0, 1.0),
                              w = random_values(d, 23 + d, 1.0, 0.2),
                              gh = random_values(n * d, 24 + d, 0.0, 1.0),
                              gy = random_values(n * d, 25 + d, 0.0, 1.0);
    // L(x) = <gh, h> + <gy, y(h)>.
    auto loss = [&](const std::vector<double>& at) {
      std::vector<double> h(n * d), y(n * d), rstd(n);
      cpu::residual_rmsnorm_fwd(h.data(), y.data(), rstd.data(), at.data(), branch.data(), w.data(),
                                n, d, kEps);
      double total = 0;
      for (int64_t i = 0; i < n * d; ++i) total += gh[i] * h[i] + gy[i] * y[i];
      return total;
    };
    std::vector<double> h(n * d), y(n * d), rstd(n), dx(n * d, NAN);
    cpu::residual_rmsnorm_fwd(h.data(), y.data(), rstd.data(), x.data(), branch.data(), w.data(), n,
                              d, kEps);
    cpu::rmsnorm_bwd_input_add(dx.data(), gy.data(), h.data(), w.data(), rstd.data(), gh.data(), n,
                               d);
    // The composition: exactly the norm's dx plus the skip.
    std::vector<double> norm_dx(n * d);
    cpu::rmsnorm_bwd_input(norm_dx.data(), gy.data(), h.data(), w.data(), rstd.data(), n, d);
    for (int64_t i = 0; i < n * d; ++i) EXPECT_EQ(dx[i], gh[i] + norm_dx[i]) << i;
    const double step = 1e-6;
    for (int64_t i = 0; i < n * d; ++i) {
      std::vector<double> plus = x, minus = x;
      plus[i] += step;
      minus[i] -= step;
      const double numeric = (loss(plus) - loss(minus)) / (2 * step);
      EXPECT_NEAR(dx[i], numeric, 1e-6 * std::max(1.0, std::fabs(numeric)))
          << n << "x" << d << " element " << i;
    }
  }
}

}  // namespace
}  // namespace frugal
