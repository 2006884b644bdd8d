// RMSNorm over the last dimension:  y[n,d] = x[n,d] * rstd[n] * w[d],
// rstd[n] = 1 / sqrt(mean_d(x^2) + eps). Statistics in the element type (fp32 or fp64).
//
// Backward (with xhat = x * rstd):
//   dx = rstd * (dy*w - xhat * mean_d(dy*w*xhat))     (assigned)
//   dw += sum_n dy * xhat                              (accumulated)
#pragma once

#include <cstdint>

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_runtime_api.h>  // cudaStream_t
#endif

namespace frugal::cpu {

template <class T>
void rmsnorm_fwd(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t d, double eps);
template <class T>
void rmsnorm_bwd_input(T* dx, const T* dy, const T* x, const T* w, const T* rstd, int64_t n,
                       int64_t d);
template <class T>
void rmsnorm_bwd_weight(T* dw, const T* dy, const T* x, const T* rstd, int64_t n, int64_t d);

}  // namespace frugal::cpu

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_bf16.h>
namespace frugal::cuda {

// Device pointers, asynchronous on `stream`; same shapes and rules as frugal::cpu. Statistics and
// arithmetic in fp32; the weight w, rstd and dw are fp32. TX (the input x and dx) and TY (the
// output y and dy) are float or __nv_bfloat16; instantiated for (float, float), (float, bf16)
// (the fp32 residual stream feeding a bf16 GEMM) and (bf16, bf16) (MLA's latent norms).
// Row statistics are block tree reductions (fixed order: the same bits on every run).
template <class TX, class TY>
void rmsnorm_fwd(TY* y, float* rstd, const TX* x, const float* w, int64_t n, int64_t d,
                 double eps, cudaStream_t stream);
// RMSNorm fused with FP8 quantization of its output (the input of the next FP8 GEMM): q, scales
// exactly as quantize_act_1x128 of the fp32 y (before any rounding to TY); y (may be null) also
// receives the output in TY.
template <class TX, class TY>
void rmsnorm_fwd_quant(uint8_t* q, float* scales, TY* y, float* rstd, const TX* x, const float* w,
                       int64_t n, int64_t d, double eps, bool power_of_two_scale,
                       cudaStream_t stream);
template <class TX, class TY>
void rmsnorm_bwd_input(TX* dx, const TY* dy, const TX* x, const float* w, const float* rstd,
                       int64_t n, int64_t d, cudaStream_t stream);
// dw [d] += sum_n dy * x * rstd, deterministically: pass 1 sums fixed chunks of rows into
// `workspace` [chunks, d], pass 2 adds the chunk sums to dw in chunk order (no atomics).
// `workspace` holds rmsnorm_bwd_weight_workspace_floats(n, d) floats (a function of the shape).
int64_t rmsnorm_bwd_weight_workspace_floats(int64_t n, int64_t d);
template <class TX, class TY>
void rmsnorm_bwd_weight(float* dw, const TY* dy, const TX* x, const float* rstd, int64_t n,
                        int64_t d, float* workspace, cudaStream_t stream);

}  // namespace frugal::cuda
#endif
