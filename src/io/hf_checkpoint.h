// Hugging Face DeepSeek-V2/V3 checkpoints (spec §9): reading, and conversion to and from frugal's
// checkpoint directory (train/checkpoint.h: model.safetensors in F32, config.json, frugal.toml).
//
// A Hugging Face directory holds config.json (model_type "deepseek_v3" or "deepseek_v2") and either
// model.safetensors or model.safetensors.index.json ({"weight_map": {tensor: shard file}}) with its
// shards. Tensors use the canonical names of hf_layout.h. Accepted encodings, per tensor:
//   F32 / BF16 / F16 / F64                      read as is (converted to float)
//   F8_E4M3 + "<name>_scale_inv" [ceil(out/128), ceil(in/128)]
//                                               w = fp8 value * scale_inv of its 128x128 block
//                                               (edge blocks partial), cpu::dequantize_weight_128x128
//   transformers 5's fused experts              mlp.experts.gate_up_proj [E, 2I, H] (gate rows
//                                               first) and mlp.experts.down_proj [E, H, I]
// MTP layers are layers num_hidden_layers + k. When none of depth k's tensors is present (files
// saved by transformers drop them) the model is read with num_nextn_predict_layers = k and a note
// says so; a depth that is present must be complete. MTP copies of the embedding and head are
// checked for shape and dropped (frugal shares the main ones); rotary_emb.inv_freq buffers and the
// tensors of layers past the MTP depth are ignored with a note. Everything else must match:
// a missing tensor, an unknown one, a wrong shape or dtype, an FP8 weight without its scale (or a
// scale without its weight), an index naming a missing shard or a tensor its shard lacks, an
// unknown model_type or quantization method are errors naming the file and the tensor. All of it
// is checked from the headers before any tensor data is read or anything is written.
//
// Memory: shards are memory-mapped; conversion holds one tensor (import) or one output shard
// (export) at a time, never the whole model. Output directories are written under a temporary
// name and renamed into place when complete; an existing non-empty output directory is refused.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/hf_layout.h"
#include "model/config.h"
#include "model/transformer.h"

namespace frugal {

class SafetensorsFile;

class HfCheckpointReader {
 public:
  // Opens and validates (see above). Throws frugal::Error naming the file and tensor.
  explicit HfCheckpointReader(const std::string& dir);
  ~HfCheckpointReader();
  HfCheckpointReader(const HfCheckpointReader&) = delete;
  HfCheckpointReader& operator=(const HfCheckpointReader&) = delete;

  const std::string& dir() const { return dir_; }
  // config.json's model, with num_nextn_predict_layers lowered to the MTP depths present.
  const ModelConfig& config() const { return config_; }
  // What was dropped or ignored, one line each (for the convert summary).
  const std::vector<std::string>& notes() const { return notes_; }
  // The model's tensors in the order read() visits them: shard by shard, in file order.
  const std::vector<HfTensorSpec>& tensors() const { return order_; }
  int64_t shard_count() const { return static_cast<int64_t>(shards_.size()); }
  int64_t fp8_tensor_count() const { return fp8_count_; }

  // Converts each tensor to float (dequantizing FP8) and passes it to `visit`, one at a time.
  void read(const std::function<void(const HfTensorSpec&, const float* values)>& visit) const;

 private:
  struct Source;
  std::string dir_;
  ModelConfig config_;
  std::vector<std::string> notes_;
  std::vector<std::string> shard_names_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::vector<HfTensorSpec> order_;
  std::vector<Source> sources_;  // parallel to order_
  int64_t fp8_count_ = 0;
};

// Copies every tensor of `reader` into a model built from reader.config() (shapes checked).
void load_hf_weights(const HfCheckpointReader& reader, Transformer<float>& model);

struct ConvertSummary {
  int64_t tensors = 0;      // tensors read from the source (import) or written (export)
  int64_t fp8_tensors = 0;  // of which FP8 (read or written)
  int64_t shards = 0;       // safetensors files read (import) or written (export)
  uint64_t bytes = 0;       // tensor bytes written
  std::vector<std::string> notes;
};

// Hugging Face directory -> frugal checkpoint directory `out_dir`: model.safetensors (F32),
// config.json, frugal.toml (the model plus default settings, train.seq_len capped at
// max_position_embeddings), and the tokenizer files present (tokenizer.json,
// tokenizer_config.json, generation_config.json) copied.
ConvertSummary import_hf_checkpoint(const std::string& hf_dir, const std::string& out_dir);

struct HfExportOptions {
  bool fp8 = false;                        // FP8 E4M3 + weight_scale_inv for the hf_layout fp8 tensors
  uint64_t shard_bytes = 5ull << 30;       // a new shard starts before this would be exceeded
};

// frugal checkpoint (or run) directory -> Hugging Face directory `out_dir`:
// model-0000i-of-0000N.safetensors shards (BF16; routing biases F32; with fp8, DeepSeek's FP8
// tensors with their FP32 scales, quantized from the F32 weights by cpu::quantize_weight_128x128
// with scale = amax/448), model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}),
// config.json (with quantization_config when fp8) and the tokenizer files present. MTP layers
// get their copies of the embedding and head, as DeepSeek's files have. A weight and its scale
// always share a shard.
ConvertSummary export_hf_checkpoint(const std::string& checkpoint, const std::string& out_dir,
                                    const HfExportOptions& options = {});

// The model config of a frugal checkpoint directory: frugal.toml's [model], else config.json.
ModelConfig frugal_checkpoint_model_config(const std::string& checkpoint_dir);

}  // namespace frugal
