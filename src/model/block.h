// One pre-norm decoder layer (spec §1.1):
//   h = x + MLA(RMSNorm_attn(x))          input_layernorm, self_attn
//   y = h + FFN(RMSNorm_ffn(h))           post_attention_layernorm, mlp (dense MLP or DeepSeekMoE)
// Shapes: x, h, y [batch*seq, hidden]; sequence b occupies rows [b*seq, (b+1)*seq).
//
// Accumulation rule: parameter gradients accumulate (+=); dx is assigned. The residual stream's
// gradient is the sum of the skip path and each branch's input gradient.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/mla.h"
#include "model/mlp.h"
#include "model/moe.h"
#include "model/rmsnorm.h"

namespace frugal {

template <class T>
class Block {
 public:
  struct Ctx {
    typename RMSNorm<T>::Ctx attn_norm, ffn_norm;
    typename MLA<T>::Ctx attn;
    typename MLP<T>::Ctx mlp;
    typename MoE<T>::Ctx moe;
    int64_t batch = 0, seq = 0;
  };

  // prefix: "model.layers.<i>"; layer_index decides dense or MoE FFN; an MoE FFN holds the
  // routed experts of `experts` (all by default).
  Block(ParamStore<T>& store, const std::string& prefix, const ModelConfig& cfg, int64_t layer_index,
        ExpertShard experts = {});

  // Returns this layer's balance loss (0 for a dense layer).
  T forward(Ctx& ctx, const T* x, T* y, int64_t batch, int64_t seq, double balance_alpha,
            bool count_load) const;
  // dbalance: d(total loss)/d(this layer's balance loss).
  void backward_input(Ctx& ctx, const T* dy, T* dx, double dbalance) const;
  void backward_weight(Ctx& ctx) const;

  MoE<T>* moe() const { return moe_.get(); }

 private:
  int64_t hidden_;
  RMSNorm<T> attn_norm_, ffn_norm_;
  std::unique_ptr<MLA<T>> attn_;
  std::unique_ptr<MLP<T>> mlp_;  // dense layers
  std::unique_ptr<MoE<T>> moe_;  // MoE layers
};

}  // namespace frugal
