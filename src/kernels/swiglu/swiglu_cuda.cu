// CUDA SwiGLU, fp32, elementwise over n values (see swiglu.h):
//   h = silu(g) * u,   dg = dh * u * sig * (1 + g * (1 - sig)),   du = dh * silu(g)
// Grid-stride loop over groups of 4 elements: one float4 per array when every pointer is 16-byte
// aligned, element by element otherwise and in the last partial group. The sigmoid is the CPU's
// overflow-free form with expf (not the fast __expf), so results agree to a few ulp.
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/swiglu/swiglu.h"

namespace frugal::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

__device__ inline float stable_sigmoid(float g) {
  if (g >= 0.0f) return 1.0f / (1.0f + expf(-g));
  const float e = expf(g);
  return e / (1.0f + e);
}

__device__ inline float swiglu_value(float g, float u) { return g * stable_sigmoid(g) * u; }

__device__ inline void swiglu_grad(float dh, float g, float u, float& dg, float& du) {
  const float sig = stable_sigmoid(g);
  dg = dh * u * sig * (1.0f + g * (1.0f - sig));
  du = dh * (g * sig);
}

template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    swiglu_fwd_kernel(float* __restrict__ h, const float* __restrict__ g,
                      const float* __restrict__ u, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * 4;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * 4; i < n;
       i += stride) {
    if (kVector && i + 4 <= n) {
      const float4 g4 = *reinterpret_cast<const float4*>(g + i);
      const float4 u4 = *reinterpret_cast<const float4*>(u + i);
      *reinterpret_cast<float4*>(h + i) =
          make_float4(swiglu_value(g4.x, u4.x), swiglu_value(g4.y, u4.y),
                      swiglu_value(g4.z, u4.z), swiglu_value(g4.w, u4.w));
    } else {
      for (int64_t j = i; j < i + 4 && j < n; ++j) h[j] = swiglu_value(g[j], u[j]);
    }
  }
}

template <bool kVector>
__global__ void __launch_bounds__(kThreads)
    swiglu_bwd_kernel(float* __restrict__ dg, float* __restrict__ du, const float* __restrict__ dh,
                      const float* __restrict__ g, const float* __restrict__ u, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * 4;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * 4; i < n;
       i += stride) {
    if (kVector && i + 4 <= n) {
      const float4 dh4 = *reinterpret_cast<const float4*>(dh + i);
      const float4 g4 = *reinterpret_cast<const float4*>(g + i);
      const float4 u4 = *reinterpret_cast<const float4*>(u + i);
      float4 dg4, du4;
      swiglu_grad(dh4.x, g4.x, u4.x, dg4.x, du4.x);
      swiglu_grad(dh4.y, g4.y, u4.y, dg4.y, du4.y);
      swiglu_grad(dh4.z, g4.z, u4.z, dg4.z, du4.z);
      swiglu_grad(dh4.w, g4.w, u4.w, dg4.w, du4.w);
      *reinterpret_cast<float4*>(dg + i) = dg4;
      *reinterpret_cast<float4*>(du + i) = du4;
    } else {
      for (int64_t j = i; j < i + 4 && j < n; ++j) swiglu_grad(dh[j], g[j], u[j], dg[j], du[j]);
    }
  }
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads * 4 - 1) / (kThreads * 4);
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

void swiglu_fwd(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::swiglu_fwd: negative size");
  if (n == 0) return;
  if (aligned16(h) && aligned16(g) && aligned16(u))
    swiglu_fwd_kernel<true><<<grid_for(n), kThreads, 0, stream>>>(h, g, u, n);
  else
    swiglu_fwd_kernel<false><<<grid_for(n), kThreads, 0, stream>>>(h, g, u, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void swiglu_bwd(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::swiglu_bwd: negative size");
  if (n == 0) return;
  if (aligned16(dg) && aligned16(du) && aligned16(dh) && aligned16(g) && aligned16(u))
    swiglu_bwd_kernel<true><<<grid_for(n), kThreads, 0, stream>>>(dg, du, dh, g, u, n);
  else
    swiglu_bwd_kernel<false><<<grid_for(n), kThreads, 0, stream>>>(dg, du, dh, g, u, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
