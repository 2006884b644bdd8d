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

// SwiGLU of an MoE layer's permuted expert rows fused with the FP8 quantizations around it
// (swiglu_fp8_cuda.cu), bf16 only, inter % 128 == 0 (else frugal::Error: the caller keeps the
// unfused sequence). The groups are those of quantize_act_1x128_dual_grouped (quant.h): offsets
// [groups+1] on the device, each group a multiple of 128 rows starting on a multiple of 128; rows
// in no group get no h / dgu operands (their outputs are left untouched).
// Forward: gu [rows, 2*inter] (g = columns [0, inter), u = [inter, 2*inter)) ->
//   gu_q [rows, 2*inter], gu_scales [2*inter/128][rows]: exactly quantize_act_1x128 of gu (every
//     row, in a group or not: the FP8 SwiGLU-input cache of spec §4.4);
//   h_q, h_scales, hT_q, hT_scales: exactly quantize_act_1x128_dual_grouped of the bf16 h that
//     swiglu_fwd<bf16> would write ([rows, inter]); h itself is never stored.
// Backward: dh [rows, inter] and the forward's gu_q, gu_scales ->
//   dgu_q, dgu_scales, dguT_q, dguT_scales: exactly quantize_act_1x128_dual_grouped of the bf16
//     dgu [rows, 2*inter] = [dg | du] that dequantize_act_1x128<bf16> of the cache followed by
//     swiglu_bwd<bf16> would write; neither dgu nor the dequantized gu is stored.
void swiglu_fwd_fp8_grouped(uint8_t* gu_q, float* gu_scales, uint8_t* h_q, float* h_scales,
                            uint8_t* hT_q, float* hT_scales, const __nv_bfloat16* gu,
                            const int64_t* offsets, int64_t groups, int64_t rows, int64_t inter,
                            bool power_of_two_scale, cudaStream_t stream);
void swiglu_bwd_fp8_grouped(uint8_t* dgu_q, float* dgu_scales, uint8_t* dguT_q,
                            float* dguT_scales, const __nv_bfloat16* dh, const uint8_t* gu_q,
                            const float* gu_scales, const int64_t* offsets, int64_t groups,
                            int64_t rows, int64_t inter, bool power_of_two_scale,
                            cudaStream_t stream);

// The flat fp32 forms over n elements (kept for the op harness).
void swiglu_fwd(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream);
void swiglu_bwd(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                cudaStream_t stream);

}  // namespace frugal::cuda
#endif
