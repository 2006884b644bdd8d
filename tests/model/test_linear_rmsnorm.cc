// Gradient checks for the two basic modules and the ops under them (gemm, rmsnorm).
#include <gtest/gtest.h>

#include "gradcheck.h"
#include "model/linear.h"
#include "model/rmsnorm.h"

namespace frugal {
namespace {

using testing::check_gradient;
using testing::fill_normal;
using testing::weighted_sum;

TEST(Linear, GradientsMatchFiniteDifferences) {
  const int64_t rows = 5, in = 7, out = 3;
  ParamStore<double> store;
  Linear<double> lin(store, "lin", in, out);
  fill_normal(lin.weight().value, 1);
  std::vector<double> x(rows * in), y(rows * out), w(rows * out), dx(rows * in);
  fill_normal(x, 2);
  fill_normal(w, 3);
  auto loss = [&] {
    Linear<double>::Ctx c;
    lin.forward(c, x.data(), y.data(), rows);
    return weighted_sum(y, w);
  };
  Linear<double>::Ctx ctx;
  lin.forward(ctx, x.data(), y.data(), rows);
  lin.backward_input(ctx, w.data(), dx.data());
  lin.backward_weight(ctx);
  EXPECT_LT(check_gradient(x, dx, loss, 64, 1e-6, 1e-7, "linear dx").max_rel_error, 1e-7);
  EXPECT_LT(check_gradient(lin.weight().value, lin.weight().grad, loss, 64, 1e-6, 1e-7, "linear dW")
                .max_rel_error,
            1e-7);
}

TEST(Linear, WeightGradientAccumulatesAcrossCalls) {
  ParamStore<double> store;
  Linear<double> lin(store, "lin", 4, 2);
  fill_normal(lin.weight().value, 1);
  std::vector<double> x(3 * 4), y(3 * 2), dy(3 * 2), dx(3 * 4);
  fill_normal(x, 2);
  fill_normal(dy, 3);
  for (int i = 0; i < 2; ++i) {
    Linear<double>::Ctx ctx;
    lin.forward(ctx, x.data(), y.data(), 3);
    lin.backward_input(ctx, dy.data(), dx.data());
    lin.backward_weight(ctx);
  }
  std::vector<double> once(8, 0.0);
  cpu::matmul_tn(once.data(), dy.data(), x.data(), 2, 4, 3, true);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(lin.weight().grad[i], 2 * once[i], 1e-12);
}

TEST(RMSNorm, GradientsMatchFiniteDifferences) {
  const int64_t rows = 4, dim = 9;
  ParamStore<double> store;
  RMSNorm<double> norm(store, "norm", dim, 1e-6);
  fill_normal(norm.weight().value, 5);
  std::vector<double> x(rows * dim), y(rows * dim), w(rows * dim), dx(rows * dim);
  fill_normal(x, 6);
  fill_normal(w, 7);
  auto loss = [&] {
    RMSNorm<double>::Ctx c;
    norm.forward(c, x.data(), y.data(), rows);
    return weighted_sum(y, w);
  };
  RMSNorm<double>::Ctx ctx;
  norm.forward(ctx, x.data(), y.data(), rows);
  norm.backward_input(ctx, w.data(), dx.data());
  norm.backward_weight(ctx);
  EXPECT_LT(check_gradient(x, dx, loss, 64, 1e-6, 1e-7, "rmsnorm dx").max_rel_error, 1e-6);
  EXPECT_LT(check_gradient(norm.weight().value, norm.weight().grad, loss, 64, 1e-6, 1e-7,
                           "rmsnorm dw")
                .max_rel_error,
            1e-6);
}

TEST(RMSNorm, NormalisesToUnitRms) {
  ParamStore<float> store;
  RMSNorm<float> norm(store, "norm", 8, 1e-6);
  std::vector<float> x = {1, -2, 3, -4, 5, -6, 7, -8}, y(8);
  RMSNorm<float>::Ctx ctx;
  norm.forward(ctx, x.data(), y.data(), 1);
  double ms = 0;
  for (float v : y) ms += double(v) * v;
  EXPECT_NEAR(ms / 8, 1.0, 1e-5);
}

}  // namespace
}  // namespace frugal
