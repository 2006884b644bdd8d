// Fused causal flash attention on the GPU for MLA's training ("MHA mode") dims: query/key head dim
// qk_dim (nope + rope = 192 in V3) and a separate value head dim v_dim (128). Same math and
// layouts as cpu::attention_fwd/bwd (kernels/attention/attention.h), without the T×T matrix:
// online softmax in FP32, the log-sum-exp of each row saved for the backward.
//
// Shapes: q, k [batch, seq, heads, qk_dim]; v, out, dout [batch, seq, heads, v_dim];
//         lse [batch, heads, seq] (natural log of sum_j exp(s_ij), s = scale * q.k, fp32).
// Backward: dq, dk, dv assigned; recomputes P from q, k and lse; delta_i = dout_i . out_i.
// T is __nv_bfloat16 (the bf16/fp8 recipes; FP32 accumulation) or float (the fp32 recipe, which
// must match the CPU step: a plain, correct kernel is enough there).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace frugal::cuda {

template <class T>
void flash_attention_fwd(T* out, float* lse, const T* q, const T* k, const T* v, int64_t batch,
                         int64_t seq, int64_t heads, int64_t qk_dim, int64_t v_dim, float scale,
                         cudaStream_t stream);

// Bytes of scratch the backward needs for this shape (dq accumulators, delta, ...).
template <class T>
size_t flash_attention_bwd_workspace_bytes(int64_t batch, int64_t seq, int64_t heads,
                                           int64_t qk_dim, int64_t v_dim);

template <class T>
void flash_attention_bwd(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse,
                         const T* q, const T* k, const T* v, int64_t batch, int64_t seq,
                         int64_t heads, int64_t qk_dim, int64_t v_dim, float scale,
                         void* workspace, cudaStream_t stream);

}  // namespace frugal::cuda
