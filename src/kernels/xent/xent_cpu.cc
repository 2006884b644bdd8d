#include <algorithm>
#include <cmath>

#include "kernels/xent/xent.h"

namespace frugal::cpu {
namespace {

template <class T>
T row_logsumexp(const T* row, int64_t vocab) {
  T mx = row[0];
  for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, row[j]);
  T sum = 0;
  for (int64_t j = 0; j < vocab; ++j) sum += std::exp(row[j] - mx);
  return mx + std::log(sum);
}

}  // namespace

template <class T>
double xent_fwd(T* losses, const T* logits, const int32_t* targets, int64_t n, int64_t vocab,
                int64_t* valid_count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* row = logits + i * vocab;
    losses[i] = targets[i] < 0 ? T(0) : row_logsumexp(row, vocab) - row[targets[i]];
  }
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] < 0) continue;
    total += static_cast<double>(losses[i]);
    ++count;
  }
  *valid_count = count;
  return total;
}

template <class T>
void xent_bwd(T* dlogits, const T* logits, const int32_t* targets, int64_t n, int64_t vocab,
              double scale) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* row = logits + i * vocab;
    T* drow = dlogits + i * vocab;
    if (targets[i] < 0) {
      std::fill(drow, drow + vocab, T(0));
      continue;
    }
    T lse = row_logsumexp(row, vocab);
    for (int64_t j = 0; j < vocab; ++j) drow[j] = std::exp(row[j] - lse) * T(scale);
    drow[targets[i]] -= T(scale);
  }
}

template double xent_fwd<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t*);
template double xent_fwd<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t*);
template void xent_bwd<float>(float*, const float*, const int32_t*, int64_t, int64_t, double);
template void xent_bwd<double>(double*, const double*, const int32_t*, int64_t, int64_t, double);

}  // namespace frugal::cpu
