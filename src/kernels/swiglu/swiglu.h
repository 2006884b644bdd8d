// SwiGLU activation of DeepSeek's FFN (spec §1.1): h = silu(g) * u, elementwise, where
// g = gate_proj(x), u = up_proj(x) and silu(g) = g * sigmoid(g). All arrays hold n elements.
//
// Backward (sig = sigmoid(g)):
//   dg = dh * u * sig * (1 + g * (1 - sig))     (assigned)
//   du = dh * silu(g)                           (assigned)
#pragma once

#include <cstdint>

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_runtime_api.h>  // cudaStream_t
#endif

namespace frugal::cpu {

// h[n] = silu(g[n]) * u[n]
template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t n);
// dg[n], du[n] from dh[n] and the forward inputs g[n], u[n].
template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t n);

}  // namespace frugal::cpu

#ifdef FRUGAL_HAVE_CUDA
namespace frugal::cuda {

// fp32 on device pointers, asynchronous on `stream`; same formulas as frugal::cpu.
void swiglu_fwd(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream);
void swiglu_bwd(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                cudaStream_t stream);

}  // namespace frugal::cuda
#endif
