// CPU reference of the MoE token permutation, un-permutation and weighted combine (permute.h).
#include <algorithm>
#include <vector>

#include "core/error.h"
#include "kernels/moe/permute.h"

namespace frugal::cpu {

void build_expert_permutation(int64_t* expert_offsets, int64_t* sorted_assignment,
                              int64_t* assignment_row, const int64_t* topk_idx, int64_t tokens,
                              int64_t top_k, int64_t n_experts) {
  const int64_t n = tokens * top_k;
  std::fill(expert_offsets, expert_offsets + n_experts + 1, int64_t{0});
  for (int64_t a = 0; a < n; ++a) {
    FRUGAL_CHECK(topk_idx[a] >= 0 && topk_idx[a] < n_experts,
                 "moe permutation: expert index {} out of range [0, {})", topk_idx[a], n_experts);
    ++expert_offsets[topk_idx[a] + 1];
  }
  for (int64_t e = 0; e < n_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  std::vector<int64_t> next(expert_offsets, expert_offsets + n_experts);
  for (int64_t a = 0; a < n; ++a) {  // counting sort, stable in a: tokens ascending per expert
    int64_t p = next[topk_idx[a]]++;
    sorted_assignment[p] = a;
    assignment_row[a] = p;
  }
}

template <class T>
void permute_rows(T* xp, const T* x, const int64_t* sorted_assignment, int64_t tokens,
                  int64_t top_k, int64_t hidden) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < tokens * top_k; ++p) {
    const T* src = x + (sorted_assignment[p] / top_k) * hidden;
    std::copy(src, src + hidden, xp + p * hidden);
  }
}

template <class T>
void unpermute_sum(T* dx, const T* dxp, const int64_t* assignment_row, int64_t tokens,
                   int64_t top_k, int64_t hidden, bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    T* out = dx + t * hidden;
    if (!accumulate) std::fill(out, out + hidden, T(0));
    for (int64_t k = 0; k < top_k; ++k) {
      const T* src = dxp + assignment_row[t * top_k + k] * hidden;
      for (int64_t j = 0; j < hidden; ++j) out[j] += src[j];
    }
  }
}

template <class T>
void combine_fwd(T* y, const T* expert_out, const T* weights, const int64_t* assignment_row,
                 int64_t tokens, int64_t top_k, int64_t hidden, bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    T* out = y + t * hidden;
    if (!accumulate) std::fill(out, out + hidden, T(0));
    for (int64_t k = 0; k < top_k; ++k) {
      const T w = weights[t * top_k + k];
      const T* src = expert_out + assignment_row[t * top_k + k] * hidden;
      for (int64_t j = 0; j < hidden; ++j) out[j] += w * src[j];
    }
  }
}

template <class T>
void combine_bwd(T* d_expert_out, T* dweights, const T* dy, const T* expert_out, const T* weights,
                 const int64_t* assignment_row, int64_t tokens, int64_t top_k, int64_t hidden) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const T* g = dy + t * hidden;
    for (int64_t k = 0; k < top_k; ++k) {
      const int64_t a = t * top_k + k;
      const T w = weights[a];
      const T* out = expert_out + assignment_row[a] * hidden;
      T* d_out = d_expert_out + assignment_row[a] * hidden;
      T dot = 0;
      for (int64_t j = 0; j < hidden; ++j) {
        d_out[j] = w * g[j];
        dot += g[j] * out[j];
      }
      dweights[a] = dot;
    }
  }
}

#define FRUGAL_INSTANTIATE_PERMUTE(T)                                                             \
  template void permute_rows<T>(T*, const T*, const int64_t*, int64_t, int64_t, int64_t);         \
  template void unpermute_sum<T>(T*, const T*, const int64_t*, int64_t, int64_t, int64_t, bool);  \
  template void combine_fwd<T>(T*, const T*, const T*, const int64_t*, int64_t, int64_t, int64_t, \
                               bool);                                                             \
  template void combine_bwd<T>(T*, T*, const T*, const T*, const T*, const int64_t*, int64_t,     \
                               int64_t, int64_t);
FRUGAL_INSTANTIATE_PERMUTE(float)
FRUGAL_INSTANTIATE_PERMUTE(double)
#undef FRUGAL_INSTANTIATE_PERMUTE

}  // namespace frugal::cpu
