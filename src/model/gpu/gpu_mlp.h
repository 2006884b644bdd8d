// SwiGLU feed-forward block on the GPU (model/mlp.h on the device):
//   gu[rows, 2*inter] = x · [W_gate; W_up]^T      one GEMM over gate_proj and up_proj stacked
//   h[rows, inter]    = silu(gu[:, :inter]) * gu[:, inter:]
//   y[rows, hidden]   = h · W_down^T
// Used for the dense FFN ("model.layers.0.mlp") and the shared experts of an MoE layer
// ("model.layers.3.mlp.shared_experts", inter = moe_intermediate_size * n_shared_experts).
// Parameters (registered in the CPU order): prefix.gate_proj.weight [inter, hidden] and
// prefix.up_proj.weight [inter, hidden] (one storage array, gate rows first),
// prefix.down_proj.weight [hidden, inter].
// Saved for backward: gu (under fp8 in FP8, 1x128 tiles, spec §4.4: the SwiGLU input cached in
// FP8) and h (only when down_proj runs fp32/bf16; under fp8 down_proj keeps its own FP8 copy of
// h^T).
//
// Accumulation rule: the three weight gradients accumulate (+=); dx is assigned (or added when
// accumulate_dx). backward computes input and weight gradients together and releases the context;
// given a WeightGradQueue the three weight-gradient GEMMs are queued there (gpu_weight_grad.h).
#pragma once

#include <cstdint>
#include <string>

#include "model/gpu/gpu_linear.h"

namespace frugal::gpu {

template <class T>
class GpuMlp {
 public:
  struct Ctx {
    typename GpuLinear<T>::Ctx gate_up, down;
    cuda::DeviceArray<T> gu;             // [rows, 2*inter] (fp32/bf16 gate_up)
    cuda::DeviceArray<uint8_t> gu_q;     // [rows, 2*inter] FP8 codes (fp8 gate_up)
    cuda::DeviceArray<float> gu_scales;  // [ceil(2*inter/128)][rows]
    cuda::DeviceArray<T> h;              // [rows, inter] while down_proj needs it
    int64_t rows = 0;
  };

  GpuMlp() = default;
  GpuMlp(ParamRegistry& registry, const std::string& prefix, int64_t hidden, int64_t inter,
         Recipe recipe);

  // x [rows, hidden] -> y [rows, hidden]. x stays owned by the caller, alive until backward.
  void forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t rows) const;
  // dy [rows, hidden] -> dx [rows, hidden] (assigned, or added when accumulate_dx).
  void backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx, bool accumulate_dx,
                WeightGradQueue* deferred = nullptr) const;

  void refresh(cuda::DeviceContext& ctx);
  // Whether the caller must keep forward's x alive until backward.
  bool keeps_input_pointer() const { return gate_up_.keeps_input_pointer(); }
  int64_t hidden() const { return hidden_; }
  int64_t inter() const { return inter_; }

 private:
  int64_t hidden_ = 0, inter_ = 0;
  GpuLinear<T> gate_up_, down_;
};

extern template class GpuMlp<float>;
extern template class GpuMlp<bf16>;

}  // namespace frugal::gpu
