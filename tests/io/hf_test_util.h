// Helpers for the checkpoint-conversion tests: a frugal checkpoint directory made from a randomly
// initialised model, and Hugging Face directories written tensor by tensor (so that a test can
// drop, reshape or retype any tensor, split shards and write any index).
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/config_io.h"
#include "io/model_io.h"
#include "io/safetensors.h"
#include "model/transformer.h"

namespace frugal::testing {

// A model with N(0, 0.5) weights (norms 1 + N(0, 0.1), routing biases U-ish in [0, 0.05]);
// values rounded to BF16 when bf16_values.
inline void randomize_model(Transformer<float>& model, uint64_t seed, bool bf16_values) {
  model.init_weights(seed, 0.5);
  for (auto& p : model.params().all()) {
    RandomStream rng(seed + 1, hash_name(p->name));
    for (int64_t i = 0; i < p->numel(); ++i) {
      float v = p->value[i];
      if (!p->trainable) v = static_cast<float>(0.05 * rng.uniform(i));
      if (p->trainable && !p->weight_decay) v = static_cast<float>(1.0 + 0.1 * rng.normal(i));
      p->value[i] = bf16_values ? round_to_bf16(v) : v;
    }
  }
}

// A frugal checkpoint directory: model.safetensors (F32), config.json, frugal.toml.
inline void write_frugal_checkpoint(const std::filesystem::path& dir, const Transformer<float>& model) {
  std::filesystem::create_directories(dir);
  Config config;
  config.model = model.config();
  config.train.seq_len = std::min<int64_t>(32, config.model.max_position_embeddings);
  if (config.model.vocab_size < 256) config.data.tokenizer = "none";  // not the byte tokenizer
  save_params(model.params(), (dir / "model.safetensors").string(), DType::F32, {{"format", "pt"}});
  write_file_atomic((dir / "config.json").string(), model_config_to_hf_json(config.model).dump(2));
  write_file_atomic((dir / "frugal.toml").string(), config_to_toml(config));
}

// One tensor of a hand-made Hugging Face file: raw bytes in `dtype`.
struct RawTensor {
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;
  std::string bytes;
};
using RawTensors = std::map<std::string, RawTensor>;

inline RawTensor raw_from_floats(DType dtype, std::vector<int64_t> shape, const float* values) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<double> wide(values, values + n);
  RawTensor t{dtype, std::move(shape), std::string(static_cast<size_t>(n) * dtype_size(dtype), '\0')};
  convert_from_double(wide.data(), dtype, t.bytes.data(), wide.size());
  return t;
}

// Every parameter of `model` in BF16 (routing biases F32), as a transformers checkpoint holds it.
inline RawTensors hf_tensors_of(const Transformer<float>& model) {
  RawTensors out;
  for (auto& p : model.params().all())
    out[p->name] = raw_from_floats(p->trainable ? DType::BF16 : DType::F32, p->shape, p->data());
  return out;
}

// Writes config.json and the tensors: one model.safetensors when shards == 0, else `shards`
// files (round-robin by name) and model.safetensors.index.json.
inline void write_hf_dir(const std::filesystem::path& dir, const nlohmann::json& config,
                         const RawTensors& tensors, int shards = 0) {
  std::filesystem::create_directories(dir);
  write_file_atomic((dir / "config.json").string(), config.dump(2));
  if (shards == 0) {
    SafetensorsWriter w;
    for (auto& [name, t] : tensors) w.add(name, t.dtype, t.shape, t.bytes);
    w.write((dir / "model.safetensors").string());
    return;
  }
  std::vector<SafetensorsWriter> writers(static_cast<size_t>(shards));
  nlohmann::json map = nlohmann::json::object();
  int i = 0;
  for (auto& [name, t] : tensors) {
    const int s = i++ % shards;
    writers[s].add(name, t.dtype, t.shape, t.bytes);
    map[name] = "part-" + std::to_string(s) + ".safetensors";
  }
  for (int s = 0; s < shards; ++s)
    writers[s].write((dir / ("part-" + std::to_string(s) + ".safetensors")).string());
  write_file_atomic((dir / "model.safetensors.index.json").string(),
                    nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump(2));
}

inline std::vector<float> floats_of(const SafetensorsFile& file, const std::string& name) {
  return file.read_as<float>(name);
}

}  // namespace frugal::testing
