// Multi-head Latent Attention (MLA), exactly as spec §1.4, in the naive ("MHA mode") form used
// for training: keys and values are materialised per head.
//
//   q path  (q_lora_rank > 0): c_q = q_a_layernorm(q_a_proj(x)), q = q_b_proj(c_q)
//           (q_lora_rank = 0): q = q_proj(x)
//           q [rows, heads, nope + rope]: dims [0, nope) are q_nope, [nope, nope+rope) get RoPE.
//   kv path kv = kv_a_proj_with_mqa(x) [rows, kv_lora_rank + rope]
//           c_kv = kv_a_layernorm(kv[:, :kv_lora_rank]);  k_pe = RoPE(kv[:, kv_lora_rank:])
//           (k_pe is not normalised; rotated once per token and shared by every head)
//           kv_b = kv_b_proj(c_kv) [rows, heads, nope + v]: per head k_nope then v.
//   key_h = [k_nope_h ; k_pe],  o = causal softmax(q_h . key_h * cfg.softmax_scale()) v_h,
//   y = o_proj(o [rows, heads * v]).
// Rows are [batch * seq]: sequence b is rows [b*seq, (b+1)*seq), attention never crosses
// sequences. Positions default to 0..seq-1 in every sequence; an overload takes them explicitly.
//
// Accumulation rule: parameter gradients accumulate (+=); dx is assigned (=).
// backward_input computes dx and touches no weight gradient (each inner Linear/RMSNorm keeps its
// dy); backward_weight then adds every weight gradient and releases the saved tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/rope/rope.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/rmsnorm.h"

namespace frugal {

template <class T>
class MLA {
 public:
  struct Ctx {
    typename Linear<T>::Ctx q_a_proj, q_b_proj, q_proj, kv_a_proj, kv_b_proj, o_proj;
    typename RMSNorm<T>::Ctx q_a_layernorm, kv_a_layernorm;
    RopeTable rope;                  // covers every position of this call
    std::vector<int32_t> positions;  // [rows]
    std::vector<T> q;                // [rows, heads, qk_head_dim] after RoPE
    std::vector<T> k;                // [rows, heads, qk_head_dim] = [k_nope ; k_pe]
    std::vector<T> v;                // [rows, heads, v_head_dim]
    std::vector<T> probs;            // [batch, heads, seq, seq]
    int64_t batch = 0, seq = 0;
  };

  MLA() = default;
  // prefix e.g. "model.layers.3.self_attn"; registers the Hugging Face tensors under it:
  //   q_lora_rank > 0: q_a_proj [q_lora_rank, hidden], q_a_layernorm [q_lora_rank],
  //                    q_b_proj [heads * qk_head_dim, q_lora_rank]
  //   q_lora_rank = 0: q_proj [heads * qk_head_dim, hidden]
  //   kv_a_proj_with_mqa [kv_lora_rank + rope, hidden], kv_a_layernorm [kv_lora_rank],
  //   kv_b_proj [heads * (nope + v), kv_lora_rank], o_proj [hidden, heads * v]   (all ".weight")
  MLA(ParamStore<T>& store, const std::string& prefix, const ModelConfig& cfg);

  // x, y [batch * seq, hidden]; positions 0..seq-1 in each sequence.
  void forward(Ctx& ctx, const T* x, T* y, int64_t batch, int64_t seq) const;
  // Same, with the absolute position of every row (positions [batch * seq], >= 0). The causal
  // mask still follows the row order within each sequence.
  void forward(Ctx& ctx, const T* x, T* y, int64_t batch, int64_t seq,
               const int32_t* positions) const;
  // dy, dx [batch * seq, hidden]; dx assigned.
  void backward_input(Ctx& ctx, const T* dy, T* dx) const;
  // Adds all weight gradients (+=) and clears ctx.
  void backward_weight(Ctx& ctx) const;

  int64_t hidden() const { return hidden_; }
  int64_t heads() const { return heads_; }
  double softmax_scale() const { return softmax_scale_; }

 private:
  ModelConfig cfg_;
  int64_t hidden_ = 0, heads_ = 0, q_lora_rank_ = 0, kv_lora_rank_ = 0;
  int64_t nope_dim_ = 0, rope_dim_ = 0, v_dim_ = 0, qk_dim_ = 0;
  double softmax_scale_ = 1.0;
  Linear<T> q_a_proj_, q_b_proj_, q_proj_, kv_a_proj_, kv_b_proj_, o_proj_;
  RMSNorm<T> q_a_layernorm_, kv_a_layernorm_;
};

extern template class MLA<float>;
extern template class MLA<double>;

}  // namespace frugal
