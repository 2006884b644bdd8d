// RMSNorm module on the GPU: y[rows, dim] = x * rstd * w (kernels/rmsnorm, cuda section), the
// weight w an fp32 parameter "<name>.weight" [dim] initialised to 1. TX is the input (and input
// gradient) type, TY the output (and output gradient) type: (float, float) for the fp32 recipe and
// the final norm, (float, bf16) where the fp32 residual stream feeds a bf16 GEMM, (bf16, bf16) for
// MLA's latent norms.
//
// Accumulation rule: w.grad accumulates (+=); dx is assigned. The context keeps a pointer to x
// (the caller keeps x alive until backward) and the row statistics rstd.
#pragma once

#include <cstdint>
#include <string>

#include "model/gpu/gpu_common.h"

namespace frugal::gpu {

template <class TX, class TY>
class GpuRMSNorm {
 public:
  struct Ctx {
    const TX* x = nullptr;          // [rows, dim], owned by the caller
    cuda::DeviceArray<float> rstd;  // [rows]
    int64_t rows = 0;
  };

  GpuRMSNorm() = default;
  GpuRMSNorm(ParamRegistry& registry, const std::string& name, int64_t dim, double eps);

  void forward(cuda::DeviceContext& ctx, Ctx& c, const TX* x, TY* y, int64_t rows) const;
  // dy [rows, dim] -> dx [rows, dim] (assigned); w.grad += sum dy * x * rstd. Releases ctx.
  void backward(cuda::DeviceContext& ctx, Ctx& c, const TY* dy, TX* dx) const;

  int64_t dim() const { return dim_; }
  float* weight() const { return storage_.value; }

 private:
  int64_t dim_ = 0;
  double eps_ = 1e-6;
  ParamRegistry::Storage storage_;
};

extern template class GpuRMSNorm<float, float>;
extern template class GpuRMSNorm<float, bf16>;
extern template class GpuRMSNorm<bf16, bf16>;

}  // namespace frugal::gpu
