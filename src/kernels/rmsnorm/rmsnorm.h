// RMSNorm over the last dimension:  y[n,d] = x[n,d] * rstd[n] * w[d],
// rstd[n] = 1 / sqrt(mean_d(x^2) + eps). Statistics in the element type (fp32 or fp64).
//
// Backward (with xhat = x * rstd):
//   dx = rstd * (dy*w - xhat * mean_d(dy*w*xhat))     (assigned)
//   dw += sum_n dy * xhat                              (accumulated)
//
// Fused with the residual stream of a pre-norm block (the glue around a norm, one pass):
//   residual_rmsnorm_fwd:   h = x + branch, then y = RMSNorm(h)              (h, y, rstd written)
//   rmsnorm_bwd_input_add:  dx = skip + RMSNorm backward of dy at x           (assigned)
// Each is exactly the unfused sequence (one add per element, in the same order), so the CUDA
// versions give the same bits as their unfused CUDA kernels run one after the other.
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
// h [n, d] = x + branch, then rmsnorm_fwd(y, rstd, h). h must not alias x or branch.
template <class T>
void residual_rmsnorm_fwd(T* h, T* y, T* rstd, const T* x, const T* branch, const T* w, int64_t n,
                          int64_t d, double eps);
// dx [n, d] = skip + rmsnorm_bwd_input(dy, x, w, rstd). dx must not alias skip.
template <class T>
void rmsnorm_bwd_input_add(T* dx, const T* dy, const T* x, const T* w, const T* rstd,
                           const T* skip, int64_t n, int64_t d);

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
// The residual add before a norm, fused with it: h = x + (float)branch (one fp32 add, as
// cuda::residual_add), then y, rstd = rmsnorm_fwd(h) -- the same bits as those two kernels. Reads x
// and branch once; writes h (fp32) and y. T (branch and y) is float or __nv_bfloat16. h must not
// alias x or branch.
template <class T>
void residual_rmsnorm_fwd(float* h, T* y, float* rstd, const float* x, const T* branch,
                          const float* w, int64_t n, int64_t d, double eps, cudaStream_t stream);
template <class TX, class TY>
void rmsnorm_bwd_input(TX* dx, const TY* dy, const TX* x, const float* w, const float* rstd,
                       int64_t n, int64_t d, cudaStream_t stream);
// The norm's input gradient added to the skip path's, fused: dx = skip + rmsnorm_bwd_input(dy)
// in fp32 (the same bits as rmsnorm_bwd_input<float, T> then axpby(dx, skip, 1, 1)), and dx_t
// (may be null) = dx rounded to T (as cuda::cast), the copy the next bf16 GEMM reads. T (dy and
// dx_t) is float or __nv_bfloat16. dx must not alias skip, dy or x.
template <class T>
void rmsnorm_bwd_input_add(float* dx, T* dx_t, const T* dy, const float* x, const float* w,
                           const float* rstd, const float* skip, int64_t n, int64_t d,
                           cudaStream_t stream);
// dw [d] += sum_n dy * x * rstd, deterministically: pass 1 sums fixed chunks of rows into
// `workspace` [chunks, d], pass 2 adds the chunk sums to dw in chunk order (no atomics).
// `workspace` holds rmsnorm_bwd_weight_workspace_floats(n, d) floats (a function of the shape).
int64_t rmsnorm_bwd_weight_workspace_floats(int64_t n, int64_t d);
template <class TX, class TY>
void rmsnorm_bwd_weight(float* dw, const TY* dy, const TX* x, const float* rstd, int64_t n,
                        int64_t d, float* workspace, cudaStream_t stream);

}  // namespace frugal::cuda
#endif
