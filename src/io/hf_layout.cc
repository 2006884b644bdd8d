// Tensor layout of a DeepSeek-V2/V3 config (see hf_layout.h). Mirrors the registration order of
// Transformer / Block / MLA / MLP / MoE / MtpModule.
#include "io/hf_layout.h"

#include <fmt/format.h>

#include "core/error.h"

namespace frugal {
namespace {

class LayoutBuilder {
 public:
  void matrix(const std::string& name, int64_t out, int64_t in, bool fp8) {
    tensors.push_back({name + ".weight", {out, in}, ParamKind::Matrix, fp8});
  }
  void norm(const std::string& name, int64_t dim) {
    tensors.push_back({name + ".weight", {dim}, ParamKind::Norm, false});
  }

  void mlp(const std::string& prefix, int64_t hidden, int64_t intermediate) {
    matrix(prefix + ".gate_proj", intermediate, hidden, true);
    matrix(prefix + ".up_proj", intermediate, hidden, true);
    matrix(prefix + ".down_proj", hidden, intermediate, true);
  }

  void attention(const std::string& prefix, const ModelConfig& c) {
    const int64_t qk = c.qk_head_dim(), heads = c.num_attention_heads;
    if (c.q_lora_rank > 0) {
      matrix(prefix + ".q_a_proj", c.q_lora_rank, c.hidden_size, true);
      norm(prefix + ".q_a_layernorm", c.q_lora_rank);
      matrix(prefix + ".q_b_proj", heads * qk, c.q_lora_rank, true);
    } else {
      matrix(prefix + ".q_proj", heads * qk, c.hidden_size, true);
    }
    matrix(prefix + ".kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size, true);
    norm(prefix + ".kv_a_layernorm", c.kv_lora_rank);
    matrix(prefix + ".kv_b_proj", heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, true);
    matrix(prefix + ".o_proj", c.hidden_size, heads * c.v_head_dim, true);
  }

  void block(const std::string& prefix, const ModelConfig& c, int64_t layer) {
    norm(prefix + ".input_layernorm", c.hidden_size);
    norm(prefix + ".post_attention_layernorm", c.hidden_size);
    attention(prefix + ".self_attn", c);
    if (!c.is_moe_layer(layer)) {
      mlp(prefix + ".mlp", c.hidden_size, c.intermediate_size);
      return;
    }
    const std::string moe = prefix + ".mlp";
    matrix(moe + ".gate", c.n_routed_experts, c.hidden_size, false);
    if (c.topk_method == "noaux_tc")
      tensors.push_back(
          {moe + ".gate.e_score_correction_bias", {c.n_routed_experts}, ParamKind::Buffer, false});
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      mlp(moe + ".experts." + std::to_string(e), c.hidden_size, c.moe_intermediate_size);
    if (c.n_shared_experts > 0)
      mlp(moe + ".shared_experts", c.hidden_size, c.moe_intermediate_size * c.n_shared_experts);
  }

  std::vector<HfTensorSpec> tensors;
};

}  // namespace

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string mtp_layer_prefix(const ModelConfig& config, int64_t depth) {
  return "model.layers." + std::to_string(config.num_hidden_layers + depth) + ".";
}

std::vector<HfTensorSpec> hf_tensor_layout(const ModelConfig& c) {
  validate(c);
  LayoutBuilder b;
  b.matrix("model.embed_tokens", c.vocab_size, c.hidden_size, false);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    b.block("model.layers." + std::to_string(i), c, i);
  b.norm("model.norm", c.hidden_size);
  b.matrix("lm_head", c.vocab_size, c.hidden_size, false);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int64_t layer = c.num_hidden_layers + k;
    const std::string prefix = "model.layers." + std::to_string(layer);
    b.norm(prefix + ".enorm", c.hidden_size);
    b.norm(prefix + ".hnorm", c.hidden_size);
    b.matrix(prefix + ".eh_proj", c.hidden_size, 2 * c.hidden_size, false);
    b.block(prefix, c, layer);
    b.norm(prefix + ".shared_head.norm", c.hidden_size);
  }
  return std::move(b.tensors);
}

std::vector<HfTensorSpec> hf_mtp_duplicates(const ModelConfig& c) {
  std::vector<HfTensorSpec> out;
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string prefix = mtp_layer_prefix(c, k);
    out.push_back({prefix + "embed_tokens.weight", {c.vocab_size, c.hidden_size},
                   ParamKind::Matrix, false});
    out.push_back({prefix + "shared_head.head.weight", {c.vocab_size, c.hidden_size},
                   ParamKind::Matrix, false});
  }
  return out;
}

}  // namespace frugal
