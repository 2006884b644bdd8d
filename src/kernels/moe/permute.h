// Token <-> expert reordering of an MoE layer with no token dropping.
//
// An assignment a = t*K + k is "token t goes to its k-th chosen expert topk_idx[a]". The
// permutation orders the tokens*K assignments expert-major (expert 0's first), tokens ascending
// within an expert, so each expert reads one contiguous block of rows:
//   expert_offsets [E+1]      rows [expert_offsets[e], expert_offsets[e+1]) belong to expert e
//   sorted_assignment [N]     assignment held by permuted row p            (N = tokens*K)
//   assignment_row [N]        permuted row of assignment a (the inverse)
// Ops (h = hidden size):
//   permute_rows     xp[p, h]  = x[sorted_assignment[p] / K, h]
//   unpermute_sum    dx[t, h] (+)= sum_k dxp[assignment_row[t*K+k], h]         (k in order)
//   combine_fwd      y[t, h]  (+)= sum_k w[t,k] * out[assignment_row[t*K+k], h]  (k in order)
//   combine_bwd      dout[row(t,k), h] = w[t,k] * dy[t, h];  dw[t,k] = dy[t,:] · out[row(t,k),:]
// (assigned). Every output row is written by one loop iteration: deterministic under OpenMP.
#pragma once

#include <cstdint>

namespace frugal::cpu {

void build_expert_permutation(int64_t* expert_offsets, int64_t* sorted_assignment,
                              int64_t* assignment_row, const int64_t* topk_idx, int64_t tokens,
                              int64_t top_k, int64_t n_experts);

template <class T>
void permute_rows(T* xp, const T* x, const int64_t* sorted_assignment, int64_t tokens,
                  int64_t top_k, int64_t hidden);
template <class T>
void unpermute_sum(T* dx, const T* dxp, const int64_t* assignment_row, int64_t tokens,
                   int64_t top_k, int64_t hidden, bool accumulate);
template <class T>
void combine_fwd(T* y, const T* expert_out, const T* weights, const int64_t* assignment_row,
                 int64_t tokens, int64_t top_k, int64_t hidden, bool accumulate);
template <class T>
void combine_bwd(T* d_expert_out, T* dweights, const T* dy, const T* expert_out, const T* weights,
                 const int64_t* assignment_row, int64_t tokens, int64_t top_k, int64_t hidden);

}  // namespace frugal::cpu
