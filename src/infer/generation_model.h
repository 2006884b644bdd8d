// What the generation engine (infer/engine.h) needs from a model: forward passes over rows of
// tokens against a paged latent KV cache (spec §1.5), and MTP depth 1 for speculative decoding.
// Implemented by InferenceModel (CPU reference, infer/inference_model.h) and GpuInferenceModel
// (CUDA, infer/gpu/gpu_inference_model.h). Inputs and outputs are host vectors either way; where
// the cache entries live (host floats, device BF16) is the model's business: make_cache() returns
// the page bookkeeping with whatever storage the model attached to it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "infer/latent_cache.h"
#include "model/config.h"

namespace frugal::infer {

// The rows of one forward pass: for each, its token, its position in its sequence and the cache
// sequence it belongs to. Rows of one sequence must come in increasing position order, and the
// cache must hold room for them (PagedLatentCache::grow) before the forward.
struct Rows {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
  std::vector<int64_t> sequences;

  void add(int32_t token, int64_t position, int64_t sequence) {
    tokens.push_back(token);
    positions.push_back(static_cast<int32_t>(position));
    sequences.push_back(sequence);
  }
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
  void clear() {
    tokens.clear();
    positions.clear();
    sequences.clear();
  }
};

class GenerationModel {
 public:
  virtual ~GenerationModel() = default;

  virtual const ModelConfig& config() const = 0;
  // "cpu" or e.g. "cuda:0 NVIDIA H200, bf16 weights": for logs and benchmark tables.
  virtual std::string describe() const = 0;
  int64_t entry_dim() const { return config().kv_lora_rank + config().qk_rope_head_dim; }
  bool has_mtp() const { return config().num_nextn_predict_layers > 0; }

  // A cache for the main model (num_hidden_layers layers) or for MTP depth 1 (one layer).
  virtual PagedLatentCache make_cache(bool mtp, int64_t page_size, int64_t num_pages) const = 0;

  // Main model over `rows`. Writes each row's latent entry into `cache`, then attends over
  // positions [0, position] of its sequence. logits [logit_rows.size(), vocab] for the rows named
  // in logit_rows; hidden (optional) [rows, hidden]: final-normed hidden states (MTP's input).
  virtual void forward(const Rows& rows, PagedLatentCache& cache,
                       const std::vector<int64_t>& logit_rows, std::vector<float>* logits,
                       std::vector<float>* hidden) const = 0;
  // MTP depth 1 over `rows` (tokens t_{p+1}, positions p), hidden [rows, hidden] = h_p.
  virtual void forward_mtp(const Rows& rows, const float* hidden, PagedLatentCache& cache,
                           const std::vector<int64_t>& logit_rows,
                           std::vector<float>* logits) const = 0;
};

}  // namespace frugal::infer
