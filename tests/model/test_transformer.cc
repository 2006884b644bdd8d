// Whole-model checks: finite-difference gradients of the complete tiny model (dense + MoE layers,
// MTP, balance loss) in double precision; deferred weight gradients; parameter names.
#include <gtest/gtest.h>

#include <set>

#include "gradcheck.h"
#include "model/transformer.h"
#include "model/tiny_model_config.h"

namespace frugal {
namespace {

using testing::tiny_model_config;

struct Batch {
  std::vector<int32_t> tokens, targets;
};

Batch make_batch(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  RandomStream rng(seed, 1);
  Batch b;
  for (int64_t i = 0; i < batch * (seq + 1); ++i)
    b.tokens.push_back(static_cast<int32_t>(rng.uniform(i) * static_cast<double>(vocab)));
  std::vector<int32_t> all = b.tokens;
  b.tokens.clear();
  for (int64_t s = 0; s < batch; ++s)
    for (int64_t t = 0; t < seq; ++t) {
      b.tokens.push_back(all[s * (seq + 1) + t]);
      b.targets.push_back(all[s * (seq + 1) + t + 1]);
    }
  b.targets[3] = -1;  // an ignored target
  return b;
}

TEST(Transformer, WholeModelGradientsMatchFiniteDifferences) {
  ModelConfig cfg = tiny_model_config();
  Transformer<double> model(cfg);
  model.init_weights(3, 0.3);
  // Non-trivial norm weights and a selection bias, so every path is exercised.
  for (auto& p : model.params().all()) {
    RandomStream rng(11, hash_name(p->name));
    if (!p->trainable)
      for (int64_t i = 0; i < p->numel(); ++i) p->value[i] = 0.05 * rng.uniform(i);
    else if (!p->weight_decay)
      for (int64_t i = 0; i < p->numel(); ++i) p->value[i] = 1 + 0.2 * rng.normal(i);
  }
  const int64_t batch = 2, seq = 6;
  Batch b = make_batch(batch, seq, cfg.vocab_size, 5);
  LossWeights weights{0.3, 0.05};

  auto loss = [&] {
    Transformer<double>::Ctx c;
    return model.forward(c, b.tokens.data(), b.targets.data(), batch, seq, weights, false).total;
  };
  Transformer<double>::Ctx ctx;
  Losses l = model.forward(ctx, b.tokens.data(), b.targets.data(), batch, seq, weights, false);
  EXPECT_GT(l.mtp, 0);
  EXPECT_GT(l.balance, 0);
  model.params().zero_grad();
  model.backward_input(ctx, 1.0);
  model.backward_weight(ctx);

  double worst = 0;
  for (auto& p : model.params().all()) {
    if (!p->trainable) continue;
    auto r = testing::check_gradient(p->value, p->grad, loss, 12, 1e-5, 1e-6, p->name);
    worst = std::max(worst, r.max_rel_error);
  }
  std::printf("whole model: max relative gradient error %.3e\n", worst);
  EXPECT_LT(worst, 1e-5);
}

TEST(Transformer, DeferredWeightGradientsEqualImmediateOnes) {
  ModelConfig cfg = tiny_model_config();
  Transformer<double> a(cfg), b(cfg);
  a.init_weights(1, 0.3);
  b.init_weights(1, 0.3);
  Batch m0 = make_batch(2, 5, cfg.vocab_size, 1), m1 = make_batch(2, 5, cfg.vocab_size, 2);
  LossWeights w{0.3, 0.01};
  // a: F B W per micro-batch. b: F0 F1 B1 B0 then W1 W0 (deferred, reversed order).
  for (Batch* m : {&m0, &m1}) {
    Transformer<double>::Ctx c;
    a.forward(c, m->tokens.data(), m->targets.data(), 2, 5, w, true);
    a.backward_input(c, 0.5);
    a.backward_weight(c);
  }
  Transformer<double>::Ctx c0, c1;
  b.forward(c0, m0.tokens.data(), m0.targets.data(), 2, 5, w, true);
  b.forward(c1, m1.tokens.data(), m1.targets.data(), 2, 5, w, true);
  b.backward_input(c1, 0.5);
  b.backward_input(c0, 0.5);
  b.backward_weight(c1);
  b.backward_weight(c0);
  for (size_t i = 0; i < a.params().all().size(); ++i) {
    auto& pa = *a.params().all()[i];
    auto& pb = *b.params().all()[i];
    for (size_t j = 0; j < pa.grad.size(); ++j) ASSERT_NEAR(pa.grad[j], pb.grad[j], 1e-12) << pa.name;
  }
}

TEST(Transformer, ParameterNamesFollowHuggingFace) {
  ModelConfig cfg = tiny_model_config();
  Transformer<float> model(cfg);
  std::set<std::string> names;
  for (auto& p : model.params().all()) names.insert(p->name);
  for (const char* n :
       {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.self_attn.q_a_proj.weight", "model.layers.0.self_attn.q_a_layernorm.weight",
        "model.layers.0.self_attn.q_b_proj.weight",
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.0.self_attn.kv_a_layernorm.weight", "model.layers.0.self_attn.kv_b_proj.weight",
        "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
        "model.layers.1.mlp.experts.3.down_proj.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight", "model.layers.2.enorm.weight",
        "model.layers.2.hnorm.weight", "model.layers.2.eh_proj.weight",
        "model.layers.2.shared_head.norm.weight", "model.layers.2.self_attn.kv_b_proj.weight",
        "model.layers.2.mlp.experts.0.gate_proj.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_EQ(model.params().get("model.layers.2.eh_proj.weight").shape,
            (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(model.params().get("model.layers.0.self_attn.kv_a_proj_with_mqa.weight").shape,
            (std::vector<int64_t>{8, 8}));
}

TEST(Transformer, BalanceBiasMovesAgainstLoad) {
  ModelConfig cfg = tiny_model_config();
  Transformer<float> model(cfg);
  model.init_weights(2, 0.5);
  Batch b = make_batch(4, 8, cfg.vocab_size, 9);
  Transformer<float>::Ctx ctx;
  model.forward(ctx, b.tokens.data(), b.targets.data(), 4, 8, {0.3, 1e-4}, true);
  auto loads = model.expert_load();
  ASSERT_EQ(loads.size(), 2u);  // layer 1 and the MTP layer 2
  EXPECT_GE(loads[0].max_over_mean, 1.0);
  auto& bias = model.params().get("model.layers.1.mlp.gate.e_score_correction_bias");
  std::vector<float> before = bias.value;
  model.update_balance_bias(0.01);
  int moved = 0;
  for (size_t i = 0; i < before.size(); ++i) moved += bias.value[i] != before[i];
  EXPECT_GT(moved, 0);
  // An evaluation forward does not count load.
  Transformer<float>::Ctx eval_ctx;
  model.forward(eval_ctx, b.tokens.data(), b.targets.data(), 4, 8, {0.3, 1e-4}, false);
  before = bias.value;
  model.update_balance_bias(0.01);
  EXPECT_EQ(bias.value, before);
}

}  // namespace
}  // namespace frugal
