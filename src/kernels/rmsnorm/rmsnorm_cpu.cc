#include <cmath>

#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal::cpu {

template <class T>
void rmsnorm_fwd(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t d, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    T sum_sq = 0;
    for (int64_t j = 0; j < d; ++j) sum_sq += xi[j] * xi[j];
    T r = T(1) / std::sqrt(sum_sq / T(d) + T(eps));
    rstd[i] = r;
    T* yi = y + i * d;
    for (int64_t j = 0; j < d; ++j) yi[j] = xi[j] * r * w[j];
  }
}

template <class T>
void rmsnorm_bwd_input(T* dx, const T* dy, const T* x, const T* w, const T* rstd, int64_t n,
                       int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    const T* dyi = dy + i * d;
    T r = rstd[i];
    T dot = 0;  // sum_j dy*w*xhat
    for (int64_t j = 0; j < d; ++j) dot += dyi[j] * w[j] * xi[j] * r;
    T mean_dot = dot / T(d);
    T* dxi = dx + i * d;
    for (int64_t j = 0; j < d; ++j) dxi[j] = r * (dyi[j] * w[j] - xi[j] * r * mean_dot);
  }
}

template <class T>
void rmsnorm_bwd_weight(T* dw, const T* dy, const T* x, const T* rstd, int64_t n, int64_t d) {
  // Column sums in row order: deterministic, and rows are few next to d in our uses.
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    const T* dyi = dy + i * d;
    T r = rstd[i];
    for (int64_t j = 0; j < d; ++j) dw[j] += dyi[j] * xi[j] * r;
  }
}

template <class T>
void residual_rmsnorm_fwd(T* h, T* y, T* rstd, const T* x, const T* branch, const T* w, int64_t n,
                          int64_t d, double eps) {
  for (int64_t i = 0; i < n * d; ++i) h[i] = x[i] + branch[i];
  rmsnorm_fwd(y, rstd, h, w, n, d, eps);
}

template <class T>
void rmsnorm_bwd_input_add(T* dx, const T* dy, const T* x, const T* w, const T* rstd,
                           const T* skip, int64_t n, int64_t d) {
  rmsnorm_bwd_input(dx, dy, x, w, rstd, n, d);
  for (int64_t i = 0; i < n * d; ++i) dx[i] = skip[i] + dx[i];
}

#define INSTANTIATE(T)                                                                         \
  template void rmsnorm_fwd<T>(T*, T*, const T*, const T*, int64_t, int64_t, double);         \
  template void rmsnorm_bwd_input<T>(T*, const T*, const T*, const T*, const T*, int64_t,     \
                                     int64_t);                                                 \
  template void rmsnorm_bwd_weight<T>(T*, const T*, const T*, const T*, int64_t, int64_t);      \
  template void residual_rmsnorm_fwd<T>(T*, T*, T*, const T*, const T*, const T*, int64_t,      \
                                        int64_t, double);                                       \
  template void rmsnorm_bwd_input_add<T>(T*, const T*, const T*, const T*, const T*, const T*,  \
                                         int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace frugal::cpu
