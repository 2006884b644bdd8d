// Multi-head Latent Attention on the GPU (model/mla.h on the device, spec §1.4), training form:
//   q path  c_q = q_a_layernorm(q_a_proj(x)), q = q_b_proj(c_q)     (q_proj(x) when q_lora_rank 0)
//           q [rows, heads, nope + rope], RoPE on dims [nope, nope + rope) of every head
//   kv path kv_a = kv_a_proj_with_mqa(x) [rows, kv_lora_rank + rope]
//           c_kv = kv_a_layernorm(kv_a[:, :kv_lora_rank]); k_pe = RoPE(kv_a[:, kv_lora_rank:])
//           kv_b = kv_b_proj(c_kv) [rows, heads, nope + v]
//   k [rows, heads, nope + rope] = [k_nope_h ; k_pe], v [rows, heads, v]: one pass from kv_b and
//   kv_a's rope columns (cuda::mla_split_kv, which also applies k_pe's RoPE),
//   o = flash attention (causal, scale cfg.softmax_scale()), y = o_proj(o [rows, heads * v]).
// Backward: d kv_b = [dk_nope ; dv] and d_kv_a's rope columns = RoPE_bwd(sum over heads of dk's
// rope parts) in one pass (cuda::mla_merge_kv_grad), d_kv_a's latent columns from kv_a_layernorm.
// Rows are [batch * seq]; attention never crosses sequences. Activations in T; the latent norms
// run (T, T); RoPE uses the model's fp32 cos/sin table and per-row positions (RopeInputs).
// Saved for backward: the latent norms' inputs, the up-projections' inputs when their Linear keeps
// a pointer (fp32/bf16), q, k, v, the attention output and its log-sum-exp.
//
// Accumulation rule: parameter gradients accumulate (+=); dx is assigned. backward computes input
// and weight gradients together and releases the context; given a WeightGradQueue the six
// projections' weight-gradient GEMMs are queued there (gpu_weight_grad.h; the latent norms'
// weight gradients stay in backward).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/attention/mla_glue.h"
#include "model/config.h"
#include "model/gpu/gpu_linear.h"
#include "model/gpu/gpu_rmsnorm.h"

namespace frugal::gpu {

// RoPE inputs of one forward, on the device: cos/sin [table positions, rope_dim/2] and the
// position of every row [rows].
struct RopeInputs {
  const float* cos = nullptr;
  const float* sin = nullptr;
  const int32_t* positions = nullptr;
};

template <class T>
class GpuMla {
 public:
  struct Ctx {
    typename GpuLinear<T>::Ctx q_a_proj, q_b_proj, q_proj, kv_a_proj, kv_b_proj, o_proj;
    typename GpuRMSNorm<T, T>::Ctx q_a_layernorm, kv_a_layernorm;
    cuda::DeviceArray<T> c_q;          // [rows, q_lora_rank]  q_a_layernorm input
    cuda::DeviceArray<T> c_q_normed;   // [rows, q_lora_rank]  q_b_proj input (fp32/bf16)
    cuda::DeviceArray<T> c_kv;         // [rows, kv_lora_rank] kv_a_layernorm input
    cuda::DeviceArray<T> c_kv_normed;  // [rows, kv_lora_rank] kv_b_proj input (fp32/bf16)
    cuda::DeviceArray<T> q, k;         // [rows, heads, qk_head_dim]
    cuda::DeviceArray<T> v;            // [rows, heads, v_head_dim]
    cuda::DeviceArray<T> attn_out;     // [rows, heads * v_head_dim]
    cuda::DeviceArray<float> lse;      // [batch, heads, seq]
    RopeInputs rope;
    int64_t batch = 0, seq = 0;
  };

  GpuMla() = default;
  // Registers the tensors of model/mla.h under prefix (e.g. "model.layers.3.self_attn").
  GpuMla(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg, Recipe recipe);

  // x, y [batch * seq, hidden]; x stays owned by the caller, alive until backward.
  void forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t batch, int64_t seq,
               const RopeInputs& rope) const;
  // dy, dx [batch * seq, hidden]; dx assigned.
  void backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx,
                WeightGradQueue* deferred = nullptr) const;

  void refresh(cuda::DeviceContext& ctx);
  // Whether the caller must keep forward's x alive until backward (false when the Linears that
  // read x cache it in FP8 themselves).
  bool keeps_input_pointer() const {
    return (q_lora_rank_ > 0 ? q_a_proj_ : q_proj_).keeps_input_pointer() ||
           kv_a_proj_.keeps_input_pointer();
  }

 private:
  MlaHeadDims head_dims() const;

  int64_t hidden_ = 0, heads_ = 0, q_lora_rank_ = 0, kv_lora_rank_ = 0;
  int64_t nope_dim_ = 0, rope_dim_ = 0, v_dim_ = 0, qk_dim_ = 0;
  float softmax_scale_ = 1.0f;
  GpuLinear<T> q_a_proj_, q_b_proj_, q_proj_, kv_a_proj_, kv_b_proj_, o_proj_;
  GpuRMSNorm<T, T> q_a_layernorm_, kv_a_layernorm_;
};

extern template class GpuMla<float>;
extern template class GpuMla<bf16>;

}  // namespace frugal::gpu
