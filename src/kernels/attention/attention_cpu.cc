// Causal softmax attention, CPU reference (formulas and shapes in attention.h).
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/attention/attention.h"

namespace frugal::cpu {

template <class T>
void attention_fwd(T* out, T* probs, const T* q, const T* k, const T* v, int64_t batch, int64_t seq,
                   int64_t heads, int64_t qk_dim, int64_t v_dim, double scale) {
  const T scale_t = static_cast<T>(scale);
  const int64_t qk_row = heads * qk_dim;  // stride between positions in q, k
  const int64_t v_row = heads * v_dim;    // stride between positions in v, out
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const int64_t b = bh / heads, h = bh % heads;
    const T* q_bh = q + b * seq * qk_row + h * qk_dim;
    const T* k_bh = k + b * seq * qk_row + h * qk_dim;
    const T* v_bh = v + b * seq * v_row + h * v_dim;
    T* out_bh = out + b * seq * v_row + h * v_dim;
    T* p_bh = probs + bh * seq * seq;  // [seq, seq]
    for (int64_t i = 0; i < seq; ++i) {
      const T* qi = q_bh + i * qk_row;
      T* pi = p_bh + i * seq;
      T max_score = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        const T* kj = k_bh + j * qk_row;
        T dot = 0;
        for (int64_t d = 0; d < qk_dim; ++d) dot += qi[d] * kj[d];
        pi[j] = dot * scale_t;
        max_score = std::max(max_score, pi[j]);
      }
      T sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        pi[j] = std::exp(pi[j] - max_score);
        sum += pi[j];
      }
      const T inv_sum = T(1) / sum;
      for (int64_t j = 0; j <= i; ++j) pi[j] *= inv_sum;
      std::fill(pi + i + 1, pi + seq, T(0));  // masked: exactly zero

      T* oi = out_bh + i * v_row;
      std::fill(oi, oi + v_dim, T(0));
      for (int64_t j = 0; j <= i; ++j) {
        const T* vj = v_bh + j * v_row;
        const T p = pi[j];
        for (int64_t d = 0; d < v_dim; ++d) oi[d] += p * vj[d];
      }
    }
  }
}

template <class T>
void attention_bwd(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q, const T* k,
                   const T* v, int64_t batch, int64_t seq, int64_t heads, int64_t qk_dim,
                   int64_t v_dim, double scale) {
  const T scale_t = static_cast<T>(scale);
  const int64_t qk_row = heads * qk_dim;
  const int64_t v_row = heads * v_dim;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const int64_t b = bh / heads, h = bh % heads;
    const int64_t qk_base = b * seq * qk_row + h * qk_dim;
    const int64_t v_base = b * seq * v_row + h * v_dim;
    const T* p_bh = probs + bh * seq * seq;
    // This (b, h) slice of dk and dv belongs to this thread alone: zero it, then accumulate.
    for (int64_t j = 0; j < seq; ++j) {
      std::fill(dk + qk_base + j * qk_row, dk + qk_base + j * qk_row + qk_dim, T(0));
      std::fill(dv + v_base + j * v_row, dv + v_base + j * v_row + v_dim, T(0));
    }
    std::vector<T> dscore(static_cast<size_t>(seq));
    for (int64_t i = 0; i < seq; ++i) {
      const T* pi = p_bh + i * seq;
      const T* douti = dout + v_base + i * v_row;
      const T* qi = q + qk_base + i * qk_row;
      // dp_ij = dout_i . v_j, and the row's sum_j p_ij dp_ij.
      T row_dot = 0;
      for (int64_t j = 0; j <= i; ++j) {
        const T* vj = v + v_base + j * v_row;
        T dot = 0;
        for (int64_t d = 0; d < v_dim; ++d) dot += douti[d] * vj[d];
        dscore[j] = dot;
        row_dot += pi[j] * dot;
      }
      T* dqi = dq + qk_base + i * qk_row;
      std::fill(dqi, dqi + qk_dim, T(0));
      for (int64_t j = 0; j <= i; ++j) {
        const T p = pi[j];
        const T ds = p * (dscore[j] - row_dot) * scale_t;  // gradient of the pre-scale logit
        const T* kj = k + qk_base + j * qk_row;
        T* dkj = dk + qk_base + j * qk_row;
        T* dvj = dv + v_base + j * v_row;
        for (int64_t d = 0; d < qk_dim; ++d) {
          dqi[d] += ds * kj[d];
          dkj[d] += ds * qi[d];
        }
        for (int64_t d = 0; d < v_dim; ++d) dvj[d] += p * douti[d];
      }
    }
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
