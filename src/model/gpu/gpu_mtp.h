// One multi-token-prediction module on the GPU (model/mtp.h on the device, spec §3.1), depth k,
// stored as layer num_hidden_layers + k - 1 ("model.layers.<L+k-1>"):
//   h' = eh_proj([enorm(emb) ; hnorm(h_prev)])     embedding first, as deployed code
//   h_out = Block(h')                              a full decoder layer
//   normed = shared_head.norm(h_out)               input of the shared output head (run by caller)
// emb, h_prev, h_out are fp32 [batch*seq_k, hidden] (the embedding output, the previous depth's
// stream); normed is T. eh_proj stays out of FP8 (fp32 or bf16 by recipe).
//
// Accumulation rule: parameter gradients accumulate (+=); demb and dh_prev are assigned. backward
// computes input and weight gradients together and releases the context; given a WeightGradQueue
// the weight-gradient GEMMs of eh_proj and the block's Linears are queued there
// (gpu_weight_grad.h), the norms' stay.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/gpu/gpu_block.h"
#include "model/gpu/gpu_linear.h"
#include "model/gpu/gpu_rmsnorm.h"

namespace frugal::gpu {

template <class T>
class GpuMtp {
 public:
  struct Ctx {
    typename GpuRMSNorm<float, T>::Ctx enorm, hnorm, head_norm;
    typename GpuLinear<T>::Ctx eh_proj;
    typename GpuBlock<T>::Ctx block;
    cuda::DeviceArray<T> cat;       // [rows, 2*hidden] eh_proj input
    cuda::DeviceArray<float> proj;  // [rows, hidden] block input (fp32 stream)
    int64_t rows = 0;
  };

  GpuMtp(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg,
         int64_t layer_index, Recipe recipe);

  // emb, h_prev -> h_out (fed to depth k+1) and normed (input of the shared head). emb, h_prev
  // and h_out stay owned by the caller, alive until backward. balance_loss as GpuBlock.
  void forward(cuda::DeviceContext& ctx, Ctx& c, const float* emb, const float* h_prev,
               float* h_out, T* normed, int64_t batch, int64_t seq, const RopeInputs& rope,
               double balance_alpha, bool count_load, double* balance_loss);
  // dh_out: gradient from depth k+1 (null at the last depth); dnormed: from the head.
  void backward(cuda::DeviceContext& ctx, Ctx& c, const float* dh_out, const T* dnormed,
                float* demb, float* dh_prev, double dbalance,
                WeightGradQueue* deferred = nullptr) const;

  void refresh(cuda::DeviceContext& ctx);
  GpuBlock<T>& block() const { return *block_; }

 private:
  int64_t hidden_ = 0;
  GpuRMSNorm<float, T> enorm_, hnorm_;
  GpuLinear<T> eh_proj_;
  std::unique_ptr<GpuBlock<T>> block_;
  GpuRMSNorm<float, T> head_norm_;
};

extern template class GpuMtp<float>;
extern template class GpuMtp<bf16>;

}  // namespace frugal::gpu
