// The optimizer step on the GPU: one fused AdamW kernel over a tensor, global gradient norm and
// clipping on the device, and the non-finite check that makes the trainer skip a step.
//
// Per element (decoupled weight decay, bias-corrected, as train/adamw.h):
//   g  = grad * clip_scale[0]
//   m  = beta1 m + (1-beta1) g          v = beta2 v + (1-beta2) g^2      (moments stored as M)
//   w -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w)
// Master weights w fp32; moments M = float (fp32 recipe, matches the CPU AdamW) or __nv_bfloat16
// (the bf16/fp8 recipes: computed in fp32, stored rounded to nearest even). `weight_bf16`, when
// not null, receives the updated weights in BF16 (the copy the bf16 GEMMs read).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace frugal::cuda {

struct AdamWStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  int64_t step = 1;  // 1-based, for bias correction
};

template <class M>
void adamw_update(float* w, M* m, M* v, const float* grad, const float* clip_scale,
                  const AdamWStep& step, int64_t n, void* weight_bf16, cudaStream_t stream);

// Sum of squares of many gradient tensors, in a fixed order (the same bits every run):
// pass 1 writes one partial per (tensor, chunk) into `partials`, pass 2 sums them in order.
struct GradTensor {
  const float* data;
  int64_t count;
};
// Device scratch for `tensors` tensors of these sizes.
size_t grad_norm_workspace_bytes(const GradTensor* tensors, int64_t count);
// Writes, on the device: norm[0] = sqrt(sum of squares) (fp32; inf/nan when a gradient is not
// finite), clip_scale[0] = min(1, max_norm / (norm + 1e-6)) (1 when max_norm <= 0; 0 when the norm
// is not finite, and then nonfinite[0] = 1 else 0). `tensors` is a host array; the kernel reads a
// device copy kept in the workspace.
void grad_norm_and_clip(float* norm, float* clip_scale, int32_t* nonfinite,
                        const GradTensor* tensors, int64_t count, float max_norm, void* workspace,
                        cudaStream_t stream);

}  // namespace frugal::cuda
