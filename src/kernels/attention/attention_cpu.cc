// Causal softmax attention, CPU reference (formulas and shapes in attention.h). Each
// (batch, head) slice runs as BLAS products on strided views of q/k/v; the masked upper triangle
// of the probabilities is exactly zero, so it drops out of every backward product.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/attention/attention.h"
#include "kernels/gemm/gemm.h"

namespace frugal::cpu {

template <class T>
void attention_fwd(T* out, T* probs, const T* q, const T* k, const T* v, int64_t batch, int64_t seq,
                   int64_t heads, int64_t qk_dim, int64_t v_dim, double scale) {
  const int64_t qk_row = heads * qk_dim;  // stride between positions in q, k
  const int64_t v_row = heads * v_dim;    // stride between positions in v, out
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const int64_t b = bh / heads, h = bh % heads;
    const T* q_bh = q + b * seq * qk_row + h * qk_dim;
    const T* k_bh = k + b * seq * qk_row + h * qk_dim;
    const T* v_bh = v + b * seq * v_row + h * v_dim;
    T* out_bh = out + b * seq * v_row + h * v_dim;
    T* p_bh = probs + bh * seq * seq;  // [seq, seq]
    // scores = scale * q k^T   [seq, seq]
    gemm_strided(false, true, seq, seq, qk_dim, static_cast<T>(scale), q_bh, qk_row, k_bh, qk_row,
                 T(0), p_bh, seq);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < seq; ++i) {  // causal softmax per row
      T* pi = p_bh + i * seq;
      T max_score = *std::max_element(pi, pi + i + 1);
      T sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        pi[j] = std::exp(pi[j] - max_score);
        sum += pi[j];
      }
      const T inv_sum = T(1) / sum;
      for (int64_t j = 0; j <= i; ++j) pi[j] *= inv_sum;
      std::fill(pi + i + 1, pi + seq, T(0));  // masked: exactly zero
    }
    // out = p v   [seq, v_dim]
    gemm_strided(false, false, seq, v_dim, seq, T(1), p_bh, seq, v_bh, v_row, T(0), out_bh, v_row);
  }
}

template <class T>
void attention_bwd(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q, const T* k,
                   const T* v, int64_t batch, int64_t seq, int64_t heads, int64_t qk_dim,
                   int64_t v_dim, double scale) {
  const int64_t qk_row = heads * qk_dim;
  const int64_t v_row = heads * v_dim;
  std::vector<T> dscore(static_cast<size_t>(seq * seq));  // [seq, seq]
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const int64_t b = bh / heads, h = bh % heads;
    const int64_t qk_base = b * seq * qk_row + h * qk_dim;
    const int64_t v_base = b * seq * v_row + h * v_dim;
    const T* p_bh = probs + bh * seq * seq;
    // dv = p^T dout   [seq, v_dim]
    gemm_strided(true, false, seq, v_dim, seq, T(1), p_bh, seq, dout + v_base, v_row, T(0),
                 dv + v_base, v_row);
    // dp = dout v^T   [seq, seq]
    gemm_strided(false, true, seq, seq, v_dim, T(1), dout + v_base, v_row, v + v_base, v_row, T(0),
                 dscore.data(), seq);
    // d(pre-scale logit) = scale * p * (dp - sum_j p dp)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < seq; ++i) {
      const T* pi = p_bh + i * seq;
      T* di = dscore.data() + i * seq;
      T row_dot = 0;
      for (int64_t j = 0; j <= i; ++j) row_dot += pi[j] * di[j];
      for (int64_t j = 0; j <= i; ++j) di[j] = pi[j] * (di[j] - row_dot) * static_cast<T>(scale);
      std::fill(di + i + 1, di + seq, T(0));
    }
    // dq = ds k, dk = ds^T q   [seq, qk_dim]
    gemm_strided(false, false, seq, qk_dim, seq, T(1), dscore.data(), seq, k + qk_base, qk_row,
                 T(0), dq + qk_base, qk_row);
    gemm_strided(true, false, seq, qk_dim, seq, T(1), dscore.data(), seq, q + qk_base, qk_row,
                 T(0), dk + qk_base, qk_row);
  }
}

#define INSTANTIATE(T)                                                                            \
  template void attention_fwd<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                 int64_t, int64_t, double);                                       \
  template void attention_bwd<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,    \
                                 int64_t, int64_t, int64_t, int64_t, int64_t, double);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace frugal::cpu
