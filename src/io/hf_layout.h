// The tensors of a DeepSeek-V2/V3 model, computed from its config alone (no weights allocated):
// the Hugging Face names and shapes that Transformer<T>(config) registers, in its order, plus what
// the checkpoint converter needs to know about each (spec §9.1):
//   model.embed_tokens.weight [V, H]; per layer N < num_hidden_layers
//     input_layernorm / post_attention_layernorm [H]
//     self_attn.q_a_proj [q_lora, H], q_a_layernorm [q_lora], q_b_proj [heads*qk, q_lora]
//       (or self_attn.q_proj [heads*qk, H] when q_lora_rank = 0)
//     self_attn.kv_a_proj_with_mqa [kv_lora+rope, H], kv_a_layernorm [kv_lora],
//     self_attn.kv_b_proj [heads*(nope+v), kv_lora], self_attn.o_proj [H, heads*v]
//     dense: mlp.{gate,up}_proj [inter, H], mlp.down_proj [H, inter]
//     MoE:   mlp.gate.weight [E, H], mlp.gate.e_score_correction_bias [E] (noaux_tc only),
//            mlp.experts.{e}.{gate,up,down}_proj, mlp.shared_experts.{gate,up,down}_proj
//   model.norm.weight [H], lm_head.weight [V, H]; MTP depth k as layer num_hidden_layers + k - 1:
//     enorm, hnorm [H], eh_proj [H, 2H], a decoder layer as above, shared_head.norm [H].
// Every name ends in ".weight" except the routing bias. Transformer<T>'s ParamStore holds exactly
// these (tests/io/test_hf_checkpoint.cc checks names, shapes, order and kinds).
//
// In DeepSeek's released files (spec §9.1) the Linear weights of attention and of the FFN (dense,
// routed and shared experts, MTP layers included) are FP8 E4M3 with a `<name>_scale_inv` FP32
// tensor of 128x128 block scales; embeddings, norms, the router gate, eh_proj and the heads are
// BF16; the routing bias is FP32. `fp8` marks the former. MTP layers also carry copies of the
// embedding and the head (`embed_tokens.weight`, `shared_head.head.weight`), listed by
// hf_mtp_duplicates: frugal shares the main model's tensors instead.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/param.h"
#include "model/config.h"

namespace frugal {

struct HfTensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  ParamKind kind = ParamKind::Matrix;  // Matrix, Norm (norm weights) or Buffer (routing bias)
  bool fp8 = false;                    // stored as FP8 + weight_scale_inv in DeepSeek's files
};

// Every parameter of Transformer<T>(config), in registration order. Validates the config.
std::vector<HfTensorSpec> hf_tensor_layout(const ModelConfig& config);

// The per-MTP-layer copies of the embedding and head in Hugging Face files:
// {"model.layers.<L+k>.embed_tokens.weight", "model.layers.<L+k>.shared_head.head.weight"} per
// depth, both [vocab, hidden].
std::vector<HfTensorSpec> hf_mtp_duplicates(const ModelConfig& config);

// "model.layers.<i>." for i = num_hidden_layers + depth (0-based depth).
std::string mtp_layer_prefix(const ModelConfig& config, int64_t depth);

// The FP8 block-scale tensor of a weight: "<name>_scale_inv" ("...weight" -> "...weight_scale_inv").
inline std::string fp8_scale_name(const std::string& weight_name) { return weight_name + "_scale_inv"; }

// Number of elements of a shape (1 for a scalar).
int64_t shape_numel(const std::vector<int64_t>& shape);
// "[2, 3]"
std::string shape_text(const std::vector<int64_t>& shape);

}  // namespace frugal
