// AdamW: update against hand-computed values, decoupled decay only on matrices, clipping,
// non-finite skip, deterministic global norm and an exact checkpoint round trip.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "gradcheck.h"
#include "train/adamw.h"

namespace frugal {
namespace {

using testing::fill_normal;

OptimConfig test_config(double weight_decay, double grad_clip) {
  OptimConfig config;
  config.beta1 = 0.9;
  config.beta2 = 0.95;
  config.eps = 1e-8;
  config.weight_decay = weight_decay;
  config.grad_clip = grad_clip;
  return config;
}

// A matrix (decayed), a norm weight (not decayed) and a buffer (not trained).
template <class T>
void build_store(ParamStore<T>& store) {
  store.add("w", {2, 3}, ParamKind::Matrix);
  store.add("norm", {3}, ParamKind::Norm);
  store.add("bias_buffer", {2}, ParamKind::Buffer);
}

TEST(AdamW, FirstStepMatchesHandComputedUpdate) {
  ParamStore<double> store;
  build_store(store);
  Param<double>& w = store.get("w");
  Param<double>& norm = store.get("norm");
  Param<double>& buffer = store.get("bias_buffer");
  w.value = {0.5, -1.0, 2.0, 0.0, 0.25, -0.75};
  w.grad = {0.1, -0.2, 0.0, 0.3, -0.05, 0.4};
  norm.value = {1.0, 1.0, 1.0};
  norm.grad = {0.01, -0.02, 0.03};
  buffer.value = {3.0, -3.0};
  const double lr = 1e-2, wd = 0.1, eps = 1e-8;
  AdamW<double> adam(test_config(wd, 0.0), store);
  auto info = adam.step(store, lr);
  EXPECT_FALSE(info.skipped);
  EXPECT_EQ(info.clip_scale, 1.0);
  EXPECT_EQ(adam.step_count(), 1);
  // At t = 1 the bias-corrected moments are m_hat = g and v_hat = g^2.
  const std::vector<double> w0 = {0.5, -1.0, 2.0, 0.0, 0.25, -0.75};
  const std::vector<double> gw = {0.1, -0.2, 0.0, 0.3, -0.05, 0.4};
  for (int i = 0; i < 6; ++i) {
    double expected = w0[i] - lr * wd * w0[i] - lr * gw[i] / (std::fabs(gw[i]) + eps);
    EXPECT_NEAR(w.value[i], expected, 1e-15) << "w[" << i << "]";
    EXPECT_NEAR(adam.state()[0].m[i], 0.1 * gw[i], 1e-15);
    EXPECT_NEAR(adam.state()[0].v[i], 0.05 * gw[i] * gw[i], 1e-15);
  }
  const std::vector<double> gn = {0.01, -0.02, 0.03};
  for (int i = 0; i < 3; ++i)
    EXPECT_NEAR(norm.value[i], 1.0 - lr * gn[i] / (std::fabs(gn[i]) + eps), 1e-15);
  EXPECT_EQ(buffer.value, (std::vector<double>{3.0, -3.0}));
  ASSERT_EQ(adam.state().size(), 2u);  // buffers carry no optimizer state
  EXPECT_EQ(adam.state()[0].name, "w");
  EXPECT_EQ(adam.state()[1].name, "norm");
}

TEST(AdamW, SecondStepUsesBiasCorrection) {
  // Two steps on one scalar, in float, against the formulas written out in double.
  ParamStore<float> store;
  Param<float>& p = store.add("p", {1}, ParamKind::Matrix);
  p.value = {0.8f};
  const double lr = 3e-3, wd = 0.1, b1 = 0.9, b2 = 0.95, eps = 1e-8;
  AdamW<float> adam(test_config(wd, 0.0), store);
  const double g1 = 0.5, g2 = -0.25;
  p.grad = {static_cast<float>(g1)};
  adam.step(store, lr);
  p.grad = {static_cast<float>(g2)};
  adam.step(store, lr);

  double value = 0.8, m = 0, v = 0;
  int t = 0;
  for (double g : {g1, g2}) {
    ++t;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    double m_hat = m / (1 - std::pow(b1, t)), v_hat = v / (1 - std::pow(b2, t));
    value = value - lr * wd * value - lr * m_hat / (std::sqrt(v_hat) + eps);
  }
  EXPECT_NEAR(p.value[0], value, 1e-6);
  EXPECT_NEAR(adam.state()[0].m[0], m, 1e-7);
  EXPECT_NEAR(adam.state()[0].v[0], v, 1e-8);
  EXPECT_EQ(adam.step_count(), 2);
}

TEST(AdamW, WeightDecayOnlyOnMatrices) {
  // Zero gradients: the Adam term vanishes and only decoupled decay can move a parameter.
  ParamStore<double> store;
  build_store(store);
  store.get("w").value.assign(6, 2.0);
  store.get("norm").value.assign(3, 2.0);
  store.get("bias_buffer").value.assign(2, 2.0);
  AdamW<double> adam(test_config(0.1, 1.0), store);
  adam.step(store, 0.5);
  for (double x : store.get("w").value) EXPECT_DOUBLE_EQ(x, 2.0 * (1.0 - 0.5 * 0.1));
  for (double x : store.get("norm").value) EXPECT_EQ(x, 2.0);
  for (double x : store.get("bias_buffer").value) EXPECT_EQ(x, 2.0);
}

TEST(AdamW, ClipsToGlobalNorm) {
  ParamStore<double> store;
  Param<double>& a = store.add("a", {1}, ParamKind::Matrix);
  Param<double>& b = store.add("b", {1}, ParamKind::Norm);
  a.grad = {3.0};
  b.grad = {4.0};
  EXPECT_DOUBLE_EQ(global_grad_norm(store), 5.0);
  AdamW<double> adam(test_config(0.0, 1.0), store);
  auto info = adam.step(store, 1e-3);
  EXPECT_DOUBLE_EQ(info.grad_norm, 5.0);
  EXPECT_DOUBLE_EQ(info.clip_scale, 0.2);
  EXPECT_FALSE(info.skipped);
  EXPECT_NEAR(adam.state()[0].m[0], 0.1 * 3.0 * 0.2, 1e-15);
  EXPECT_NEAR(adam.state()[1].v[0], 0.05 * 0.8 * 0.8, 1e-15);

  // Below the threshold, and with clipping disabled, the gradients pass unchanged.
  AdamW<double> loose(test_config(0.0, 10.0), store);
  EXPECT_EQ(loose.step(store, 1e-3).clip_scale, 1.0);
  EXPECT_NEAR(loose.state()[0].m[0], 0.1 * 3.0, 1e-15);
  AdamW<double> off(test_config(0.0, 0.0), store);
  EXPECT_EQ(off.step(store, 1e-3).clip_scale, 1.0);
}

TEST(AdamW, NonFiniteGradientSkipsTheStep) {
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    ParamStore<float> store;
    build_store(store);
    fill_normal(store.get("w").value, 1);
    fill_normal(store.get("w").grad, 2);
    AdamW<float> adam(test_config(0.1, 1.0), store);
    adam.step(store, 1e-2);
    const auto before = store.get("w").value;
    const auto m_before = adam.state()[0].m;
    store.get("norm").grad[1] = static_cast<float>(bad);
    auto info = adam.step(store, 1e-2);
    EXPECT_TRUE(info.skipped);
    EXPECT_FALSE(std::isfinite(info.grad_norm));
    EXPECT_EQ(adam.step_count(), 1);
    EXPECT_EQ(store.get("w").value, before);
    EXPECT_EQ(adam.state()[0].m, m_before);
  }
}

TEST(AdamW, GlobalNormIsIndependentOfThreadCount) {
  ParamStore<float> store;
  Param<float>& big = store.add("big", {300001}, ParamKind::Matrix);
  Param<float>& small = store.add("small", {17}, ParamKind::Norm);
  fill_normal(big.grad, 3);
  fill_normal(small.grad, 4);
  double naive = 0;
  for (float g : big.grad) naive += double(g) * g;
  for (float g : small.grad) naive += double(g) * g;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  double one = global_grad_norm(store);
  omp_set_num_threads(2);
  double two = global_grad_norm(store);
  omp_set_num_threads(saved);
  EXPECT_EQ(one, two);
  EXPECT_NEAR(one, std::sqrt(naive), 1e-9 * std::sqrt(naive));
}

TEST(AdamW, StateRoundTripGivesBitwiseIdenticalNextUpdate) {
  auto make_grads = [](ParamStore<float>& store, uint64_t seed) {
    uint64_t k = 0;
    for (const auto& p : store.all())
      if (p->trainable) fill_normal(p->grad, seed * 100 + k++);
  };
  ParamStore<float> original;
  build_store(original);
  fill_normal(original.get("w").value, 11);
  AdamW<float> adam(test_config(0.1, 1.0), original);
  for (uint64_t s = 0; s < 3; ++s) {
    make_grads(original, s);
    adam.step(original, 1e-2);
  }
  // "Checkpoint": copy parameter values, moments and the step count into a fresh optimizer.
  ParamStore<float> restored;
  build_store(restored);
  for (const auto& p : original.all()) restored.get(p->name).value = p->value;
  AdamW<float> resumed(test_config(0.1, 1.0), restored);
  for (const auto& s : adam.state()) resumed.set_state(s.name, s.m, s.v);
  resumed.set_step_count(adam.step_count());

  make_grads(original, 7);
  make_grads(restored, 7);
  adam.step(original, 1e-2);
  resumed.step(restored, 1e-2);
  for (const auto& p : original.all()) {
    const auto& q = restored.get(p->name);
    ASSERT_EQ(p->value.size(), q.value.size());
    EXPECT_EQ(std::memcmp(p->value.data(), q.value.data(), p->value.size() * sizeof(float)), 0)
        << p->name;
  }
  for (size_t i = 0; i < adam.state().size(); ++i) {
    EXPECT_EQ(adam.state()[i].m, resumed.state()[i].m);
    EXPECT_EQ(adam.state()[i].v, resumed.state()[i].v);
  }
  EXPECT_EQ(resumed.step_count(), 4);

  // Without the step count the bias correction differs, so the update must differ.
  ParamStore<float> wrong;
  build_store(wrong);
  for (const auto& p : original.all()) wrong.get(p->name).value = restored.get(p->name).value;
  AdamW<float> no_count(test_config(0.1, 1.0), wrong);
  for (const auto& s : resumed.state()) no_count.set_state(s.name, s.m, s.v);
  make_grads(wrong, 8);
  make_grads(restored, 8);
  no_count.step(wrong, 1e-2);
  resumed.step(restored, 1e-2);
  EXPECT_NE(wrong.get("w").value, restored.get("w").value);
}

TEST(AdamW, RejectsBadStateAndConfig) {
  ParamStore<float> store;
  build_store(store);
  AdamW<float> adam(test_config(0.1, 1.0), store);
  EXPECT_THROW(adam.set_state("missing", {}, {}), Error);
  EXPECT_THROW(adam.set_state("bias_buffer", {0, 0}, {0, 0}), Error);  // buffers have no state
  EXPECT_THROW(adam.set_state("w", std::vector<float>(5), std::vector<float>(6)), Error);
  EXPECT_THROW(adam.set_step_count(-1), Error);
  OptimConfig bad = test_config(0.1, 1.0);
  bad.beta2 = 1.0;
  EXPECT_THROW(AdamW<float>(bad, store), Error);
  // A store whose layout changed after construction is refused.
  store.add("late", {2}, ParamKind::Norm);
  EXPECT_THROW(adam.step(store, 1e-3), Error);
}

}  // namespace
}  // namespace frugal
