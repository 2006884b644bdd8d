// Model configuration, with the key names of Hugging Face DeepSeek-V2/V3 config.json files, so a
// user's existing config reads as-is. Values below are the defaults applied when a key is absent
// (those of transformers' DeepseekV3Config unless noted). Spec: shared/spec/deepseek-v3.md §1.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

namespace frugal {

struct RopeScaling {
  std::string type = "none";  // "none" or "yarn" (HF key "type" or "rope_type")
  double factor = 1.0;        // s (40 in V3)
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;  // V3: 1.0, V2-Lite: 0.707
  int64_t original_max_position_embeddings = 4096;

  bool operator==(const RopeScaling&) const = default;
};

// MLA's latent norms (q_a_layernorm, kv_a_layernorm) use eps 1e-6 whatever rms_norm_eps says:
// both DeepSeek's reference code and transformers construct them with the RMSNorm default.
inline constexpr double kLatentNormEps = 1e-6;

struct ModelConfig {
  std::string model_type = "deepseek_v3";  // or "deepseek_v2"
  int64_t vocab_size = 129280;
  int64_t hidden_size = 7168;
  int64_t intermediate_size = 18432;      // dense FFN of the first layers
  int64_t moe_intermediate_size = 2048;   // each routed and shared expert
  int64_t num_hidden_layers = 61;
  int64_t num_nextn_predict_layers = 1;   // MTP depth D
  int64_t num_attention_heads = 128;
  int64_t num_key_value_heads = 128;      // accepted for compatibility; MLA ignores it
  int64_t q_lora_rank = 1536;             // 0 (null in JSON) = plain q_proj, as DeepSeek-V2-Lite
  int64_t kv_lora_rank = 512;
  int64_t qk_nope_head_dim = 128;
  int64_t qk_rope_head_dim = 64;
  int64_t v_head_dim = 128;
  int64_t n_routed_experts = 256;         // 0 = no MoE layers at all
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 8;
  int64_t n_group = 8;
  int64_t topk_group = 4;
  int64_t first_k_dense_replace = 3;
  int64_t moe_layer_freq = 1;
  double routed_scaling_factor = 2.5;
  std::string scoring_func = "sigmoid";   // "sigmoid" or "softmax"
  std::string topk_method = "noaux_tc";   // "noaux_tc" | "group_limited_greedy" | "greedy"
  bool norm_topk_prob = true;
  int64_t max_position_embeddings = 163840;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;
  std::string hidden_act = "silu";
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 1;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  double initializer_range = 0.02;  // HF's default init std; training uses train.init_std

  bool operator==(const ModelConfig&) const = default;

  // Derived quantities.
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // YaRN's mscale: 0.1 * m * ln(s) + 1 for s > 1, else 1.
  static double yarn_mscale(double scale, double m) {
    return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
  }
  // Softmax scale of MLA: qk_head_dim^-0.5, times mscale(mscale_all_dim)^2 under YaRN (spec §1.4).
  double softmax_scale() const {
    double s = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
    if (rope_scaling.type == "yarn" && rope_scaling.mscale_all_dim != 0.0) {
      double m = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
      s *= m * m;
    }
    return s;
  }
};

// Throws frugal::Error naming the first offending key ("model.num_experts_per_tok: ...").
void validate(const ModelConfig& config);

}  // namespace frugal
