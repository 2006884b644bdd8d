// Validation of a ModelConfig: rejects settings that cannot describe a DeepSeek-V2/V3 model (or
// that this implementation does not support) with a frugal::Error naming the offending key, e.g.
// "model.num_experts_per_tok = 9 exceeds model.n_routed_experts = 8". Spec §1.2-§1.4, §2.1.
#include "model/config.h"

#include <cmath>
#include <string>

#include "core/error.h"

namespace frugal {
namespace {

void check_positive(int64_t value, const char* key) {
  FRUGAL_CHECK(value > 0, "model.{} = {} must be positive", key, value);
}

void check_non_negative(int64_t value, const char* key) {
  FRUGAL_CHECK(value >= 0, "model.{} = {} must be >= 0", key, value);
}

void check_finite(double value, const char* key) {
  FRUGAL_CHECK(std::isfinite(value), "model.{} = {} must be a finite number", key, value);
}

void validate_rope_scaling(const RopeScaling& rope) {
  FRUGAL_CHECK(rope.type == "none" || rope.type == "yarn",
               "model.rope_scaling.type = \"{}\" is not supported (use \"none\" or \"yarn\")",
               rope.type);
  check_finite(rope.factor, "rope_scaling.factor");
  FRUGAL_CHECK(rope.factor >= 1.0, "model.rope_scaling.factor = {} must be >= 1", rope.factor);
  if (rope.type != "yarn") return;
  check_finite(rope.beta_fast, "rope_scaling.beta_fast");
  check_finite(rope.beta_slow, "rope_scaling.beta_slow");
  check_finite(rope.mscale, "rope_scaling.mscale");
  check_finite(rope.mscale_all_dim, "rope_scaling.mscale_all_dim");
  FRUGAL_CHECK(rope.beta_slow > 0.0, "model.rope_scaling.beta_slow = {} must be positive",
               rope.beta_slow);
  FRUGAL_CHECK(rope.beta_fast > rope.beta_slow,
               "model.rope_scaling.beta_fast = {} must exceed model.rope_scaling.beta_slow = {}",
               rope.beta_fast, rope.beta_slow);
  FRUGAL_CHECK(rope.mscale >= 0.0, "model.rope_scaling.mscale = {} must be >= 0", rope.mscale);
  FRUGAL_CHECK(rope.mscale_all_dim >= 0.0, "model.rope_scaling.mscale_all_dim = {} must be >= 0",
               rope.mscale_all_dim);
  FRUGAL_CHECK(rope.original_max_position_embeddings > 0,
               "model.rope_scaling.original_max_position_embeddings = {} must be positive",
               rope.original_max_position_embeddings);
}

// Router settings; only checked when the model has routed experts.
void validate_moe(const ModelConfig& c) {
  check_positive(c.moe_intermediate_size, "moe_intermediate_size");
  check_positive(c.num_experts_per_tok, "num_experts_per_tok");
  FRUGAL_CHECK(c.num_experts_per_tok <= c.n_routed_experts,
               "model.num_experts_per_tok = {} exceeds model.n_routed_experts = {}",
               c.num_experts_per_tok, c.n_routed_experts);
  check_positive(c.n_group, "n_group");
  FRUGAL_CHECK(c.n_routed_experts % c.n_group == 0,
               "model.n_group = {} does not divide model.n_routed_experts = {}", c.n_group,
               c.n_routed_experts);
  check_positive(c.topk_group, "topk_group");
  FRUGAL_CHECK(c.topk_group <= c.n_group, "model.topk_group = {} exceeds model.n_group = {}",
               c.topk_group, c.n_group);
  const int64_t experts_per_group = c.n_routed_experts / c.n_group;
  FRUGAL_CHECK(c.topk_group * experts_per_group >= c.num_experts_per_tok,
               "model.topk_group = {} groups of {} experts hold fewer than "
               "model.num_experts_per_tok = {} experts",
               c.topk_group, experts_per_group, c.num_experts_per_tok);

  FRUGAL_CHECK(c.scoring_func == "sigmoid" || c.scoring_func == "softmax",
               "model.scoring_func = \"{}\" is not supported (use \"sigmoid\" or \"softmax\")",
               c.scoring_func);
  FRUGAL_CHECK(c.topk_method == "noaux_tc" || c.topk_method == "group_limited_greedy" ||
                   c.topk_method == "greedy",
               "model.topk_method = \"{}\" is not supported (use \"noaux_tc\", "
               "\"group_limited_greedy\" or \"greedy\")",
               c.topk_method);
  // noaux_tc adds the balance bias to sigmoid affinities (spec §2.1); softmax routing is V2's
  // greedy / group-limited greedy.
  FRUGAL_CHECK(!(c.topk_method == "noaux_tc" && c.scoring_func != "sigmoid"),
               "model.topk_method = \"noaux_tc\" requires model.scoring_func = \"sigmoid\" (got "
               "\"{}\"); softmax scoring goes with \"greedy\" or \"group_limited_greedy\"",
               c.scoring_func);
  // noaux_tc scores a group by the sum of its top-2 biased affinities (spec §2.1 step 4).
  FRUGAL_CHECK(!(c.topk_method == "noaux_tc" && experts_per_group < 2),
               "model.topk_method = \"noaux_tc\" needs at least 2 experts per group, but "
               "model.n_routed_experts = {} / model.n_group = {} gives {}",
               c.n_routed_experts, c.n_group, experts_per_group);
  check_finite(c.routed_scaling_factor, "routed_scaling_factor");
  FRUGAL_CHECK(c.routed_scaling_factor > 0.0, "model.routed_scaling_factor = {} must be positive",
               c.routed_scaling_factor);
}

}  // namespace

void validate(const ModelConfig& c) {
  FRUGAL_CHECK(c.model_type == "deepseek_v3" || c.model_type == "deepseek_v2",
               "model.model_type = \"{}\" is not supported (use \"deepseek_v3\" or \"deepseek_v2\")",
               c.model_type);
  check_positive(c.vocab_size, "vocab_size");
  check_positive(c.hidden_size, "hidden_size");
  check_positive(c.intermediate_size, "intermediate_size");
  check_positive(c.num_hidden_layers, "num_hidden_layers");
  check_non_negative(c.num_nextn_predict_layers, "num_nextn_predict_layers");
  check_positive(c.num_attention_heads, "num_attention_heads");
  check_positive(c.num_key_value_heads, "num_key_value_heads");
  check_non_negative(c.q_lora_rank, "q_lora_rank");
  check_positive(c.kv_lora_rank, "kv_lora_rank");
  check_positive(c.qk_nope_head_dim, "qk_nope_head_dim");
  check_positive(c.qk_rope_head_dim, "qk_rope_head_dim");
  FRUGAL_CHECK(c.qk_rope_head_dim % 2 == 0,
               "model.qk_rope_head_dim = {} must be even (RoPE rotates pairs)", c.qk_rope_head_dim);
  check_positive(c.v_head_dim, "v_head_dim");
  check_positive(c.max_position_embeddings, "max_position_embeddings");

  check_non_negative(c.n_routed_experts, "n_routed_experts");
  check_non_negative(c.n_shared_experts, "n_shared_experts");
  check_non_negative(c.first_k_dense_replace, "first_k_dense_replace");
  FRUGAL_CHECK(c.first_k_dense_replace <= c.num_hidden_layers,
               "model.first_k_dense_replace = {} exceeds model.num_hidden_layers = {}",
               c.first_k_dense_replace, c.num_hidden_layers);
  FRUGAL_CHECK(c.moe_layer_freq >= 1, "model.moe_layer_freq = {} must be >= 1", c.moe_layer_freq);
  if (c.n_routed_experts > 0) validate_moe(c);

  check_finite(c.rope_theta, "rope_theta");
  FRUGAL_CHECK(c.rope_theta > 0.0, "model.rope_theta = {} must be positive", c.rope_theta);
  validate_rope_scaling(c.rope_scaling);

  check_finite(c.rms_norm_eps, "rms_norm_eps");
  FRUGAL_CHECK(c.rms_norm_eps > 0.0, "model.rms_norm_eps = {} must be positive", c.rms_norm_eps);
  FRUGAL_CHECK(c.hidden_act == "silu",
               "model.hidden_act = \"{}\" is not supported (only \"silu\": SwiGLU)", c.hidden_act);
  FRUGAL_CHECK(c.bos_token_id >= 0 && c.bos_token_id < c.vocab_size,
               "model.bos_token_id = {} is outside the vocabulary [0, model.vocab_size = {})",
               c.bos_token_id, c.vocab_size);
  FRUGAL_CHECK(c.eos_token_id >= 0 && c.eos_token_id < c.vocab_size,
               "model.eos_token_id = {} is outside the vocabulary [0, model.vocab_size = {})",
               c.eos_token_id, c.vocab_size);
  FRUGAL_CHECK(!c.tie_word_embeddings,
               "model.tie_word_embeddings = true is not supported (DeepSeek models keep the "
               "embedding and the output head separate)");
  FRUGAL_CHECK(!c.attention_bias,
               "model.attention_bias = true is not supported (DeepSeek models have no linear "
               "biases)");
  check_finite(c.initializer_range, "initializer_range");
  FRUGAL_CHECK(c.initializer_range >= 0.0, "model.initializer_range = {} must be >= 0",
               c.initializer_range);
}

}  // namespace frugal
