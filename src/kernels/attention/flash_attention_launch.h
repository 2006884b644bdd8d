// Internal launchers behind flash_attention_cuda.h (not for callers outside kernels/attention).
// Layouts as there: q, k [batch, seq, heads, qk_dim]; v, out, dout [batch, seq, heads, v_dim];
// lse, delta [batch, heads, seq] (fp32). Every launcher checks its launches; arguments are checked
// by the entry points in flash_attention_cuda.cu.
//
//   simt_*   : the generic path (flash_attention_simt.cu). T = float or __nv_bfloat16, any
//              qk_dim, v_dim in 1..kSimtMaxDim, any alignment. Plain FP32 SIMT arithmetic.
//   sm90_*   : the tensor-core path for bf16 (sm90_flash_fwd_bf16.cu, sm90_flash_bwd_bf16.cu),
//              qk_dim 192, v_dim 128, 16-byte aligned q/k/v/out/dout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda::flash {

constexpr int kSimtMaxDim = 256;
constexpr int kSm90QkDim = 192;
constexpr int kSm90VDim = 128;

struct AttentionShape {
  int64_t batch, seq, heads, qk_dim, v_dim;
  float scale;
};

// out = softmax(scale q k^T, causal) v; lse = log-sum-exp of each row of scale q k^T.
template <class T>
void simt_fwd(T* out, float* lse, const T* q, const T* k, const T* v, const AttentionShape& shape,
              cudaStream_t stream);

// delta[b, h, i] = sum_c dout[b, i, h, c] * out[b, i, h, c] (fp32 accumulation).
template <class T>
void launch_delta(float* delta, const T* dout, const T* out, const AttentionShape& shape,
                  cudaStream_t stream);

// dq, dk, dv (assigned) from delta (launch_delta) and the forward's lse.
template <class T>
void simt_bwd(T* dq, T* dk, T* dv, const T* dout, const float* lse, const float* delta, const T* q,
              const T* k, const T* v, const AttentionShape& shape, cudaStream_t stream);

void sm90_fwd_bf16(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                   const __nv_bfloat16* v, const AttentionShape& shape, cudaStream_t stream);

void sm90_bwd_bf16(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv,
                   const __nv_bfloat16* dout, const float* lse, const float* delta,
                   const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                   const AttentionShape& shape, cudaStream_t stream);

}  // namespace frugal::cuda::flash
