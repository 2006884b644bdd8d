// The smallest configuration that still has every part of the model: a dense layer, an MoE layer
// with group-limited routing and a shared expert, query compression and one MTP module. Used by
// the whole-model and composite-module gradient checks.
#pragma once

#include "model/config.h"

namespace frugal::testing {

inline ModelConfig tiny_model_config() {
  ModelConfig c;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.moe_intermediate_size = 6;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.q_lora_rank = 6;
  c.kv_lora_rank = 6;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 4;
  c.n_routed_experts = 4;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 2;
  c.topk_group = 1;
  c.max_position_embeddings = 64;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  return c;
}

// `c` with every block Linear FP8-sized (in and out dims multiples of 128, the FP8 GEMMs' tile),
// for tests of the fp8 recipe's paths; a small vocabulary and context.
inline ModelConfig with_fp8_sized_dims(ModelConfig c) {
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.moe_intermediate_size = 128;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.q_lora_rank = 128;
  c.kv_lora_rank = 256;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  c.max_position_embeddings = 512;
  return c;
}

}  // namespace frugal::testing
