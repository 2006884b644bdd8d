// One pre-norm decoder layer on the GPU (model/block.h on the device, spec §1.1):
//   h = x + MLA(input_layernorm(x))
//   y = h + FFN(post_attention_layernorm(h))      FFN = dense GpuMlp or GpuMoe by layer index
// x, h, y are the fp32 residual stream [batch*seq, hidden]; the norms write T for the branches
// and the branches' T outputs are added to the stream in fp32. The add h = x + attention runs in
// post_attention_layernorm's kernel (GpuRMSNorm::forward_residual); in the backward each norm's
// input gradient is added to the skip path's in the norm's kernel (GpuRMSNorm::backward_add),
// which also writes dh's T copy for the attention's backward.
//
// Accumulation rule: parameter gradients accumulate (+=); dx is assigned. The residual stream's
// gradient (fp32) is the sum of the skip path and each branch's input gradient. backward computes
// input and weight gradients together and releases the context; given a WeightGradQueue the
// branches' Linear weight-gradient GEMMs are queued there (gpu_weight_grad.h), the norms' stay.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/config.h"
#include "model/gpu/gpu_mla.h"
#include "model/gpu/gpu_mlp.h"
#include "model/gpu/gpu_moe.h"
#include "model/gpu/gpu_rmsnorm.h"

namespace frugal::gpu {

template <class T>
class GpuBlock {
 public:
  struct Ctx {
    typename GpuRMSNorm<float, T>::Ctx attn_norm, ffn_norm;
    typename GpuMla<T>::Ctx attn;
    typename GpuMlp<T>::Ctx mlp;
    typename GpuMoe<T>::Ctx moe;
    cuda::DeviceArray<T> attn_in;  // [rows, hidden] input_layernorm output (MLA input)
    cuda::DeviceArray<float> h;    // [rows, hidden] stream after attention (ffn norm input)
    cuda::DeviceArray<T> ffn_in;   // [rows, hidden] post_attention_layernorm output
    int64_t rows = 0;
  };

  // prefix: "model.layers.<i>"; layer_index decides dense or MoE FFN.
  GpuBlock(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg,
           int64_t layer_index, Recipe recipe);

  // x, y [batch*seq, hidden] fp32; x stays owned by the caller, alive until backward.
  // balance_loss: a device double for an MoE layer's balance loss (null for a dense layer).
  void forward(cuda::DeviceContext& ctx, Ctx& c, const float* x, float* y, int64_t batch,
               int64_t seq, const RopeInputs& rope, double balance_alpha, bool count_load,
               double* balance_loss);
  // dy -> dx [rows, hidden] fp32 (assigned; dx must not alias dy). dbalance: d(total)/d(balance).
  // dy_t (may be null): dy already rounded to T, which the branch backward then reads instead of
  // rounding dy itself (bf16; ignored under fp32, where dy is read as it is). dx_t (may be null):
  // also receives dx rounded to T, written by the kernel that writes dx -- the next block down's
  // dy_t, so a chain of blocks rounds each gradient once, in the kernel that computes it.
  void backward(cuda::DeviceContext& ctx, Ctx& c, const float* dy, float* dx, double dbalance,
                WeightGradQueue* deferred = nullptr, const T* dy_t = nullptr,
                T* dx_t = nullptr) const;

  void refresh(cuda::DeviceContext& ctx);
  GpuMoe<T>* moe() const { return moe_.get(); }

 private:
  int64_t hidden_ = 0;
  GpuRMSNorm<float, T> attn_norm_, ffn_norm_;
  std::unique_ptr<GpuMla<T>> attn_;
  std::unique_ptr<GpuMlp<T>> mlp_;  // dense layers
  std::unique_ptr<GpuMoe<T>> moe_;  // MoE layers
};

extern template class GpuBlock<float>;
extern template class GpuBlock<bf16>;

}  // namespace frugal::gpu
