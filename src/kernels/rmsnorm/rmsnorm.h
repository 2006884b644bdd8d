// RMSNorm over the last dimension:  y[n,d] = x[n,d] * rstd[n] * w[d],
// rstd[n] = 1 / sqrt(mean_d(x^2) + eps). Statistics in the element type (fp32 or fp64).
//
// Backward (with xhat = x * rstd):
//   dx = rstd * (dy*w - xhat * mean_d(dy*w*xhat))     (assigned)
//   dw += sum_n dy * xhat                              (accumulated)
#pragma once

#include <cstdint>

namespace frugal::cpu {

template <class T>
void rmsnorm_fwd(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t d, double eps);
template <class T>
void rmsnorm_bwd_input(T* dx, const T* dy, const T* x, const T* w, const T* rstd, int64_t n,
                       int64_t d);
template <class T>
void rmsnorm_bwd_weight(T* dw, const T* dy, const T* x, const T* rstd, int64_t n, int64_t d);

}  // namespace frugal::cpu
