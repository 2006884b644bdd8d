// Causal multi-head softmax attention with separate query/key and value head dims (MLA's
// "MHA mode": qk_dim 192, v_dim 128 in V3). CPU reference.
//
// Shapes: q, k [batch, seq, heads, qk_dim]; v [batch, seq, heads, v_dim];
//         out [batch, seq, heads, v_dim]; probs [batch, heads, seq, seq] (saved for backward).
// Forward, per (b, h), query position i and key position j <= i:
//   s_ij = scale * q_i . k_j,  p_ij = softmax_j(s_ij) (max-subtracted, in T),  p_ij = 0 for j > i,
//   out_i = sum_j p_ij v_j.
// Backward (all three gradients assigned, =):
//   dv_j = sum_i p_ij dout_i,  dp_ij = dout_i . v_j,  ds_ij = p_ij (dp_ij - sum_j' p_ij' dp_ij'),
//   dq_i = scale * sum_j ds_ij k_j,  dk_j = scale * sum_i ds_ij q_i.
// Parallel over (batch, heads) pairs with OpenMP; every sum runs in a fixed order (deterministic).
#pragma once

#include <cstdint>

namespace frugal::cpu {

template <class T>
void attention_fwd(T* out, T* probs, const T* q, const T* k, const T* v, int64_t batch, int64_t seq,
                   int64_t heads, int64_t qk_dim, int64_t v_dim, double scale);

template <class T>
void attention_bwd(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q, const T* k,
                   const T* v, int64_t batch, int64_t seq, int64_t heads, int64_t qk_dim,
                   int64_t v_dim, double scale);

}  // namespace frugal::cpu
