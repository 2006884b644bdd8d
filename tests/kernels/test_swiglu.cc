// SwiGLU op: hand-computed values, finite-difference gradients, stability at large |g|.
#include <gtest/gtest.h>

#include <cmath>

#include "gradcheck.h"
#include "kernels/swiglu/swiglu.h"

namespace frugal {
namespace {

using testing::check_gradient;
using testing::fill_normal;
using testing::weighted_sum;

TEST(SwiGLU, ForwardMatchesHandValues) {
  std::vector<double> g = {0.0, 1.0, -2.0, 3.5}, u = {5.0, 2.0, -1.5, 0.25}, h(4);
  cpu::swiglu_fwd(h.data(), g.data(), u.data(), 4);
  for (int i = 0; i < 4; ++i) {
    double silu = g[i] / (1.0 + std::exp(-g[i]));
    EXPECT_NEAR(h[i], silu * u[i], 1e-15) << i;
  }
  EXPECT_EQ(h[0], 0.0);
  EXPECT_NEAR(h[1], 2.0 * 0.7310585786300049, 1e-15);  // silu(1) = sigmoid(1)
}

TEST(SwiGLU, GradientsMatchFiniteDifferences) {
  const int64_t n = 200;
  std::vector<double> g(n), u(n), h(n), w(n), dg(n), du(n);
  fill_normal(g, 11, 3.0);
  fill_normal(u, 12);
  fill_normal(w, 13);
  auto loss = [&] {
    cpu::swiglu_fwd(h.data(), g.data(), u.data(), n);
    return weighted_sum(h, w);
  };
  cpu::swiglu_bwd(dg.data(), du.data(), w.data(), g.data(), u.data(), n);
  // The loss sums 200 terms, so a central difference carries ~1e-10 of rounding noise; the floor
  // 1e-4 keeps entries near silu's stationary point (g ~ -1.28, dg ~ 0) from amplifying it.
  EXPECT_LT(check_gradient(g, dg, loss, 64, 1e-5, 1e-4, "swiglu dg").max_rel_error, 1e-5);
  EXPECT_LT(check_gradient(u, du, loss, 64, 1e-5, 1e-4, "swiglu du").max_rel_error, 1e-5);
}

TEST(SwiGLU, StableForLargeMagnitudes) {
  std::vector<float> g = {-1000.f, -90.f, 90.f, 1000.f}, u = {1.f, 1.f, 1.f, 1.f}, h(4), dh(4, 1.f),
                     dg(4), du(4);
  cpu::swiglu_fwd(h.data(), g.data(), u.data(), 4);
  cpu::swiglu_bwd(dg.data(), du.data(), dh.data(), g.data(), u.data(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(std::isfinite(h[i]) && std::isfinite(dg[i]) && std::isfinite(du[i])) << i;
  }
  EXPECT_FLOAT_EQ(h[0], 0.f);
  EXPECT_FLOAT_EQ(h[3], 1000.f);
  EXPECT_FLOAT_EQ(dg[3], 1.f);  // silu'(g) -> 1 for large g
  EXPECT_FLOAT_EQ(dg[0], 0.f);
}

TEST(SwiGLU, FloatAgreesWithDouble) {
  const int64_t n = 64;
  std::vector<double> gd(n), ud(n), hd(n);
  fill_normal(gd, 21, 2.0);
  fill_normal(ud, 22);
  std::vector<float> gf(gd.begin(), gd.end()), uf(ud.begin(), ud.end()), hf(n);
  cpu::swiglu_fwd(hd.data(), gd.data(), ud.data(), n);
  cpu::swiglu_fwd(hf.data(), gf.data(), uf.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(hf[i], hd[i], 1e-5 * (1 + std::fabs(hd[i]))) << i;
}

}  // namespace
}  // namespace frugal
