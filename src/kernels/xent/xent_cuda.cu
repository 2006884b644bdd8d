// CUDA fused softmax cross-entropy (interface in xent_cuda.h, rules in xent.h):
//   logits [n, vocab] T (float or bf16), targets [n] int32 (< 0: ignored)
//   losses [n] fp32 = logsumexp(row) - row[target];  loss_sum[0] (double) and valid_count[0]
//   dlogits [n, vocab] T = (softmax(row) - onehot(target)) * (*scale), 0 rows for ignored targets
//
// One 512-thread block per row (any vocab; V3's 129280 is 32 steps of 8 bf16 per thread). Each
// thread keeps an online (max m, sum s of exp(x - m)) over its elements, rescaling s once per
// 16-byte pack; the block combines the pairs in a fixed tree, so the result does not depend on
// scheduling. The backward recomputes the statistics, then a second sweep (the row is in L2 by
// then) writes the gradient; each thread reads an element before writing it, so dlogits may alias
// logits. The batch sum is a separate one-block kernel over losses[] in a fixed order (double).
// A target >= vocab (a caller bug) gives a NaN loss rather than a read out of bounds.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/xent/xent_cuda.h"

namespace frugal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kRowThreads = 512;
constexpr int kRowWarps = kRowThreads / kWarpSize;
constexpr int kSumThreads = 1024;

using detail::from_float;
using detail::load_pack;
using detail::store_pack;
using detail::to_float;

// Running max and sum of exp(x - max); an empty state is (-inf, 0).
struct SoftmaxStat {
  float max;
  float sum;
};

__device__ __forceinline__ SoftmaxStat merge(SoftmaxStat a, SoftmaxStat b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return SoftmaxStat{m, 0.0f};
  // Symmetric in a and b (float + commutes), so a butterfly leaves the same bits on every lane.
  return SoftmaxStat{m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

template <int N>
__device__ __forceinline__ void add_pack(SoftmaxStat& st, const float (&v)[N]) {
  float pack_max = v[0];
#pragma unroll
  for (int i = 1; i < N; ++i) pack_max = fmaxf(pack_max, v[i]);
  if (pack_max > st.max) {
    st.sum *= expf(st.max - pack_max);  // exp(-inf) = 0 on the first pack
    st.max = pack_max;
  }
  if (st.max == -INFINITY) return;  // only -inf so far: contributes nothing
#pragma unroll
  for (int i = 0; i < N; ++i) st.sum += expf(v[i] - st.max);
}

// logsumexp of one row, returned to every thread of the block. N elements per access (1 on the
// unaligned path).
template <class T, int N>
__device__ float row_logsumexp(const T* row, int64_t vocab) {
  __shared__ SoftmaxStat warp_stats[kRowWarps];
  __shared__ float result;
  SoftmaxStat st{-INFINITY, 0.0f};
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * N; j < vocab; j += kRowThreads * N) {
    float v[N];
    load_pack<T, N>(v, row + j);
    add_pack<N>(st, v);
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const SoftmaxStat other{__shfl_xor_sync(kFullMask, st.max, offset),
                            __shfl_xor_sync(kFullMask, st.sum, offset)};
    st = merge(st, other);
  }
  if (threadIdx.x % kWarpSize == 0) warp_stats[threadIdx.x / kWarpSize] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    SoftmaxStat total = warp_stats[0];
    for (int w = 1; w < kRowWarps; ++w) total = merge(total, warp_stats[w]);
    result = total.max + logf(total.sum);
  }
  __syncthreads();
  return result;
}

template <class T, int N>
__global__ void __launch_bounds__(kRowThreads)
    xent_fwd_kernel(float* __restrict__ losses, const T* __restrict__ logits,
                    const int32_t* __restrict__ targets, int64_t vocab) {
  const int64_t r = blockIdx.x;
  const int32_t target = targets[r];
  if (target < 0) {  // uniform per block
    if (threadIdx.x == 0) losses[r] = 0.0f;
    return;
  }
  const T* row = logits + r * vocab;
  const float lse = row_logsumexp<T, N>(row, vocab);
  if (threadIdx.x == 0) losses[r] = target < vocab ? lse - to_float(row[target]) : NAN;
}

// No __restrict__ on logits / dlogits: they may be the same buffer.
template <class T, int N>
__global__ void __launch_bounds__(kRowThreads)
    xent_bwd_kernel(T* dlogits, const T* logits, const int32_t* __restrict__ targets,
                    int64_t vocab, const float* __restrict__ scale_ptr) {
  const int64_t r = blockIdx.x;
  const int32_t target = targets[r];
  T* drow = dlogits + r * vocab;
  if (target < 0) {
    for (int64_t j = threadIdx.x; j < vocab; j += kRowThreads) drow[j] = from_float<T>(0.0f);
    return;
  }
  const T* row = logits + r * vocab;
  const float lse = row_logsumexp<T, N>(row, vocab);
  const float scale = *scale_ptr;
  for (int64_t j = static_cast<int64_t>(threadIdx.x) * N; j < vocab; j += kRowThreads * N) {
    float v[N];
    load_pack<T, N>(v, row + j);
    float out[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float g = expf(v[i] - lse) * scale;
      if (j + i == target) g -= scale;
      out[i] = g;
    }
    store_pack<T, N>(drow + j, out);
  }
}

__global__ void __launch_bounds__(kSumThreads)
    xent_sum_kernel(double* __restrict__ loss_sum, int64_t* __restrict__ valid_count,
                    const float* __restrict__ losses, const int32_t* __restrict__ targets,
                    int64_t n) {
  __shared__ double warp_sums[kSumThreads / kWarpSize];
  __shared__ long long warp_counts[kSumThreads / kWarpSize];
  double sum = 0.0;
  long long count = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) {
    if (targets[i] < 0) continue;
    sum += static_cast<double>(losses[i]);
    ++count;
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(kFullMask, sum, offset);
    count += __shfl_xor_sync(kFullMask, count, offset);
  }
  if (threadIdx.x % kWarpSize == 0) {
    warp_sums[threadIdx.x / kWarpSize] = sum;
    warp_counts[threadIdx.x / kWarpSize] = count;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    long long total_count = 0;
    for (int w = 0; w < kSumThreads / kWarpSize; ++w) {
      total += warp_sums[w];
      total_count += warp_counts[w];
    }
    *loss_sum = total;
    *valid_count = total_count;
  }
}

template <class T>
constexpr int kVector = 16 / static_cast<int>(sizeof(T));

template <class T>
bool rows_vectorizable(int64_t vocab, const void* a, const void* b) {
  return (vocab * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
}

void check_xent_args(int64_t n, int64_t vocab, const char* message) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && n < INT_MAX && vocab >= 1 && vocab < INT_MAX, message);
}

}  // namespace

template <class T>
void xent_fwd(float* losses, double* loss_sum, int64_t* valid_count, const T* logits,
              const int32_t* targets, int64_t n, int64_t vocab, cudaStream_t stream) {
  check_xent_args(n, vocab, "xent_fwd: bad sizes");
  FRUGAL_CUDA_REQUIRE(loss_sum != nullptr && valid_count != nullptr, "xent_fwd: null sum or count");
  if (n > 0) {
    FRUGAL_CUDA_REQUIRE(losses != nullptr && logits != nullptr && targets != nullptr,
                        "xent_fwd: null tensor");
    const unsigned rows = static_cast<unsigned>(n);
    if (rows_vectorizable<T>(vocab, logits, logits))
      xent_fwd_kernel<T, kVector<T>><<<rows, kRowThreads, 0, stream>>>(losses, logits, targets,
                                                                       vocab);
    else
      xent_fwd_kernel<T, 1><<<rows, kRowThreads, 0, stream>>>(losses, logits, targets, vocab);
    FRUGAL_CUDA_CHECK_LAUNCH();
  }
  xent_sum_kernel<<<1, kSumThreads, 0, stream>>>(loss_sum, valid_count, losses, targets, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T>
void xent_bwd(T* dlogits, const T* logits, const int32_t* targets, int64_t n, int64_t vocab,
              const float* scale, cudaStream_t stream) {
  check_xent_args(n, vocab, "xent_bwd: bad sizes");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(dlogits != nullptr && logits != nullptr && targets != nullptr &&
                          scale != nullptr,
                      "xent_bwd: null tensor");
  const unsigned rows = static_cast<unsigned>(n);
  if (rows_vectorizable<T>(vocab, logits, dlogits))
    xent_bwd_kernel<T, kVector<T>><<<rows, kRowThreads, 0, stream>>>(dlogits, logits, targets,
                                                                     vocab, scale);
  else
    xent_bwd_kernel<T, 1><<<rows, kRowThreads, 0, stream>>>(dlogits, logits, targets, vocab,
                                                            scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template void xent_fwd<float>(float*, double*, int64_t*, const float*, const int32_t*, int64_t,
                              int64_t, cudaStream_t);
template void xent_fwd<__nv_bfloat16>(float*, double*, int64_t*, const __nv_bfloat16*,
                                      const int32_t*, int64_t, int64_t, cudaStream_t);
template void xent_bwd<float>(float*, const float*, const int32_t*, int64_t, int64_t, const float*,
                              cudaStream_t);
template void xent_bwd<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, const int32_t*, int64_t,
                                      int64_t, const float*, cudaStream_t);

}  // namespace frugal::cuda
