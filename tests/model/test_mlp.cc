// SwiGLU MLP module: parameter names/shapes, forward against a plain loop, gradient checks for x
// and the three weights, accumulation and the deferred weight-gradient contract.
#include <gtest/gtest.h>

#include <cmath>

#include "gradcheck.h"
#include "model/mlp.h"

namespace frugal {
namespace {

using testing::check_gradient;
using testing::fill_normal;
using testing::weighted_sum;

TEST(MLP, RegistersHuggingFaceNamesAndShapes) {
  ParamStore<float> store;
  MLP<float> mlp(store, "model.layers.0.mlp", 16, 40);
  ASSERT_EQ(store.size(), 3u);
  EXPECT_EQ(store.all()[0]->name, "model.layers.0.mlp.gate_proj.weight");
  EXPECT_EQ(store.all()[1]->name, "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(store.all()[2]->name, "model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(store.get("model.layers.0.mlp.gate_proj.weight").shape, (std::vector<int64_t>{40, 16}));
  EXPECT_EQ(store.get("model.layers.0.mlp.up_proj.weight").shape, (std::vector<int64_t>{40, 16}));
  EXPECT_EQ(store.get("model.layers.0.mlp.down_proj.weight").shape, (std::vector<int64_t>{16, 40}));
  for (auto& p : store.all()) EXPECT_TRUE(p->trainable && p->weight_decay) << p->name;
}

TEST(MLP, ForwardMatchesPlainLoops) {
  const int64_t rows = 3, hidden = 5, inter = 7;
  ParamStore<double> store;
  MLP<double> mlp(store, "mlp", hidden, inter);
  fill_normal(store.get("mlp.gate_proj.weight").value, 1);
  fill_normal(store.get("mlp.up_proj.weight").value, 2);
  fill_normal(store.get("mlp.down_proj.weight").value, 3);
  std::vector<double> x(rows * hidden), y(rows * hidden);
  fill_normal(x, 4);
  MLP<double>::Ctx ctx;
  mlp.forward(ctx, x.data(), y.data(), rows);
  const auto& wg = store.get("mlp.gate_proj.weight").value;
  const auto& wu = store.get("mlp.up_proj.weight").value;
  const auto& wd = store.get("mlp.down_proj.weight").value;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> h(inter);
    for (int64_t i = 0; i < inter; ++i) {
      double g = 0, u = 0;
      for (int64_t j = 0; j < hidden; ++j) {
        g += wg[i * hidden + j] * x[r * hidden + j];
        u += wu[i * hidden + j] * x[r * hidden + j];
      }
      h[i] = g / (1 + std::exp(-g)) * u;
    }
    for (int64_t j = 0; j < hidden; ++j) {
      double out = 0;
      for (int64_t i = 0; i < inter; ++i) out += wd[j * inter + i] * h[i];
      EXPECT_NEAR(y[r * hidden + j], out, 1e-12);
    }
  }
}

TEST(MLP, GradientsMatchFiniteDifferences) {
  const int64_t rows = 4, hidden = 6, inter = 10;
  ParamStore<double> store;
  MLP<double> mlp(store, "mlp", hidden, inter);
  for (size_t i = 0; i < store.size(); ++i) fill_normal(store.all()[i]->value, 10 + i, 0.5);
  std::vector<double> x(rows * hidden), y(rows * hidden), w(rows * hidden), dx(rows * hidden);
  fill_normal(x, 2);
  fill_normal(w, 3);
  auto loss = [&] {
    MLP<double>::Ctx c;
    mlp.forward(c, x.data(), y.data(), rows);
    return weighted_sum(y, w);
  };
  MLP<double>::Ctx ctx;
  mlp.forward(ctx, x.data(), y.data(), rows);
  mlp.backward_input(ctx, w.data(), dx.data());
  for (auto& p : store.all())  // the deferred half has not run yet
    for (double g : p->grad) ASSERT_EQ(g, 0.0) << p->name;
  mlp.backward_weight(ctx);
  EXPECT_EQ(ctx.rows, 0);  // context released
  EXPECT_LT(check_gradient(x, dx, loss, 64, 1e-6, 1e-6, "mlp dx").max_rel_error, 1e-5);
  for (auto& p : store.all())
    EXPECT_LT(
        check_gradient(p->value, p->grad, loss, 64, 1e-6, 1e-6, "mlp d" + p->name).max_rel_error,
        1e-5);
}

TEST(MLP, WeightGradientsAccumulateAndInputGradientAssigns) {
  const int64_t rows = 2, hidden = 4, inter = 3;
  ParamStore<double> store;
  MLP<double> mlp(store, "mlp", hidden, inter);
  for (size_t i = 0; i < store.size(); ++i) fill_normal(store.all()[i]->value, 30 + i);
  std::vector<double> x(rows * hidden), y(rows * hidden), dy(rows * hidden), dx(rows * hidden);
  fill_normal(x, 5);
  fill_normal(dy, 6);
  std::vector<std::vector<double>> once;
  std::vector<double> dx_once;
  for (int pass = 0; pass < 2; ++pass) {
    std::fill(dx.begin(), dx.end(), 123.0);  // garbage: must be overwritten
    MLP<double>::Ctx ctx;
    mlp.forward(ctx, x.data(), y.data(), rows);
    mlp.backward_input(ctx, dy.data(), dx.data());
    mlp.backward_weight(ctx);
    if (pass == 0) {
      for (auto& p : store.all()) once.push_back(p->grad);
      dx_once = dx;
    }
  }
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx[i], dx_once[i], 1e-14);
  for (size_t p = 0; p < store.size(); ++p)
    for (size_t i = 0; i < once[p].size(); ++i)
      EXPECT_NEAR(store.all()[p]->grad[i], 2 * once[p][i], 1e-12);
}

}  // namespace
}  // namespace frugal
