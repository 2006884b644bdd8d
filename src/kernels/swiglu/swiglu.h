// SwiGLU activation of DeepSeek's FFN (spec §1.1): h = silu(g) * u, elementwise, where
// g = gate_proj(x), u = up_proj(x) and silu(g) = g * sigmoid(g). All arrays hold n elements.
//
// Backward (sig = sigmoid(g)):
//   dg = dh * u * sig * (1 + g * (1 - sig))     (assigned)
//   du = dh * silu(g)                           (assigned)
#pragma once

#include <cstdint>

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_runtime_api.h>  // cudaStream_t
#endif

namespace frugal::cpu {

// h[n] = silu(g[n]) * u[n]
template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t n);
// dg[n], du[n] from dh[n] and the forward inputs g[n], u[n].
template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n);

}  // namespace frugal::cpu

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_bf16.h>
namespace frugal::cuda {

// Device pointers, asynchronous on `stream`; same formulas as frugal::cpu, arithmetic in fp32.
// T is float or __nv_bfloat16. The 2-D forms read g and u as [rows, cols] with row stride ld_in
// (so one fused gate|up GEMM output [rows, 2*cols] is g = gu, u = gu + cols, ld_in = 2*cols) and
// write h, dg, du with row stride cols (dg, du: ld_in, same layout as g, u).
template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t rows, int64_t cols, int64_t ld_in,
                cudaStream_t stream);
template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t rows, int64_t cols,
                int64_t ld_in, cudaStream_t stream);
// SwiGLU fused with FP8 quantization of h (the down_proj input): q [rows, cols], scales
// [ceil(cols/128)][rows], exactly quantize_act_1x128 of the fp32 h.
template <class T>
void swiglu_fwd_quant(uint8_t* q, float* scales, const T* g, const T* u, int64_t rows, int64_t cols,
                      int64_t ld_in, bool power_of_two_scale, cudaStream_t stream);

// The flat fp32 forms over n elements (kept for the op harness).
void swiglu_fwd(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream);
void swiglu_bwd(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                cudaStream_t stream);

}  // namespace frugal::cuda
#endif
