// DeepSeekMoE module: parameter names/shapes for a V3-shaped small config, forward against a
// per-token reference, the balance loss against its definition, gradient checks in double for x
// and every parameter (balance loss on and off, sigmoid/noaux_tc with groups, softmax/greedy),
// the deferred weight-gradient contract, load counting and the bias update rule.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "gradcheck.h"
#include "model/moe.h"

namespace frugal {
namespace {

using testing::check_gradient;
using testing::fill_normal;
using testing::weighted_sum;

// DeepSeek-V3's MoE settings at toy size: 8 experts in 4 groups of 2, 2 groups kept, top-2.
ModelConfig v3_small() {
  ModelConfig c;
  c.hidden_size = 12;
  c.moe_intermediate_size = 6;
  c.n_routed_experts = 8;
  c.n_shared_experts = 2;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.scoring_func = "sigmoid";
  c.topk_method = "noaux_tc";
  c.norm_topk_prob = true;
  return c;
}

ModelConfig v2_style_softmax_greedy() {
  ModelConfig c = v3_small();
  c.n_shared_experts = 0;
  c.num_experts_per_tok = 3;
  c.scoring_func = "softmax";
  c.topk_method = "greedy";
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.0;
  return c;
}

void randomise(ParamStore<double>& store, uint64_t seed) {
  for (size_t i = 0; i < store.size(); ++i) {
    Param<double>& p = *store.all()[i];
    const bool is_gate = p.name.find(".gate.weight") != std::string::npos;
    const bool is_bias = p.name.find("e_score_correction_bias") != std::string::npos;
    fill_normal(p.value, seed + i, is_gate ? 0.6 : (is_bias ? 0.1 : 0.4));
  }
}

TEST(MoE, RegistersHuggingFaceNamesAndShapes) {
  ModelConfig cfg = v3_small();
  ParamStore<float> store;
  MoE<float> moe(store, "model.layers.3.mlp", cfg);
  ASSERT_EQ(store.size(), 2u + 8 * 3 + 3);
  auto& gate = store.get("model.layers.3.mlp.gate.weight");
  EXPECT_EQ(gate.shape, (std::vector<int64_t>{8, 12}));
  EXPECT_TRUE(gate.trainable);
  auto& bias = store.get("model.layers.3.mlp.gate.e_score_correction_bias");
  EXPECT_EQ(bias.shape, (std::vector<int64_t>{8}));
  EXPECT_FALSE(bias.trainable);
  EXPECT_TRUE(bias.grad.empty());
  for (float b : bias.value) EXPECT_EQ(b, 0.f);
  for (int e = 0; e < 8; ++e) {
    const std::string p = "model.layers.3.mlp.experts." + std::to_string(e);
    EXPECT_EQ(store.get(p + ".gate_proj.weight").shape, (std::vector<int64_t>{6, 12}));
    EXPECT_EQ(store.get(p + ".up_proj.weight").shape, (std::vector<int64_t>{6, 12}));
    EXPECT_EQ(store.get(p + ".down_proj.weight").shape, (std::vector<int64_t>{12, 6}));
  }
  // Shared experts: one MLP of moe_intermediate_size * n_shared_experts = 12.
  const std::string s = "model.layers.3.mlp.shared_experts";
  EXPECT_EQ(store.get(s + ".gate_proj.weight").shape, (std::vector<int64_t>{12, 12}));
  EXPECT_EQ(store.get(s + ".up_proj.weight").shape, (std::vector<int64_t>{12, 12}));
  EXPECT_EQ(store.get(s + ".down_proj.weight").shape, (std::vector<int64_t>{12, 12}));
  EXPECT_TRUE(moe.has_bias());
  EXPECT_TRUE(moe.has_shared_experts());

  // Softmax/greedy without shared experts: no bias buffer, no shared MLP.
  ParamStore<float> store2;
  MoE<float> v2(store2, "model.layers.1.mlp", v2_style_softmax_greedy());
  EXPECT_EQ(store2.size(), 1u + 8 * 3);
  EXPECT_EQ(store2.find("model.layers.1.mlp.gate.e_score_correction_bias"), nullptr);
  EXPECT_EQ(store2.find("model.layers.1.mlp.shared_experts.up_proj.weight"), nullptr);
  EXPECT_FALSE(v2.has_bias());
}

TEST(MoE, ForwardMatchesPerTokenReference) {
  ModelConfig cfg = v3_small();
  ParamStore<double> store;
  MoE<double> moe(store, "moe", cfg);
  randomise(store, 100);
  const int64_t batch = 2, seq = 5, rows = batch * seq, H = cfg.hidden_size;
  std::vector<double> x(rows * H), y(rows * H);
  fill_normal(x, 7);
  MoE<double>::Ctx ctx;
  moe.forward(ctx, x.data(), y.data(), batch, seq, 0.0, false);

  const auto& wg = moe.gate_weight().value;
  const auto& bias = moe.bias().value;
  for (int64_t t = 0; t < rows; ++t) {
    const double* xt = x.data() + t * H;
    // Routing of this token alone, from its own logits.
    std::vector<double> logits(8), scores(8), w(2);
    for (int e = 0; e < 8; ++e) {
      logits[e] = 0;
      for (int64_t j = 0; j < H; ++j) logits[e] += wg[e * H + j] * xt[j];
    }
    std::vector<int64_t> idx(2);
    cpu::router_fwd(idx.data(), w.data(), scores.data(), logits.data(), bias.data(), 1,
                    moe.router());
    EXPECT_EQ(idx[0], ctx.topk_idx[t * 2]);
    EXPECT_EQ(idx[1], ctx.topk_idx[t * 2 + 1]);
    std::vector<double> expect(H), out(H);
    typename MLP<double>::Ctx c;
    moe.shared_experts().forward(c, xt, expect.data(), 1);
    for (int k = 0; k < 2; ++k) {
      moe.expert(idx[k]).forward(c, xt, out.data(), 1);
      for (int64_t j = 0; j < H; ++j) expect[j] += w[k] * out[j];
    }
    for (int64_t j = 0; j < H; ++j) EXPECT_NEAR(y[t * H + j], expect[j], 1e-12) << t << "," << j;
  }
}

TEST(MoE, BalanceLossMatchesItsDefinition) {
  ModelConfig cfg = v3_small();
  ParamStore<double> store;
  MoE<double> moe(store, "moe", cfg);
  randomise(store, 200);
  const int64_t batch = 3, seq = 4, H = cfg.hidden_size, E = 8, K = 2;
  std::vector<double> x(batch * seq * H), y(batch * seq * H);
  fill_normal(x, 8);
  MoE<double>::Ctx ctx;
  const double alpha = 0.01;
  const double loss = moe.forward(ctx, x.data(), y.data(), batch, seq, alpha, false);
  // alpha * mean_b sum_i f_i P_i with s = sigmoid(x W_gᵀ) normalised over all experts.
  double total = 0;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<double> f(E, 0.0), P(E, 0.0);
    for (int64_t t = b * seq; t < (b + 1) * seq; ++t) {
      std::vector<double> s(E);
      double sum = 0;
      for (int64_t e = 0; e < E; ++e) {
        double z = 0;
        for (int64_t j = 0; j < H; ++j) z += moe.gate_weight().value[e * H + j] * x[t * H + j];
        s[e] = 1 / (1 + std::exp(-z));
        sum += s[e];
      }
      for (int64_t e = 0; e < E; ++e) P[e] += s[e] / sum / seq;
      for (int64_t k = 0; k < K; ++k) f[ctx.topk_idx[t * K + k]] += double(E) / (K * seq);
    }
    for (int64_t e = 0; e < E; ++e) total += f[e] * P[e];
  }
  EXPECT_NEAR(loss, alpha * total / batch, 1e-15);
  EXPECT_GT(loss, 0.0);
  EXPECT_EQ(moe.forward(ctx, x.data(), y.data(), batch, seq, 0.0, false), 0.0);
}

// Gradient of L = sum(y * w) + dloss_balance * balance_loss w.r.t. x and every parameter; the
// check also confirms that no perturbation moved a routing decision (we stay away from ties).
void check_moe_gradients(const ModelConfig& cfg, double alpha, const std::string& label) {
  ParamStore<double> store;
  MoE<double> moe(store, "moe", cfg);
  randomise(store, 300);
  const int64_t batch = 2, seq = 6, rows = batch * seq, H = cfg.hidden_size;
  const double dloss_balance = 1.3;
  std::vector<double> x(rows * H), y(rows * H), w(rows * H), dx(rows * H);
  fill_normal(x, 9);
  fill_normal(w, 10);

  MoE<double>::Ctx ctx;
  const double balance = moe.forward(ctx, x.data(), y.data(), batch, seq, alpha, false);
  const std::vector<int64_t> routing = ctx.topk_idx;
  int64_t routing_changes = 0;
  auto loss = [&] {
    MoE<double>::Ctx c;
    double bal = moe.forward(c, x.data(), y.data(), batch, seq, alpha, false);
    if (c.topk_idx != routing) ++routing_changes;
    return weighted_sum(y, w) + dloss_balance * bal;
  };
  if (alpha != 0) {
    EXPECT_GT(balance, 0.0) << label;
  }
  std::fill(dx.begin(), dx.end(), -9.0);  // must be overwritten
  moe.backward_input(ctx, w.data(), dx.data(), dloss_balance);
  for (auto& p : store.all())  // backward_input leaves every parameter gradient alone
    for (double g : p->grad) ASSERT_EQ(g, 0.0) << label << " " << p->name;
  moe.backward_weight(ctx);

  // eps 1e-4: the loss sums many terms, so a central difference carries ~1e-10 of rounding noise
  // at eps 1e-5, which is 3e-6 of the smallest expert gradients (~1e-4); at eps 1e-4 both noise
  // and truncation stay below ~3e-6, and the routing check below shows no decision moved.
  EXPECT_LT(check_gradient(x, dx, loss, 96, 1e-4, 1e-6, label + " dx").max_rel_error, 1e-5);
  int64_t params_with_gradient = 0;
  for (auto& p : store.all()) {
    if (!p->trainable) continue;
    bool nonzero = false;
    for (double g : p->grad) nonzero |= g != 0.0;
    params_with_gradient += nonzero;
    EXPECT_LT(check_gradient(p->value, p->grad, loss, 48, 1e-4, 1e-6, label + " d" + p->name)
                  .max_rel_error,
              1e-5);
  }
  EXPECT_GT(params_with_gradient, 3) << label;
  EXPECT_EQ(routing_changes, 0) << label;
}

TEST(MoE, GradientsSigmoidNoauxTcGroupedWithBalanceLoss) {
  check_moe_gradients(v3_small(), 0.3, "moe sigmoid noaux_tc +balance");
}
TEST(MoE, GradientsSigmoidNoauxTcGroupedWithoutBalanceLoss) {
  check_moe_gradients(v3_small(), 0.0, "moe sigmoid noaux_tc");
}
TEST(MoE, GradientsSoftmaxGreedyWithBalanceLoss) {
  check_moe_gradients(v2_style_softmax_greedy(), 0.3, "moe softmax greedy +balance");
}
TEST(MoE, GradientsSoftmaxGroupLimitedGreedyUnnormalised) {
  ModelConfig cfg = v2_style_softmax_greedy();
  cfg.topk_method = "group_limited_greedy";
  cfg.n_shared_experts = 1;
  cfg.routed_scaling_factor = 16.0;
  check_moe_gradients(cfg, 0.0, "moe softmax group_limited_greedy");
}

TEST(MoE, BalanceLossGradientReachesGateOnlyThroughScores) {
  // With the balance loss as the only objective (dy = 0) just the gate weight and x get gradient.
  ModelConfig cfg = v3_small();
  ParamStore<double> store;
  MoE<double> moe(store, "moe", cfg);
  randomise(store, 400);
  const int64_t rows = 8, H = cfg.hidden_size;
  std::vector<double> x(rows * H), y(rows * H), dy(rows * H, 0.0), dx(rows * H);
  fill_normal(x, 11);
  MoE<double>::Ctx ctx;
  moe.forward(ctx, x.data(), y.data(), 2, 4, 0.5, false);
  moe.backward_input(ctx, dy.data(), dx.data(), 1.0);
  moe.backward_weight(ctx);
  double gate_norm = 0, x_norm = 0, other = 0;
  for (double g : moe.gate_weight().grad) gate_norm += g * g;
  for (double g : dx) x_norm += g * g;
  for (auto& p : store.all())
    if (p->trainable && p->name != "moe.gate.weight")
      for (double g : p->grad) other += g * g;
  EXPECT_GT(gate_norm, 0.0);
  EXPECT_GT(x_norm, 0.0);
  EXPECT_EQ(other, 0.0);
  // ... and they match finite differences of the balance loss alone.
  auto loss = [&] {
    MoE<double>::Ctx c;
    return moe.forward(c, x.data(), y.data(), 2, 4, 0.5, false);
  };
  EXPECT_LT(check_gradient(x, dx, loss, 96, 1e-5, 1e-7, "moe balance loss only dx").max_rel_error,
            1e-5);
  EXPECT_LT(check_gradient(moe.gate_weight().value, moe.gate_weight().grad, loss, 96, 1e-5, 1e-7,
                           "moe balance loss only dgate")
                .max_rel_error,
            1e-5);
  // dloss_balance = 0 switches it off.
  store.zero_grad();
  moe.forward(ctx, x.data(), y.data(), 2, 4, 0.5, false);
  moe.backward_input(ctx, dy.data(), dx.data(), 0.0);
  moe.backward_weight(ctx);
  for (double g : moe.gate_weight().grad) EXPECT_EQ(g, 0.0);
}

TEST(MoE, WeightGradientsAccumulate) {
  ModelConfig cfg = v3_small();
  ParamStore<double> store;
  MoE<double> moe(store, "moe", cfg);
  randomise(store, 500);
  const int64_t rows = 6, H = cfg.hidden_size;
  std::vector<double> x(rows * H), y(rows * H), dy(rows * H), dx(rows * H);
  fill_normal(x, 12);
  fill_normal(dy, 13);
  std::vector<std::vector<double>> once;
  for (int pass = 0; pass < 2; ++pass) {
    MoE<double>::Ctx ctx;
    moe.forward(ctx, x.data(), y.data(), 1, rows, 0.1, false);
    moe.backward_input(ctx, dy.data(), dx.data(), 1.0);
    moe.backward_weight(ctx);
    EXPECT_EQ(ctx.rows, 0);  // released
    if (pass == 0)
      for (auto& p : store.all()) once.push_back(p->grad);
  }
  for (size_t p = 0; p < store.size(); ++p)
    for (size_t i = 0; i < once[p].size(); ++i)
      EXPECT_NEAR(store.all()[p]->grad[i], 2 * once[p][i], 1e-12) << store.all()[p]->name;
}

TEST(MoE, FloatAgreesWithDouble) {
  ModelConfig cfg = v3_small();
  ParamStore<double> sd;
  ParamStore<float> sf;
  MoE<double> md(sd, "moe", cfg);
  MoE<float> mf(sf, "moe", cfg);
  randomise(sd, 600);
  for (size_t i = 0; i < sd.size(); ++i)
    sf.all()[i]->value.assign(sd.all()[i]->value.begin(), sd.all()[i]->value.end());
  const int64_t rows = 10, H = cfg.hidden_size;
  std::vector<double> xd(rows * H), yd(rows * H);
  fill_normal(xd, 14);
  std::vector<float> xf(xd.begin(), xd.end()), yf(rows * H);
  MoE<double>::Ctx cd;
  MoE<float>::Ctx cf;
  double ld = md.forward(cd, xd.data(), yd.data(), 2, 5, 0.1, false);
  float lf = mf.forward(cf, xf.data(), yf.data(), 2, 5, 0.1, false);
  EXPECT_EQ(cd.topk_idx, cf.topk_idx);
  EXPECT_NEAR(lf, ld, 1e-6);
  for (int64_t i = 0; i < rows * H; ++i) EXPECT_NEAR(yf[i], yd[i], 1e-4 * (1 + std::fabs(yd[i])));
}

TEST(MoE, CountsLoadPerExpert) {
  ModelConfig cfg = v3_small();
  ParamStore<double> store;
  MoE<double> moe(store, "moe", cfg);
  randomise(store, 700);
  const int64_t rows = 9, H = cfg.hidden_size;
  std::vector<double> x(rows * H), y(rows * H);
  fill_normal(x, 15);
  MoE<double>::Ctx ctx;
  moe.forward(ctx, x.data(), y.data(), 1, rows, 0.0, true);
  std::vector<int64_t> expect(8, 0);
  for (int64_t e : ctx.topk_idx) ++expect[e];
  EXPECT_EQ(moe.expert_load(), expect);
  moe.forward(ctx, x.data(), y.data(), 1, rows, 0.0, false);  // not counted
  EXPECT_EQ(moe.expert_load(), expect);
  moe.forward(ctx, x.data(), y.data(), 3, 3, 0.0, true);
  for (auto& v : expect) v *= 2;
  EXPECT_EQ(moe.expert_load(), expect);
  ExpertLoadStats stats = expert_load_stats(moe.expert_load());
  EXPECT_EQ(stats.total, 2 * rows * 2);
  EXPECT_DOUBLE_EQ(stats.mean, 2.0 * rows * 2 / 8);
  EXPECT_EQ(stats.max, *std::max_element(expect.begin(), expect.end()));
  EXPECT_EQ(stats.min, *std::min_element(expect.begin(), expect.end()));
  EXPECT_DOUBLE_EQ(stats.max_over_mean, stats.max / stats.mean);
  moe.reset_load();
  EXPECT_EQ(moe.expert_load(), std::vector<int64_t>(8, 0));
  EXPECT_EQ(expert_load_stats(moe.expert_load()).max_over_mean, 0.0);
}

TEST(MoE, BiasUpdateFollowsTheSignRule) {
  ModelConfig cfg = v3_small();
  ParamStore<double> store;
  MoE<double> moe(store, "moe", cfg);
  // Mean load 4: overloaded experts go down by gamma, underloaded up, exactly-average unchanged.
  moe.update_bias(0.001, {6, 2, 4, 4, 9, 0, 3, 4});
  const std::vector<double> expect = {-0.001, 0.001, 0, 0, -0.001, 0.001, 0.001, 0};
  for (int e = 0; e < 8; ++e) EXPECT_DOUBLE_EQ(moe.bias().value[e], expect[e]) << e;

  // From the layer's own counters, which then restart.
  randomise(store, 800);
  std::vector<double> before = moe.bias().value;
  const int64_t rows = 7, H = cfg.hidden_size;
  std::vector<double> x(rows * H), y(rows * H);
  fill_normal(x, 16);
  MoE<double>::Ctx ctx;
  moe.forward(ctx, x.data(), y.data(), 1, rows, 0.0, true);
  const std::vector<int64_t> load = moe.expert_load();
  moe.update_bias(0.01);
  const double mean = 2.0 * rows / 8;
  for (int e = 0; e < 8; ++e) {
    double step = load[e] < mean ? 0.01 : (load[e] > mean ? -0.01 : 0.0);
    EXPECT_NEAR(moe.bias().value[e], before[e] + step, 1e-15) << e;
  }
  EXPECT_EQ(moe.expert_load(), std::vector<int64_t>(8, 0));
  // The bias steers selection but the gate gets no gradient from it; gamma 0 changes nothing.
  before = moe.bias().value;
  moe.update_bias(0.0, {1, 0, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(moe.bias().value, before);
  EXPECT_THROW(moe.update_bias(0.1, {1, 2, 3}), Error);

  // Without noaux_tc there is no bias: a nonzero gamma is an error naming the layer.
  ParamStore<double> store2;
  MoE<double> greedy(store2, "model.layers.2.mlp", v2_style_softmax_greedy());
  greedy.update_bias(0.0);
  try {
    greedy.update_bias(0.001);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.2.mlp"), std::string::npos) << e.what();
  }
}

TEST(MoE, MaskedGroupFillIsConfigurable) {
  ParamStore<double> store;
  MoE<double> moe(store, "moe", v3_small());
  EXPECT_TRUE(std::isinf(moe.router().masked_group_fill) && moe.router().masked_group_fill < 0);
  moe.set_masked_group_fill(0.0);
  EXPECT_EQ(moe.router().masked_group_fill, 0.0);
}

TEST(MoE, RejectsBadConfigWithKeyNames) {
  auto expect_error = [](ModelConfig cfg, const std::string& needle) {
    ParamStore<double> store;
    try {
      MoE<double> moe(store, "moe", cfg);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ModelConfig cfg = v3_small();
  cfg.n_group = 3;
  expect_error(cfg, "model.n_group");
  cfg = v3_small();
  cfg.scoring_func = "tanh";
  expect_error(cfg, "model.scoring_func");
  cfg = v3_small();
  cfg.topk_method = "aux";
  expect_error(cfg, "model.topk_method");
  cfg = v3_small();
  cfg.num_experts_per_tok = 0;
  expect_error(cfg, "model.num_experts_per_tok");
  cfg = v3_small();
  cfg.moe_intermediate_size = 0;
  expect_error(cfg, "model.moe_intermediate_size");
}

}  // namespace
}  // namespace frugal
