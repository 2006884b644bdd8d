// Models and reference logits shared by the inference tests.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/tiny_model_config.h"
#include "model/transformer.h"

namespace frugal::testing {

// Every part of the architecture at small sizes: a dense layer, MoE layers (group-limited sigmoid
// routing with a bias, a shared expert), compressed queries, YaRN, one MTP module.
inline ModelConfig infer_config() {
  ModelConfig c = tiny_model_config();
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.moe_intermediate_size = 12;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 3;
  c.q_lora_rank = 10;
  c.kv_lora_rank = 12;
  c.qk_nope_head_dim = 6;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 5;
  c.n_routed_experts = 6;
  c.n_group = 3;
  c.topk_group = 2;
  c.num_experts_per_tok = 2;
  c.routed_scaling_factor = 2.5;
  c.rope_scaling.type = "yarn";
  c.rope_scaling.factor = 4;
  c.rope_scaling.original_max_position_embeddings = 16;
  c.rope_scaling.mscale = 1;
  c.rope_scaling.mscale_all_dim = 1;
  c.max_position_embeddings = 256;
  return c;
}

// DeepSeek-V2-Lite's shape of attention and routing: plain q_proj, softmax greedy routing, no
// shared expert, no MTP.
inline ModelConfig infer_config_v2() {
  ModelConfig c = infer_config();
  c.model_type = "deepseek_v2";
  c.q_lora_rank = 0;
  c.scoring_func = "softmax";
  c.topk_method = "greedy";
  c.n_group = 1;
  c.topk_group = 1;
  c.n_shared_experts = 0;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.0;
  c.num_nextn_predict_layers = 0;
  c.rope_scaling.type = "none";
  return c;
}

// Weights N(0, std) (norms around 1, routing biases in [0, 0.1)).
inline void randomize(Transformer<float>& model, uint64_t seed, double std = 0.3) {
  model.init_weights(seed, std);
  for (auto& p : model.params().all()) {
    RandomStream rng(seed + 17, hash_name(p->name));
    if (!p->trainable)
      for (int64_t i = 0; i < p->numel(); ++i) p->value[i] = static_cast<float>(0.1 * rng.uniform(i));
    else if (!p->weight_decay)
      for (int64_t i = 0; i < p->numel(); ++i)
        p->value[i] = static_cast<float>(1.0 + 0.2 * rng.normal(i));
  }
}

// ||a - b|| / ||b|| over n values.
inline double relative_error(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}

inline std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  RandomStream rng(seed, 99);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>(rng.uniform(i) * static_cast<double>(vocab));
  return t;
}

}  // namespace frugal::testing
