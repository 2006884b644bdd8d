// Grouped FP8 GEMMs of an MoE layer on Hopper tensor cores (wgmma e4m3, FP32 accumulation with
// the V3 recipe's per-128 promotion), one kernel launch per call, over DEVICE-side group offsets
// (no host copy, no host sync, no per-group launches) — the FP8 counterparts of
// grouped_gemm_sm90.h, with the operand and scale layouts of the cuBLASLt FP8 grouped calls
// (gemm_cuda.h: grouped_gemm_fp8_nt, grouped_gemm_fp8_wgrad) and of the grouped quantizers
// (kernels/quant/quant.h: quantize_act_1x128_grouped, transpose_quantize_1x128_grouped).
//
// Group g owns rows [offsets[g], offsets[g+1]) of the permuted token matrix; offsets [groups+1]
// live on the device, start at 0, are non-decreasing and are multiples of 128 (kFp8GroupRowAlign:
// the permutation pads every expert with zero rows). `max_rows` is a host-known upper bound of
// offsets[groups] (it sizes the grid); rows at or past offsets[groups] are neither read as group
// rows nor written.
//   grouped_gemm_fp8_sm90_nt     y[rows,N] = A[rows,K] · B_g[N,K]^T             (Fprop, Dgrad)
//       A: E4M3 row-major; group g's 1x128 tile scales at a_scales + offsets[g] * (K/128), laid
//          out [K/128][rows_g] (rows fastest). B_g: E4M3 [N,K] at b + g*N*K, 128x128 block scales
//          at b_scales + g * (N/128) * (K/128), laid out [N/128][K/128]. Output BF16.
//          (Dgrad passes dy quantized per group as A and the transposed weights W^T [K,N] as B.)
//   grouped_gemm_fp8_sm90_wgrad  dW_g[N,K] (+)= dyT_g[N,rows_g] · xT_g[K,rows_g]^T   (Wgrad)
//       dyT_g: E4M3 [N, rows_g] at dyT + offsets[g] * N, scales [rows_g/128][N] at
//          dyT_scales + offsets[g]/128 * N; xT_g likewise with K. Output FP32 dW [groups][N][K]
//          (an empty group gives dW_g = 0, or leaves it, with accumulate).
// Numerics (spec §4): each 128-long slice of the reduction is accumulated by the tensor cores in
// FP32 and then added to the FP32 result multiplied by its two scales (A's tile scale of the row
// times B's block scale, or under wgrad the two rows' tile scales). Results equal the cuBLASLt
// FP8 grouped calls within the rounding of FP32 accumulation order and of the BF16 output, and a
// CPU emulation of the same quantization (cpu::gemm_fp8_nt_emulated, gemm_fp8.h) within 1e-3 relative.
// Deterministic: the same inputs give the same bits run to run (no atomics, no split-K).
//
// Only for sm_90 devices and shapes with grouped_gemm_fp8_sm90_supported(n, k) (n and k multiples
// of 128); callers fall back to the cuBLASLt calls otherwise and when
// grouped_gemm_fp8_sm90_enabled() is false (FRUGAL_GROUPED_GEMM_FP8=cublas).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

bool grouped_gemm_fp8_sm90_supported(int64_t n, int64_t k);
bool grouped_gemm_fp8_sm90_enabled();

void grouped_gemm_fp8_sm90_nt(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                              int64_t n, int64_t k, const uint8_t* a, const float* a_scales,
                              const uint8_t* b, const float* b_scales, __nv_bfloat16* y,
                              cudaStream_t stream);
void grouped_gemm_fp8_sm90_wgrad(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                                 int64_t n, int64_t k, const uint8_t* dyT,
                                 const float* dyT_scales, const uint8_t* xT,
                                 const float* xT_scales, float* dw, bool accumulate,
                                 cudaStream_t stream);

}  // namespace frugal::cuda
