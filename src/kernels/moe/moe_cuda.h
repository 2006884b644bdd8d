// The MoE layer's routing and token shuffling on the GPU, same rules as the CPU references
// (router.h, balance_loss.h, permute.h), with no host sync except the one copy of expert row
// offsets a layer makes for its grouped GEMMs.
//
// Router: logits [tokens, E] fp32 (the gate GEMM runs in fp32, spec §4.2), bias [E] fp32 or null.
// One thread block (or warp) per token; selection ties go to the lower index, as on the CPU.
// Permutation: assignments a = t*K + k sorted expert-major, tokens ascending within an expert
// (a stable counting sort: per-expert counts, exclusive scan, stable scatter). Each expert's block
// of rows is padded with zero rows to a multiple of `row_align` (1 for BF16/FP32 GEMMs,
// kFp8GroupRowAlign for FP8) so FP8 tiles never straddle two experts:
//   expert_offsets [E+1] (padded), expert_counts [E] (real rows), assignment_row [tokens*K],
//   row_assignment [padded rows] (-1 on padding rows). The padded row count is at most
//   tokens*K + E*(row_align-1): callers size buffers for that bound.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/moe/router.h"

namespace frugal::cuda {

void router_fwd(int32_t* topk_idx, float* topk_weight, float* scores, const float* logits,
                const float* bias, int64_t tokens, const cpu::RouterParams& params,
                cudaStream_t stream);
// dlogits [tokens, E] (assigned) from dweights [tokens, K] and dscores [tokens, E] (may be null).
void router_bwd(float* dlogits, const float* dweights, const float* dscores, const float* scores,
                const int32_t* topk_idx, int64_t tokens, const cpu::RouterParams& params,
                cudaStream_t stream);

// Sequence-wise balance loss: loss[0] (double, written) for `batch` sequences of `seq` tokens;
// the backward adds d(dloss * loss)/d(scores) into dscores (accumulate) or assigns it.
void seq_balance_loss_fwd(double* loss, const float* scores, const int32_t* topk_idx,
                          int64_t batch, int64_t seq, int64_t n_experts, int64_t top_k,
                          double alpha, cudaStream_t stream);
void seq_balance_loss_bwd(float* dscores, const float* scores, const int32_t* topk_idx,
                          int64_t batch, int64_t seq, int64_t n_experts, int64_t top_k,
                          double alpha, double dloss, bool accumulate, cudaStream_t stream);

size_t expert_permutation_workspace_bytes(int64_t tokens, int64_t top_k, int64_t n_experts);
// `load` [E] (may be null) accumulates the real counts (+=): the expert load behind the bias update.
void build_expert_permutation(int64_t* expert_offsets, int64_t* expert_counts, int64_t* load,
                              int32_t* assignment_row, int32_t* row_assignment,
                              const int32_t* topk_idx, int64_t tokens, int64_t top_k,
                              int64_t n_experts, int64_t row_align, void* workspace,
                              cudaStream_t stream);

// T is float or __nv_bfloat16. `padded_rows` = expert_offsets[E] (a bound is fine: rows past the
// last offset are written as zeros too).
//   permute_rows    xp[p, h] = x[row_assignment[p] / K, h], zero on padding rows
//   unpermute_sum   dx[t, h] (+)= sum_k dxp[assignment_row[t*K+k], h]            (k in order)
//   combine_fwd     y[t, h] (+)= sum_k w[t,k] * out[assignment_row[t*K+k], h]    (k in order)
//   combine_bwd     dout[row(t,k), h] = w[t,k] * dy[t,h]; dweights[t,k] = dy[t,:] . out[row(t,k),:]
//                   (padding rows of dout are zeroed)
template <class T>
void permute_rows(T* xp, const T* x, const int32_t* row_assignment, int64_t padded_rows,
                  int64_t top_k, int64_t hidden, cudaStream_t stream);
template <class T>
void unpermute_sum(T* dx, const T* dxp, const int32_t* assignment_row, int64_t tokens,
                   int64_t top_k, int64_t hidden, bool accumulate, cudaStream_t stream);
template <class T>
void combine_fwd(T* y, const T* expert_out, const float* weights, const int32_t* assignment_row,
                 int64_t tokens, int64_t top_k, int64_t hidden, bool accumulate,
                 cudaStream_t stream);
template <class T>
void combine_bwd(T* d_expert_out, float* dweights, const T* dy, const T* expert_out,
                 const float* weights, const int32_t* assignment_row, const int32_t* row_assignment,
                 int64_t padded_rows, int64_t tokens, int64_t top_k, int64_t hidden,
                 cudaStream_t stream);

// The auxiliary-loss-free bias update (spec §2.2), on the device from accumulated loads:
// bias[e] += speed * sign(mean_load - load[e]) with load [E] int64 token counts.
void update_balance_bias(float* bias, const int64_t* load, int64_t n_experts, float speed,
                         cudaStream_t stream);

}  // namespace frugal::cuda
