// Hugging Face config.json <-> ModelConfig, for DeepseekV3 and DeepseekV2 configs (spec §1.2-1.3).
// Reading is lenient about keys (HF configs carry many that do not change the model) and strict
// about the values of the keys it uses (wrong types are errors naming the file and key).
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/config_io.h"

namespace frugal {
namespace {

using nlohmann::json;

std::string json_type(const json& value) {
  return std::string(value.type_name()) + (value.is_primitive() ? " " + value.dump() : "");
}

// Reads one key if present and non-null. Integer keys accept floats with integral values.
class JsonReader {
 public:
  JsonReader(const json& object, std::string source, std::string prefix)
      : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  const json* find(const char* key) const {
    auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has_null(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && it->is_null();
  }

  void get(const char* key, int64_t& out) const {
    const json* v = find(key);
    if (!v) return;
    // eos_token_id may be a list of ids: the first is the end-of-sequence token.
    if (v->is_array() && !v->empty() && std::string(key).ends_with("_token_id")) v = &v->front();
    if (v->is_number_unsigned()) {
      if (v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) wrong(key, *v, "an integer");
      out = static_cast<int64_t>(v->get<uint64_t>());
    } else if (v->is_number_integer()) {
      out = v->get<int64_t>();
    } else if (v->is_number_float() && std::isfinite(v->get<double>()) &&
               v->get<double>() == std::trunc(v->get<double>()) &&
               std::fabs(v->get<double>()) < 9.2e18) {
      out = static_cast<int64_t>(v->get<double>());
    } else {
      wrong(key, *v, "an integer");
    }
  }
  void get(const char* key, double& out) const {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_number()) wrong(key, *v, "a number");
    out = v->get<double>();
  }
  void get(const char* key, bool& out) const {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_boolean()) wrong(key, *v, "true or false");
    out = v->get<bool>();
  }
  void get(const char* key, std::string& out) const {
    const json* v = find(key);
    if (!v) return;
    if (!v->is_string()) wrong(key, *v, "a string");
    out = v->get<std::string>();
  }

 private:
  [[noreturn]] void wrong(const char* key, const json& value, const char* expected) const {
    fail("{}: {}{} must be {}, got {}", source_, prefix_, key, expected, json_type(value));
  }

  const json& object_;
  std::string source_;
  std::string prefix_;
};

// rope_scaling / rope_parameters: {"type"|"rope_type": "yarn"|"default", "factor": .., ...}.
void read_rope(const json& rope, const std::string& source, const char* key, ModelConfig& m) {
  FRUGAL_CHECK(rope.is_object(), "{}: {} must be an object or null, got {}", source, key,
               json_type(rope));
  JsonReader r(rope, source, std::string(key) + ".");
  std::string type = "none";
  r.get("type", type);
  r.get("rope_type", type);
  if (type == "default" || type == "none") {
    m.rope_scaling = RopeScaling{};
  } else if (type == "yarn") {
    RopeScaling& s = m.rope_scaling;
    s = RopeScaling{};
    s.type = "yarn";
    r.get("factor", s.factor);
    r.get("beta_fast", s.beta_fast);
    r.get("beta_slow", s.beta_slow);
    r.get("mscale", s.mscale);
    r.get("mscale_all_dim", s.mscale_all_dim);
    r.get("original_max_position_embeddings", s.original_max_position_embeddings);
    bool truncate = true;
    r.get("truncate", truncate);
    FRUGAL_CHECK(truncate, "{}: {}.truncate = false is not supported (DeepSeek's YaRN rounds the "
                 "correction range outward)", source, key);
  } else {
    fail("{}: {} type \"{}\" is not supported (DeepSeek models use \"yarn\" or none)", source, key,
         type);
  }
  // transformers 5 keeps rope_theta inside rope_parameters.
  r.get("rope_theta", m.rope_theta);
}

}  // namespace

ModelConfig model_config_from_json(const json& j, const std::string& source) {
  FRUGAL_CHECK(j.is_object(), "{}: a config.json must hold a JSON object, got {}", source,
               std::string(j.type_name()));
  ModelConfig m;
  JsonReader r(j, source, "");
  r.get("model_type", m.model_type);
  FRUGAL_CHECK(j.contains("model_type"), "{}: model_type is missing (expected \"deepseek_v3\" or "
               "\"deepseek_v2\")", source);
  FRUGAL_CHECK(m.model_type == "deepseek_v3" || m.model_type == "deepseek_v2",
               "{}: model_type \"{}\" is not supported (expected \"deepseek_v3\" or "
               "\"deepseek_v2\")", source, m.model_type);
  if (m.model_type == "deepseek_v2") {
    // DeepseekV2Config's defaults for the keys whose V3 defaults differ.
    m.scoring_func = "softmax";
    m.topk_method = "greedy";
    m.norm_topk_prob = false;
    m.routed_scaling_factor = 1.0;
    m.n_group = 1;
    m.topk_group = 1;
    m.first_k_dense_replace = 0;
    m.num_nextn_predict_layers = 0;
    m.rope_scaling = RopeScaling{};
  }
  r.get("vocab_size", m.vocab_size);
  r.get("hidden_size", m.hidden_size);
  r.get("intermediate_size", m.intermediate_size);
  r.get("moe_intermediate_size", m.moe_intermediate_size);
  r.get("num_hidden_layers", m.num_hidden_layers);
  r.get("num_nextn_predict_layers", m.num_nextn_predict_layers);
  r.get("num_attention_heads", m.num_attention_heads);
  m.num_key_value_heads = m.num_attention_heads;  // HF's default when the key is absent
  r.get("num_key_value_heads", m.num_key_value_heads);
  if (r.has_null("q_lora_rank")) m.q_lora_rank = 0;  // V2-Lite: plain q_proj
  r.get("q_lora_rank", m.q_lora_rank);
  r.get("kv_lora_rank", m.kv_lora_rank);
  r.get("qk_nope_head_dim", m.qk_nope_head_dim);
  r.get("qk_rope_head_dim", m.qk_rope_head_dim);
  r.get("v_head_dim", m.v_head_dim);
  // null expert counts describe a dense model (DeepseekV2Config's convention).
  if (r.has_null("n_routed_experts")) m.n_routed_experts = 0;
  if (r.has_null("n_shared_experts")) m.n_shared_experts = 0;
  r.get("n_routed_experts", m.n_routed_experts);
  r.get("n_shared_experts", m.n_shared_experts);
  r.get("num_experts_per_tok", m.num_experts_per_tok);
  if (r.has_null("n_group")) m.n_group = 1;
  if (r.has_null("topk_group")) m.topk_group = 1;
  r.get("n_group", m.n_group);
  r.get("topk_group", m.topk_group);
  r.get("first_k_dense_replace", m.first_k_dense_replace);
  r.get("moe_layer_freq", m.moe_layer_freq);
  r.get("routed_scaling_factor", m.routed_scaling_factor);
  r.get("scoring_func", m.scoring_func);
  r.get("topk_method", m.topk_method);
  if (m.topk_method == "gready") m.topk_method = "greedy";  // the remote-code default's spelling
  r.get("norm_topk_prob", m.norm_topk_prob);
  r.get("max_position_embeddings", m.max_position_embeddings);
  r.get("rope_theta", m.rope_theta);
  if (r.has_null("rope_scaling")) m.rope_scaling = RopeScaling{};
  if (const json* rope = r.find("rope_scaling")) read_rope(*rope, source, "rope_scaling", m);
  if (const json* rope = r.find("rope_parameters")) read_rope(*rope, source, "rope_parameters", m);
  r.get("rms_norm_eps", m.rms_norm_eps);
  r.get("hidden_act", m.hidden_act);
  r.get("bos_token_id", m.bos_token_id);
  r.get("eos_token_id", m.eos_token_id);
  r.get("tie_word_embeddings", m.tie_word_embeddings);
  r.get("attention_bias", m.attention_bias);
  r.get("initializer_range", m.initializer_range);
  // Everything else (architectures, torch_dtype, quantization_config, aux_loss_alpha, ...) does
  // not change the model and is ignored.
  try {
    validate(m);
  } catch (const Error& e) {
    fail("{}: {}", source, e.what());
  }
  return m;
}

ModelConfig load_hf_config(const std::string& json_path) {
  std::ifstream file(json_path);
  FRUGAL_CHECK(file.good(), "{}: cannot read Hugging Face config", json_path);
  std::stringstream text;
  text << file.rdbuf();
  json j;
  try {
    j = json::parse(text.str());
  } catch (const json::parse_error& e) {
    fail("{}: malformed JSON at byte {}: {}", json_path, e.byte, e.what());
  }
  return model_config_from_json(j, json_path);
}

json model_config_to_hf_json(const ModelConfig& m) {
  json j;
  const bool v2 = m.model_type == "deepseek_v2";
  j["architectures"] = json::array({v2 ? "DeepseekV2ForCausalLM" : "DeepseekV3ForCausalLM"});
  j["model_type"] = m.model_type;
  j["vocab_size"] = m.vocab_size;
  j["hidden_size"] = m.hidden_size;
  j["intermediate_size"] = m.intermediate_size;
  j["moe_intermediate_size"] = m.moe_intermediate_size;
  j["num_hidden_layers"] = m.num_hidden_layers;
  j["num_nextn_predict_layers"] = m.num_nextn_predict_layers;
  j["num_attention_heads"] = m.num_attention_heads;
  j["num_key_value_heads"] = m.num_key_value_heads;
  j["q_lora_rank"] = m.q_lora_rank == 0 ? json(nullptr) : json(m.q_lora_rank);
  j["kv_lora_rank"] = m.kv_lora_rank;
  j["qk_nope_head_dim"] = m.qk_nope_head_dim;
  j["qk_rope_head_dim"] = m.qk_rope_head_dim;
  j["v_head_dim"] = m.v_head_dim;
  j["n_routed_experts"] = m.n_routed_experts;
  j["n_shared_experts"] = m.n_shared_experts;
  j["num_experts_per_tok"] = m.num_experts_per_tok;
  j["n_group"] = m.n_group;
  j["topk_group"] = m.topk_group;
  j["first_k_dense_replace"] = m.first_k_dense_replace;
  j["moe_layer_freq"] = m.moe_layer_freq;
  j["routed_scaling_factor"] = m.routed_scaling_factor;
  j["scoring_func"] = m.scoring_func;
  j["topk_method"] = m.topk_method;
  j["norm_topk_prob"] = m.norm_topk_prob;
  j["max_position_embeddings"] = m.max_position_embeddings;
  j["rope_theta"] = m.rope_theta;
  if (m.rope_scaling.type == "yarn") {
    const RopeScaling& s = m.rope_scaling;
    j["rope_scaling"] = {{"type", "yarn"},
                         {"rope_type", "yarn"},
                         {"factor", s.factor},
                         {"beta_fast", s.beta_fast},
                         {"beta_slow", s.beta_slow},
                         {"mscale", s.mscale},
                         {"mscale_all_dim", s.mscale_all_dim},
                         {"original_max_position_embeddings", s.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rms_norm_eps"] = m.rms_norm_eps;
  j["hidden_act"] = m.hidden_act;
  j["bos_token_id"] = m.bos_token_id;
  j["eos_token_id"] = m.eos_token_id;
  j["tie_word_embeddings"] = m.tie_word_embeddings;
  j["attention_bias"] = m.attention_bias;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = m.initializer_range;
  return j;
}

}  // namespace frugal
