// RMSNorm module on the GPU: y[rows, dim] = x * rstd * w (kernels/rmsnorm, cuda section), the
// weight w an fp32 parameter "<name>.weight" [dim] initialised to 1. TX is the input (and input
// gradient) type, TY the output (and output gradient) type: (float, float) for the fp32 recipe and
// the final norm, (float, bf16) where the fp32 residual stream feeds a bf16 GEMM, (bf16, bf16) for
// MLA's latent norms.
// With an fp32 input (the residual stream) the glue around the norm fuses into its kernels:
// forward_residual computes the stream h = x + branch and normalizes it in one pass, and
// backward_add adds the skip path's gradient to dx (and writes dx's TY copy) in the input
// gradient's pass -- the same bits as the separate residual add / axpby / cast.
//
// Accumulation rule: w.grad accumulates (+=); dx is assigned. The context keeps a pointer to x
// (the caller keeps x alive until backward) and the row statistics rstd.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

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

  // h [rows, dim] = x + branch (fp32, assigned), y = norm(h); the context keeps a pointer to h
  // (the caller keeps h alive until backward). h must not alias x or branch.
  void forward_residual(cuda::DeviceContext& ctx, Ctx& c, const float* x, const TY* branch,
                        float* h, TY* y, int64_t rows) const
    requires std::is_same_v<TX, float>;
  // dx [rows, dim] = skip + d(norm input) (assigned), dx_t (may be null) = dx rounded to TY;
  // w.grad += sum dy * x * rstd. dx must not alias skip or dy. Releases ctx.
  void backward_add(cuda::DeviceContext& ctx, Ctx& c, const TY* dy, const float* skip, float* dx,
                    TY* dx_t) const
    requires std::is_same_v<TX, float>;

  int64_t dim() const { return dim_; }
  float* weight() const { return storage_.value; }

 private:
  // w.grad += sum dy * x * rstd (the context's x and rstd).
  void weight_backward(cuda::DeviceContext& ctx, const Ctx& c, const TY* dy) const;

  int64_t dim_ = 0;
  double eps_ = 1e-6;
  ParamRegistry::Storage storage_;
};

extern template class GpuRMSNorm<float, float>;
extern template class GpuRMSNorm<float, bf16>;
extern template class GpuRMSNorm<bf16, bf16>;

}  // namespace frugal::gpu
