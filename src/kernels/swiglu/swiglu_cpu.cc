// CPU reference of the SwiGLU activation (see swiglu.h).
#include <cmath>

#include "kernels/swiglu/swiglu.h"

namespace frugal::cpu {
namespace {

// sigmoid without overflow for large |g|: exp is only taken of a non-positive argument.
template <class T>
T stable_sigmoid(T g) {
  if (g >= T(0)) return T(1) / (T(1) + std::exp(-g));
  T e = std::exp(g);
  return e / (T(1) + e);
}

}  // namespace

template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) h[i] = g[i] * stable_sigmoid(g[i]) * u[i];
}

template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T sig = stable_sigmoid(g[i]);
    T silu = g[i] * sig;
    dg[i] = dh[i] * u[i] * sig * (T(1) + g[i] * (T(1) - sig));
    du[i] = dh[i] * silu;
  }
}

template void swiglu_fwd<float>(float*, const float*, const float*, int64_t);
template void swiglu_fwd<double>(double*, const double*, const double*, int64_t);
template void swiglu_bwd<float>(float*, float*, const float*, const float*, const float*, int64_t);
template void swiglu_bwd<double>(double*, double*, const double*, const double*, const double*,
                                 int64_t);

}  // namespace frugal::cpu
