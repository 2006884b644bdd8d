// MoE router, sequence-wise balance loss and token permutation ops: hand-computed routing
// (group selection by top-2 sum, bias for selection only, normalisation, scaling, ties, the -inf
// vs 0 masked-group fill), configuration errors, and finite-difference gradient checks in double.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "gradcheck.h"
#include "kernels/moe/balance_loss.h"
#include "kernels/moe/permute.h"
#include "kernels/moe/router.h"
#include "router_test_util.h"

namespace frugal {
namespace {

using cpu::RouterParams;
using cpu::ScoringFunc;
using cpu::TopkMethod;
using testing::check_gradient;
using testing::router_params;
using testing::fill_normal;
using testing::weighted_sum;

// Logits whose sigmoid is exactly (to rounding) the given scores.
std::vector<double> sigmoid_logits(const std::vector<double>& scores) {
  std::vector<double> logits;
  for (double s : scores) logits.push_back(std::log(s / (1 - s)));
  return logits;
}

struct Routed {
  std::vector<int64_t> idx;
  std::vector<double> weight, scores;
};

Routed route(const RouterParams& p, const std::vector<double>& logits,
             const std::vector<double>* bias = nullptr) {
  const int64_t tokens = static_cast<int64_t>(logits.size()) / p.n_experts;
  Routed r;
  r.idx.resize(tokens * p.top_k);
  r.weight.resize(tokens * p.top_k);
  r.scores.resize(logits.size());
  cpu::router_fwd(r.idx.data(), r.weight.data(), r.scores.data(), logits.data(),
                  bias ? bias->data() : nullptr, tokens, p);
  return r;
}

TEST(Router, NoauxTcScoresGroupsByTheSumOfTheirTopTwo) {
  // Groups of 2: sums {1.0, 1.2, 1.1, 0.5}, maxima {0.9, 0.6, 0.55, 0.3}.
  const std::vector<double> s = {0.9, 0.1, 0.6, 0.6, 0.55, 0.55, 0.2, 0.3};
  auto noaux = router_params(8, 2, 4, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, false, 1.0);
  Routed r = route(noaux, sigmoid_logits(s));
  // Groups 1 and 2 win on the top-2 sum, so the globally best expert 0 is out; 2 and 3 tie at
  // 0.6 and come out lower index first.
  EXPECT_EQ(r.idx, (std::vector<int64_t>{2, 3}));
  EXPECT_NEAR(r.weight[0], 0.6, 1e-12);
  EXPECT_NEAR(r.weight[1], 0.6, 1e-12);
  for (int e = 0; e < 8; ++e) EXPECT_NEAR(r.scores[e], s[e], 1e-12);

  // DeepSeek-V2's group_limited_greedy scores a group by its max: groups 0 and 1 win.
  auto v2 = router_params(8, 2, 4, 2, ScoringFunc::Sigmoid, TopkMethod::GroupLimitedGreedy, false, 1.0);
  EXPECT_EQ(route(v2, sigmoid_logits(s)).idx, (std::vector<int64_t>{0, 2}));
  // Keeping only the best group: top-2 sum keeps group 1, max keeps group 0.
  noaux.topk_group = 1;
  v2.topk_group = 1;
  EXPECT_EQ(route(noaux, sigmoid_logits(s)).idx, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(route(v2, sigmoid_logits(s)).idx, (std::vector<int64_t>{0, 1}));
}

TEST(Router, BiasChangesTheSelectionButNotTheWeights) {
  const std::vector<double> s = {0.8, 0.7, 0.6, 0.5};
  const std::vector<double> bias = {0.0, 0.0, 0.3, 0.0};
  auto p = router_params(4, 2, 1, 1, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 2.5);
  Routed plain = route(p, sigmoid_logits(s));
  EXPECT_EQ(plain.idx, (std::vector<int64_t>{0, 1}));
  EXPECT_NEAR(plain.weight[0], 0.8 / 1.5 * 2.5, 1e-12);
  EXPECT_NEAR(plain.weight[1], 0.7 / 1.5 * 2.5, 1e-12);
  Routed biased = route(p, sigmoid_logits(s), &bias);
  // choice = s + b = {0.8, 0.7, 0.9, 0.5}: expert 2 first, then 0; weights use the unbiased s.
  EXPECT_EQ(biased.idx, (std::vector<int64_t>{2, 0}));
  EXPECT_NEAR(biased.weight[0], 0.6 / 1.4 * 2.5, 1e-12);
  EXPECT_NEAR(biased.weight[1], 0.8 / 1.4 * 2.5, 1e-12);
  // Only noaux_tc reads the bias.
  auto greedy = router_params(4, 2, 1, 1, ScoringFunc::Sigmoid, TopkMethod::Greedy, true, 2.5);
  EXPECT_EQ(route(greedy, sigmoid_logits(s), &bias).idx, (std::vector<int64_t>{0, 1}));
}

TEST(Router, NormalisationAndScaling) {
  const std::vector<double> s = {0.2, 0.9, 0.4, 0.7, 0.1, 0.3};
  auto p = router_params(6, 3, 1, 1, ScoringFunc::Sigmoid, TopkMethod::Greedy, false, 16.0);
  Routed r = route(p, sigmoid_logits(s));
  EXPECT_EQ(r.idx, (std::vector<int64_t>{1, 3, 2}));
  EXPECT_NEAR(r.weight[0], 0.9 * 16.0, 1e-11);
  EXPECT_NEAR(r.weight[1], 0.7 * 16.0, 1e-11);
  EXPECT_NEAR(r.weight[2], 0.4 * 16.0, 1e-11);
  p.norm_topk_prob = true;
  r = route(p, sigmoid_logits(s));
  EXPECT_NEAR(r.weight[0], 0.9 / 2.0 * 16.0, 1e-11);
  EXPECT_NEAR(r.weight[1], 0.7 / 2.0 * 16.0, 1e-11);
  EXPECT_NEAR(r.weight[2], 0.4 / 2.0 * 16.0, 1e-11);
  EXPECT_NEAR(r.weight[0] + r.weight[1] + r.weight[2], 16.0, 1e-11);
}

TEST(Router, SoftmaxGreedyMatchesHandValues) {
  const std::vector<double> logits = {1.0, 2.0, 3.0, 0.0, /*token 2*/ 0.5, -1.0, 0.5, 4.0};
  auto p = router_params(4, 2, 1, 1, ScoringFunc::Softmax, TopkMethod::Greedy, false, 1.0);
  Routed r = route(p, logits);
  const double z0 = std::exp(1.0) + std::exp(2.0) + std::exp(3.0) + 1.0;
  EXPECT_EQ(r.idx[0], 2);
  EXPECT_EQ(r.idx[1], 1);
  EXPECT_NEAR(r.weight[0], std::exp(3.0) / z0, 1e-14);
  EXPECT_NEAR(r.weight[1], std::exp(2.0) / z0, 1e-14);
  // Token 2: experts 0 and 2 tie for second place; the lower index wins.
  EXPECT_EQ(r.idx[2], 3);
  EXPECT_EQ(r.idx[3], 0);
  double sum = 0;
  for (int e = 0; e < 4; ++e) sum += r.scores[4 + e];
  EXPECT_NEAR(sum, 1.0, 1e-14);
}

TEST(Router, TiesGoToTheLowerIndex) {
  const std::vector<double> logits(8, 0.25);
  auto p = router_params(8, 3, 4, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 1.0);
  Routed r = route(p, logits);
  EXPECT_EQ(r.idx, (std::vector<int64_t>{0, 1, 2}));  // groups 0 and 1 tie with all others
  for (double w : r.weight) EXPECT_NEAR(w, 1.0 / 3.0, 1e-14);
}

// Spec §2.1 step 4: DeepSeek's code masks dropped groups with -inf, Hugging Face transformers with
// 0.0. They differ when a kept group holds a negative biased score.
TEST(Router, MaskedGroupFillMinusInfinityAndZeroPickDifferentExperts) {
  const std::vector<double> s = {0.5, 0.2, 0.05, 0.1};
  const std::vector<double> bias = {0.0, -0.5, 0.0, 0.0};
  // s + b = {0.5, -0.3 | 0.05, 0.1}: group sums 0.2 and 0.15, so group 0 is kept.
  auto p = router_params(4, 2, 2, 1, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 1.0);
  Routed deepseek = route(p, sigmoid_logits(s), &bias);
  EXPECT_EQ(deepseek.idx, (std::vector<int64_t>{0, 1}));
  EXPECT_NEAR(deepseek.weight[1], 0.2 / 0.7, 1e-12);
  p.masked_group_fill = 0.0;
  Routed hf = route(p, sigmoid_logits(s), &bias);
  // Masked experts 2 and 3 now sit at 0 > -0.3 and take expert 1's place (2 wins the tie).
  EXPECT_EQ(hf.idx, (std::vector<int64_t>{0, 2}));
  EXPECT_NEAR(hf.weight[1], 0.05 / 0.55, 1e-12);
  // With non-negative biased scores the two fills agree.
  const std::vector<double> zero_bias(4, 0.0);
  p.masked_group_fill = -INFINITY;
  auto a = route(p, sigmoid_logits(s), &zero_bias).idx;
  p.masked_group_fill = 0.0;
  EXPECT_EQ(route(p, sigmoid_logits(s), &zero_bias).idx, a);
}

TEST(Router, FloatAgreesWithDouble) {
  const int64_t tokens = 16, E = 16, K = 4;
  auto p = router_params(E, K, 4, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 2.5);
  std::vector<double> logits(tokens * E), bias(E);
  fill_normal(logits, 3);
  fill_normal(bias, 4, 0.1);
  Routed d = route(p, logits, &bias);
  std::vector<float> lf(logits.begin(), logits.end()), bf(bias.begin(), bias.end()), wf(tokens * K),
      sf(tokens * E);
  std::vector<int64_t> idx(tokens * K);
  cpu::router_fwd(idx.data(), wf.data(), sf.data(), lf.data(), bf.data(), tokens, p);
  EXPECT_EQ(idx, d.idx);
  for (int64_t i = 0; i < tokens * K; ++i) EXPECT_NEAR(wf[i], d.weight[i], 1e-5);
}

TEST(Router, RejectsImpossibleConfigurations) {
  auto base = router_params(8, 2, 4, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 1.0);
  auto expect_error = [](RouterParams p, const std::string& needle) {
    try {
      cpu::validate_router(p, "model.");
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  cpu::validate_router(base, "model.");  // the base is valid
  auto p = base;
  p.n_group = 3;
  expect_error(p, "model.n_group");
  p = base;
  p.topk_group = 5;
  expect_error(p, "model.topk_group");
  p = base;
  p.topk_group = 1;
  p.top_k = 3;  // one group of 2 experts cannot hold 3
  expect_error(p, "model.num_experts_per_tok");
  p = base;
  p.top_k = 9;
  expect_error(p, "model.num_experts_per_tok");
  p = base;
  p.n_group = 8;
  p.topk_group = 4;  // groups of 1 expert have no top-2
  expect_error(p, "model.n_group");
  p.topk_method = TopkMethod::GroupLimitedGreedy;  // fine for group max
  cpu::validate_router(p, "model.");
  p = base;
  p.routed_scaling_factor = 0;
  expect_error(p, "model.routed_scaling_factor");
  EXPECT_THROW(cpu::parse_scoring_func("relu", "model.scoring_func"), Error);
  EXPECT_THROW(cpu::parse_topk_method("aux", "model.topk_method"), Error);
  EXPECT_EQ(cpu::parse_topk_method("group_limited_greedy", "k"), TopkMethod::GroupLimitedGreedy);
  EXPECT_EQ(cpu::parse_scoring_func("softmax", "k"), ScoringFunc::Softmax);
}

// d(loss)/d(logits) with loss = sum(w * dweights) + sum(scores * dscores), the selection held
// fixed (inputs are random: no selection lies within eps of a tie, which the check verifies).
void check_router_gradient(const RouterParams& p, bool with_bias, bool with_dscores,
                           const std::string& label) {
  const int64_t tokens = 12, E = p.n_experts, K = p.top_k;
  std::vector<double> logits(tokens * E), bias(E), dw(tokens * K), dsc(tokens * E);
  fill_normal(logits, 31, 1.5);
  fill_normal(bias, 32, 0.2);
  fill_normal(dw, 33);
  fill_normal(dsc, 34);
  const std::vector<double>* b = with_bias ? &bias : nullptr;
  const Routed base = route(p, logits, b);
  int64_t selection_changes = 0;
  auto loss = [&] {
    Routed r = route(p, logits, b);
    if (r.idx != base.idx) ++selection_changes;
    return weighted_sum(r.weight, dw) + (with_dscores ? weighted_sum(r.scores, dsc) : 0.0);
  };
  std::vector<double> dlogits(tokens * E);
  cpu::router_bwd(dlogits.data(), dw.data(), with_dscores ? dsc.data() : nullptr,
                  base.scores.data(), base.idx.data(), tokens, p);
  // eps 1e-5: softmax gradients are small (~1e-4), so rounding noise (~ulp(loss)/eps) dominates
  // the truncation error at eps 1e-6.
  EXPECT_LT(check_gradient(logits, dlogits, loss, 96, 1e-5, 1e-6, label).max_rel_error, 1e-5);
  EXPECT_EQ(selection_changes, 0) << label;
}

TEST(Router, GradientsMatchFiniteDifferences) {
  auto v3 = router_params(16, 4, 4, 2, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 2.5);
  check_router_gradient(v3, true, false, "router sigmoid noaux_tc dlogits");
  check_router_gradient(v3, true, true, "router sigmoid noaux_tc +dscores");
  v3.norm_topk_prob = false;
  check_router_gradient(v3, true, true, "router sigmoid noaux_tc unnormalised");
  auto v2 = router_params(16, 3, 4, 2, ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy, false, 16.0);
  check_router_gradient(v2, false, false, "router softmax group_limited_greedy");
  auto greedy = router_params(16, 3, 1, 1, ScoringFunc::Softmax, TopkMethod::Greedy, false, 1.0);
  check_router_gradient(greedy, false, true, "router softmax greedy +dscores");
  greedy.norm_topk_prob = true;
  check_router_gradient(greedy, false, true, "router softmax greedy normalised");
}

TEST(BalanceLoss, MatchesHandComputation) {
  // batch 2, seq 2, E 3, K 1. Sequence 0: s' rows {.5,.3,.2}, {.2,.6,.2}, routed to 0 and 1:
  //   f = 3/2 * {1,1,0}, P = {.35,.45,.2}: sum f P = 1.2.
  // Sequence 1: s {1,1,2} and {2,1,1} (s' = s/4), both routed to 2:
  //   f = {0,0,3}, P = {.375,.25,.375}: sum f P = 1.125.
  const std::vector<double> scores = {0.5, 0.3, 0.2, 0.2, 0.6, 0.2, 1, 1, 2, 2, 1, 1};
  const std::vector<int64_t> idx = {0, 1, 2, 2};
  const double loss = cpu::seq_balance_loss_fwd(scores.data(), idx.data(), 2, 2, 3, 1, 0.1);
  EXPECT_NEAR(loss, 0.1 * (1.2 + 1.125) / 2, 1e-15);
  // Perfect balance: uniform scores and each expert used equally gives alpha * 1.
  const std::vector<double> uniform(2 * 4, 0.25);
  const std::vector<int64_t> spread = {0, 1, 2, 3};  // T=2, K=2: every expert once
  EXPECT_NEAR(cpu::seq_balance_loss_fwd(uniform.data(), spread.data(), 1, 2, 4, 2, 0.5), 0.5,
              1e-15);
}

TEST(BalanceLoss, GradientMatchesFiniteDifferences) {
  const int64_t batch = 3, seq = 5, E = 6, K = 2;
  std::vector<double> scores(batch * seq * E);
  RandomStream rng(41, 0);
  for (size_t i = 0; i < scores.size(); ++i) scores[i] = 0.05 + rng.uniform(i);
  std::vector<int64_t> idx(batch * seq * K);
  for (int64_t t = 0; t < batch * seq; ++t) {
    idx[t * K] = t % E;
    idx[t * K + 1] = (t * 7 + 3) % E == t % E ? (t + 1) % E : (t * 7 + 3) % E;
  }
  const double alpha = 0.3, dloss = 1.7;
  auto loss = [&] {
    return dloss * cpu::seq_balance_loss_fwd(scores.data(), idx.data(), batch, seq, E, K, alpha);
  };
  std::vector<double> ds(scores.size(), 5.0);
  std::vector<double> ds_acc = ds;
  cpu::seq_balance_loss_bwd(ds.data(), scores.data(), idx.data(), batch, seq, E, K, alpha, dloss,
                            false);
  EXPECT_LT(check_gradient(scores, ds, loss, 90, 1e-6, 1e-7, "balance loss dscores").max_rel_error,
            1e-6);
  cpu::seq_balance_loss_bwd(ds_acc.data(), scores.data(), idx.data(), batch, seq, E, K, alpha,
                            dloss, true);
  for (size_t i = 0; i < ds.size(); ++i) EXPECT_NEAR(ds_acc[i], ds[i] + 5.0, 1e-12);
}

TEST(Permute, GroupsTokensPerExpertAndCombinesInSlotOrder) {
  // 3 tokens, K 2, 4 experts.
  const std::vector<int64_t> idx = {2, 0, 0, 3, 2, 1};
  std::vector<int64_t> offsets(5), sorted(6), row(6);
  cpu::build_expert_permutation(offsets.data(), sorted.data(), row.data(), idx.data(), 3, 2, 4);
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 2, 3, 5, 6}));
  EXPECT_EQ(sorted, (std::vector<int64_t>{1, 2, 5, 0, 4, 3}));  // expert 0: a=1,2; 1: 5; ...
  for (int64_t p = 0; p < 6; ++p) EXPECT_EQ(row[sorted[p]], p);

  const int64_t H = 2;
  const std::vector<double> x = {1, 2, 3, 4, 5, 6};
  std::vector<double> xp(6 * H);
  cpu::permute_rows(xp.data(), x.data(), sorted.data(), 3, 2, H);
  EXPECT_EQ(xp, (std::vector<double>{1, 2, 3, 4, 5, 6, 1, 2, 5, 6, 3, 4}));

  std::vector<double> out(6 * H), w = {0.5, 2.0, 1.0, -1.0, 3.0, 0.25}, y(3 * H, 100.0);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(i);
  cpu::combine_fwd(y.data(), out.data(), w.data(), row.data(), 3, 2, H, false);
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t j = 0; j < H; ++j) {
      double expect = 0;
      for (int64_t k = 0; k < 2; ++k) expect += w[t * 2 + k] * out[row[t * 2 + k] * H + j];
      EXPECT_DOUBLE_EQ(y[t * H + j], expect);
    }

  // Backward: d_out = w * dy at the assignment's row, dw = dy · out; unpermute sums the K rows.
  std::vector<double> dy = {1, -1, 2, 0.5, -3, 1}, d_out(6 * H), dw(6), dx(3 * H, 7.0);
  cpu::combine_bwd(d_out.data(), dw.data(), dy.data(), out.data(), w.data(), row.data(), 3, 2, H);
  for (int64_t a = 0; a < 6; ++a) {
    const int64_t t = a / 2;
    EXPECT_DOUBLE_EQ(dw[a], dy[t * H] * out[row[a] * H] + dy[t * H + 1] * out[row[a] * H + 1]);
    EXPECT_DOUBLE_EQ(d_out[row[a] * H + 1], w[a] * dy[t * H + 1]);
  }
  cpu::unpermute_sum(dx.data(), xp.data(), row.data(), 3, 2, H, false);
  EXPECT_EQ(dx, (std::vector<double>{2, 4, 6, 8, 10, 12}));  // each token's row twice
}

}  // namespace
}  // namespace frugal
