// Grouped BF16 GEMMs of an MoE layer on Hopper tensor cores (wgmma), one kernel launch per call,
// over DEVICE-side group offsets: no host copy of the offsets, no host synchronization, no
// per-group launches (the cuBLASLt path of gemm_cuda.h makes one call per expert).
//
// Group g (an expert) owns rows [offsets[g], offsets[g+1]) of the permuted token matrix; offsets
// [groups+1] live on the device, are non-decreasing and start at 0. `max_rows` is a host-known
// upper bound of offsets[groups] (the permuted buffer's row count): it only sizes the grid, rows
// at or past offsets[groups] are neither read as group rows nor written. Weights of group g
// start at element g * N * K of `w` (the experts' [N,K] matrices stacked, row-major).
//   grouped_gemm_sm90_nt   y[rows,N]          = x[rows,K] · W_g^T    (Fprop)
//   grouped_gemm_sm90_nn   dx[rows,K]         = dy[rows,N] · W_g     (Dgrad)
//   grouped_gemm_sm90_tn   dW_g[N,K] (+)= dy_g^T · x_g               (Wgrad, rows of group g are
//                          the reduction; an empty group gives dW_g = 0, or leaves it, with
//                          accumulate)
// Inputs BF16, accumulation FP32, outputs BF16 (nt, nn) or FP32 (tn). Results equal the cuBLASLt
// grouped calls within bf16 rounding of the output (the reduction order differs). Deterministic:
// the same inputs give the same bits run to run (no atomics, no split-K across CTAs).
//
// Supported (grouped_gemm_sm90_supported): an sm_90 device, n and k positive multiples of 128 with
// n * k < 2^31. The calls also require groups <= 256, max_rows < 2^31 and 16-byte aligned x, w,
// dy, y, dx, dw (frugal::Error otherwise).
// Only for sm_90 devices and shapes with grouped_gemm_sm90_supported(n, k); callers fall back to
// the cuBLASLt grouped calls otherwise (and when FRUGAL_GROUPED_GEMM=cublas is set, for A/B
// runs: grouped_gemm_sm90_enabled()).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

// True when these kernels can run on the current device (sm_90) for an [N,K] weight.
bool grouped_gemm_sm90_supported(int64_t n, int64_t k);
// False when FRUGAL_GROUPED_GEMM=cublas (read once per process), else true.
bool grouped_gemm_sm90_enabled();

void grouped_gemm_sm90_nt(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                          int64_t n, int64_t k, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          __nv_bfloat16* y, cudaStream_t stream);
void grouped_gemm_sm90_nn(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                          int64_t n, int64_t k, const __nv_bfloat16* dy, const __nv_bfloat16* w,
                          __nv_bfloat16* dx, cudaStream_t stream);
void grouped_gemm_sm90_tn(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                          int64_t n, int64_t k, const __nv_bfloat16* dy, const __nv_bfloat16* x,
                          float* dw, bool accumulate, cudaStream_t stream);

}  // namespace frugal::cuda
