// Reading and writing frugal configurations.
//
// A frugal config is a TOML file with the sections [model], [train], [optim], [schedule],
// [batch_ramp], [data] and [generate]; the keys are the field names of the structs in
// model/config.h and train/train_config.h (model keys are Hugging Face config.json names), and
// model.rope_scaling is a sub-table ([model.rope_scaling]). Piecewise schedules
// (train.bias_update_speed, train.mtp_weight) are arrays of [start_step, value] pairs or of
// {start = .., value = ..} tables; a plain number means "this value from step 0".
// `[model] hf_config = "path/config.json"` loads a Hugging Face config.json first (relative paths
// resolve against the TOML file's folder); the other [model] keys then override it.
// Unknown sections or keys, wrong types and malformed TOML are errors naming the file and key.
// A Hugging Face config.json (DeepseekV3 or DeepseekV2) is read leniently: keys that do not change
// the model, and keys this reader does not know, are ignored.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/train_config.h"

namespace frugal {

// Reads `toml_path` (an empty path starts from the built-in defaults), applies `overrides` in order
// (each "section.key=value", e.g. "train.lr=3e-4" or "model.rope_scaling.factor=40"; the value's
// type is the field's: integers, floats, true/false, strings with or without quotes, and for the
// step schedules a TOML array such as [[0,0.3],[1000,0.1]] or a single number), then validates
// the result. An override "model.hf_config=path" replaces the file's hf_config (path as given).
// Throws frugal::Error naming the file (or override) and key.
Config load_config(const std::string& toml_path, const std::vector<std::string>& overrides = {});

// Checks the whole configuration: validate(config.model), then the train/optim/schedule/
// batch_ramp/data/generate settings (e.g. train.batch_sequences a positive multiple of
// train.micro_batch, train.seq_len >= 2, schedule.warmup_steps <= decay_start <= decay_end).
void validate(const Config& config);

// Hugging Face config.json (model_type "deepseek_v3" or "deepseek_v2") -> ModelConfig.
// null q_lora_rank -> 0; null rope_scaling -> none; "rope_scaling" or transformers 5's
// "rope_parameters" (with rope_theta inside), with "type" or "rope_type"; V2 configs get V2's
// routing defaults for absent keys (softmax, greedy, norm_topk_prob false, scaling 1.0, no MTP),
// and null n_group/topk_group -> 1. The result is validated. `source` names the file in errors.
ModelConfig model_config_from_json(const nlohmann::json& json, const std::string& source);
ModelConfig load_hf_config(const std::string& json_path);

// The config.json written next to checkpoints: architectures ["DeepseekV3ForCausalLM"] (or
// ["DeepseekV2ForCausalLM"] for model_type deepseek_v2), every ModelConfig key, q_lora_rank null
// when 0, rope_scaling null or a yarn dict. model_config_from_json reads it back unchanged.
nlohmann::json model_config_to_hf_json(const ModelConfig& model);

// The resolved configuration as TOML text; load_config reads it back to an identical Config.
std::string config_to_toml(const Config& config);

// A readable two-column table of every effective setting, grouped by section, with a few derived
// quantities (qk_head_dim, MoE layer count, softmax scale, tokens per step), for start-up logs.
std::string settings_table(const Config& config);

}  // namespace frugal
