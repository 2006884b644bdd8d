// The DeepSeek-V3 model for generation: the parameters of a Transformer<float> (read by name, not
// copied; FP8 checkpoints arrive dequantized by frugal convert) run row by row against a paged
// latent KV cache, with MLA in its absorbed form (spec §1.5):
//
//   per row (token t at position p of its sequence), per layer:
//     q = q_b_proj(q_a_layernorm(q_a_proj(x)))  (or q_proj(x))      [heads, nope + rope]
//     q_pe <- RoPE(q_pe, p)
//     kv = kv_a_proj_with_mqa(x);  c = kv_a_layernorm(kv[:kv_lora]);  k_pe = RoPE(kv[kv_lora:], p)
//     cache[layer][p] = [c ; k_pe]                                   [kv_lora + rope]
//     per head h, with kv_b_proj viewed as [heads, nope + v, kv_lora]: W_UK = rows [0, nope),
//     W_UV = rows [nope, nope + v):
//       q_lat  = W_UK^T q_nope                                       [kv_lora]  (absorbed query)
//       s_j    = (q_lat . c_j + q_pe . k_pe_j) * softmax_scale       j = 0..p (causal)
//       o_lat  = sum_j softmax(s)_j c_j                              [kv_lora]
//       o_h    = W_UV o_lat                                          [v]
//     y = o_proj(o)
//   then the FFN (dense SwiGLU, or the MoE: router, experts, shared experts) as in training, and
//   logits = lm_head(norm(x)) for the rows asked for.
// This equals the training forward (MLA's naive form) up to rounding: q·k_j = q_nope·W_UK c_j +
// q_pe·k_pe_j and o = W_UV Σ p_j c_j. Every operation is row-invariant (infer/row_ops.h), so a
// row's result never depends on the other rows of the batch.
//
// MTP depth 1 (spec §3.1) for speculative decoding: row (t_{p+1}, h_p) at position p, with h_p the
// main model's final-normed hidden state at p:
//   x = eh_proj([enorm(embed(t_{p+1})) ; hnorm(h_p)]);  x = decoder layer L (its own cache);
//   logits = lm_head(shared_head.norm(x))  -> the draft of token p + 2.
//
// Not thread-safe: one forward at a time (the RoPE table grows on demand).
#pragma once

#include <cstdint>
#include <vector>

#include "infer/generation_model.h"
#include "infer/latent_cache.h"
#include "kernels/moe/router.h"
#include "kernels/rope/rope.h"
#include "model/config.h"
#include "model/transformer.h"

namespace frugal::infer {

class InferenceModel final : public GenerationModel {
 public:
  // Keeps a reference to `model`, which must outlive this object (and not change during use).
  explicit InferenceModel(const Transformer<float>& model);

  const ModelConfig& config() const override { return cfg_; }
  std::string describe() const override { return "cpu"; }
  // A cache for the main model (num_hidden_layers layers) or for MTP depth 1 (one layer).
  PagedLatentCache make_cache(bool mtp, int64_t page_size, int64_t num_pages) const override;

  // Main model over `rows`. Writes each row's latent entry into `cache`, then attends over
  // positions [0, position] of its sequence. logits [logit_rows.size(), vocab] for the rows named
  // in logit_rows; hidden (optional) [rows, hidden]: final-normed hidden states (MTP's input).
  void forward(const Rows& rows, PagedLatentCache& cache, const std::vector<int64_t>& logit_rows,
               std::vector<float>* logits, std::vector<float>* hidden) const override;
  // MTP depth 1 over `rows` (tokens t_{p+1}, positions p), hidden [rows, hidden] = h_p.
  void forward_mtp(const Rows& rows, const float* hidden, PagedLatentCache& cache,
                   const std::vector<int64_t>& logit_rows,
                   std::vector<float>* logits) const override;

 private:
  struct Mlp {
    const float *gate = nullptr, *up = nullptr, *down = nullptr;
    int64_t inter = 0;
  };
  struct Layer {
    const float *input_norm = nullptr, *post_norm = nullptr;
    const float *q_a = nullptr, *q_a_norm = nullptr, *q_b = nullptr, *q = nullptr;
    const float *kv_a = nullptr, *kv_a_norm = nullptr, *kv_b = nullptr, *o = nullptr;
    bool moe = false;
    Mlp dense;                       // dense layers
    const float* router = nullptr;   // MoE layers: gate weight [E, hidden]
    const float* bias = nullptr;     // e_score_correction_bias (noaux_tc) or null
    std::vector<Mlp> experts;
    Mlp shared;                      // inter 0 when there are no shared experts
  };
  Layer load_layer(const std::string& prefix, int64_t layer_index) const;
  // x [rows, hidden] in place: x += MLA(norm(x)); x += FFN(norm(x)).
  void layer_forward(const Layer& layer, float* x, const Rows& rows, PagedLatentCache& cache,
                     int64_t cache_layer) const;
  void attention(const Layer& layer, const float* x, float* y, const Rows& rows,
                 PagedLatentCache& cache, int64_t cache_layer) const;
  void moe(const Layer& layer, const float* x, float* y, int64_t n) const;
  void mlp(const Mlp& weights, const float* x, float* y, int64_t n) const;
  void embed(const Rows& rows, float* x) const;
  void head(const float* normed, const std::vector<int64_t>& logit_rows, int64_t n,
            std::vector<float>* logits) const;
  void ensure_rope(int64_t positions) const;

  const Transformer<float>& model_;
  ModelConfig cfg_;
  cpu::RouterParams router_;
  double softmax_scale_ = 1.0;
  const float *embed_ = nullptr, *final_norm_ = nullptr, *lm_head_ = nullptr;
  std::vector<Layer> layers_;
  // MTP depth 1 (when present).
  const float *enorm_ = nullptr, *hnorm_ = nullptr, *eh_proj_ = nullptr, *mtp_norm_ = nullptr;
  Layer mtp_layer_;
  mutable RopeTable rope_;
};

}  // namespace frugal::infer
