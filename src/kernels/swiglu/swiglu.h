// SwiGLU activation of DeepSeek's FFN (spec §1.1): h = silu(g) * u, elementwise, where
// g = gate_proj(x), u = up_proj(x) and silu(g) = g * sigmoid(g). All arrays hold n elements.
//
// Backward (sig = sigmoid(g)):
//   dg = dh * u * sig * (1 + g * (1 - sig))     (assigned)
//   du = dh * silu(g)                           (assigned)
#pragma once

#include <cstdint>

namespace frugal::cpu {

// h[n] = silu(g[n]) * u[n]
template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t n);
// dg[n], du[n] from dh[n] and the forward inputs g[n], u[n].
template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n);

}  // namespace frugal::cpu
