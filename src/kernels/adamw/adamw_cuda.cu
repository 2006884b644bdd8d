// CUDA optimizer step (see adamw_cuda.h): fused AdamW over one tensor, the global gradient norm with
// clipping and the non-finite check.
//
// adamw_update: grid-stride loop over chunks of 8 elements. The element update is the CPU
// reference's (train/adamw.cc) operation for operation, in double with explicit round-to-nearest
// intrinsics (no fused multiply-adds, which the host reference does not use either):
//   g = grad * clip;  m = beta1*m + (1-beta1)*g;  v = beta2*v + ((1-beta2)*g)*g   (then stored as M)
//   m_hat = m / (1-beta1^t);  v_hat = v / (1-beta2^t)      (from the stored, rounded m and v)
//   w = (w - (lr*wd)*w) - (lr*m_hat) / (sqrt(v_hat) + eps)                         (stored as fp32)
// The bias corrections are computed on the host with std::pow in double, as the CPU AdamW does. So
// with M = float the results equal the CPU AdamW's bit for bit (given the same float inputs); with
// M = bf16 each moment is rounded once from double to bf16 (nearest even). A clip scale of exactly 0
// (what grad_norm_and_clip writes when the norm is not finite) is a skipped step, as on the CPU:
// nothing is written. A null clip_scale means 1.
//
// grad_norm_and_clip: pass 1 cuts every tensor into chunks of kNormChunk elements; one block per
// chunk sums the squares in double (fixed per-thread order, fixed tree) into its own slot of the
// workspace. The tensor table travels in the kernel parameters, kNormBatch tensors per launch, so
// nothing is copied from the host. Pass 2, one block, adds the partials in a fixed order and writes
// norm, clip scale and the non-finite flag. No atomics: the same bits on every run.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/adamw/adamw_cuda.h"
#include "kernels/cast/vector_access.cuh"

namespace frugal::cuda {
namespace {

using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;

constexpr int kThreads = 256;

struct AdamWConstants {
  double beta1, one_minus_beta1, beta2, one_minus_beta2;
  double bias_correction1, bias_correction2;
  double lr, decay, eps;  // decay = lr * weight_decay
};

// The moment as stored in M, returned as the (exact) fp32 value of the stored M.
template <class M>
__device__ __forceinline__ float round_moment(double value);
template <>
__device__ __forceinline__ float round_moment<float>(double value) {
  return __double2float_rn(value);
}
template <>
__device__ __forceinline__ float round_moment<__nv_bfloat16>(double value) {
  return __bfloat162float(__double2bfloat16(value));  // one rounding (cvt.rn.bf16.f64)
}

// kVector: w, m, v, grad (and weight_bf16) 16-byte aligned.
template <class M, bool kVector>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ w, M* __restrict__ m, M* __restrict__ v,
                 const float* __restrict__ grad, const float* __restrict__ clip_scale,
                 AdamWConstants c, int64_t n, __nv_bfloat16* __restrict__ weight_bf16) {
  const float clip = clip_scale != nullptr ? *clip_scale : 1.0f;
  if (clip == 0.0f) return;  // a skipped step (non-finite gradient norm)
  const double clip_d = clip;
  const int64_t chunks = ceil_div(n, kChunk);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < chunks;
       i += stride) {
    const int64_t offset = i * kChunk;
    const int64_t valid = detail::min64(kChunk, n - offset);
    float wv[kChunk], mv[kChunk], vv[kChunk], gv[kChunk];
    detail::load_chunk<kVector>(wv, w + offset, valid);
    detail::load_chunk<kVector>(mv, m + offset, valid);
    detail::load_chunk<kVector>(vv, v + offset, valid);
    detail::load_chunk<kVector>(gv, grad + offset, valid);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      const double g = __dmul_rn(static_cast<double>(gv[j]), clip_d);
      mv[j] = round_moment<M>(__dadd_rn(__dmul_rn(c.beta1, mv[j]), __dmul_rn(c.one_minus_beta1, g)));
      vv[j] = round_moment<M>(
          __dadd_rn(__dmul_rn(c.beta2, vv[j]), __dmul_rn(__dmul_rn(c.one_minus_beta2, g), g)));
      const double m_hat = __ddiv_rn(static_cast<double>(mv[j]), c.bias_correction1);
      const double v_hat = __ddiv_rn(static_cast<double>(vv[j]), c.bias_correction2);
      const double p = wv[j];
      const double step = __ddiv_rn(__dmul_rn(c.lr, m_hat), __dadd_rn(__dsqrt_rn(v_hat), c.eps));
      wv[j] = __double2float_rn(__dsub_rn(__dsub_rn(p, __dmul_rn(c.decay, p)), step));
    }
    detail::store_chunk<kVector>(w + offset, wv, valid);
    detail::store_chunk<kVector>(m + offset, mv, valid);
    detail::store_chunk<kVector>(v + offset, vv, valid);
    if (weight_bf16 != nullptr) detail::store_chunk<kVector>(weight_bf16 + offset, wv, valid);
  }
}

// ---- gradient norm -------------------------------------------------------------------------------

constexpr int64_t kNormChunk = int64_t{1} << 15;  // elements per pass-1 block
constexpr int kNormBatch = 128;                    // tensors per pass-1 launch (kernel parameters)
constexpr int kFinishThreads = 1024;

struct NormBatch {
  const float* data[kNormBatch];
  int64_t count[kNormBatch];
  int64_t first_block[kNormBatch + 1];  // block range of tensor j: [first_block[j], first_block[j+1])
  int tensors;
};

// Sum over the block (blockDim.x a multiple of 32), returned to thread 0. Fixed order.
__device__ double block_sum_double(double value) {
  __shared__ double warp_sums[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0)
    for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) total += warp_sums[i];
  return total;
}

__global__ void __launch_bounds__(kThreads)
    grad_norm_partial_kernel(double* __restrict__ partials, NormBatch batch) {
  const int64_t block = blockIdx.x;
  int j = 0;
  while (j + 1 < batch.tensors && batch.first_block[j + 1] <= block) ++j;
  const float* data = batch.data[j];
  const int64_t begin = (block - batch.first_block[j]) * kNormChunk;
  const int64_t count = detail::min64(kNormChunk, batch.count[j] - begin);
  const bool vector = reinterpret_cast<uintptr_t>(data) % 16 == 0;
  double sum = 0.0;
  for (int64_t c = threadIdx.x; c * kChunk < count; c += kThreads) {
    float x[kChunk];
    const int64_t valid = count - c * kChunk;
    if (vector)
      detail::load_chunk<true>(x, data + begin + c * kChunk, valid);
    else
      detail::load_chunk<false>(x, data + begin + c * kChunk, valid);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  }
  const double total = block_sum_double(sum);
  if (threadIdx.x == 0) partials[block] = total;
}

__global__ void __launch_bounds__(kFinishThreads)
    grad_norm_finish_kernel(float* __restrict__ norm, float* __restrict__ clip_scale,
                            int32_t* __restrict__ nonfinite, const double* __restrict__ partials,
                            int64_t count, float max_norm) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kFinishThreads) sum += partials[i];
  const double total = block_sum_double(sum);
  if (threadIdx.x != 0) return;
  const double root = sqrt(total);
  const bool finite = isfinite(root);
  norm[0] = static_cast<float>(root);
  nonfinite[0] = finite ? 0 : 1;
  double scale = 1.0;
  if (!finite)
    scale = 0.0;
  else if (max_norm > 0.0f)
    scale = fmin(1.0, static_cast<double>(max_norm) / (root + 1e-6));
  clip_scale[0] = static_cast<float>(scale);
}

int64_t norm_blocks(int64_t count) { return count > 0 ? ceil_div(count, kNormChunk) : 0; }

}  // namespace

template <class M>
void adamw_update(float* w, M* m, M* v, const float* grad, const float* clip_scale,
                  const AdamWStep& step, int64_t n, void* weight_bf16, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::adamw_update: negative size");
  FRUGAL_CUDA_REQUIRE(step.step >= 1, "cuda::adamw_update: step is 1-based");
  FRUGAL_CUDA_REQUIRE(step.beta1 >= 0.0f && step.beta1 < 1.0f && step.beta2 >= 0.0f &&
                          step.beta2 < 1.0f && step.eps > 0.0f,
                      "cuda::adamw_update: needs beta1, beta2 in [0, 1) and eps > 0");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(w != nullptr && m != nullptr && v != nullptr && grad != nullptr,
                      "cuda::adamw_update: null pointer");
  AdamWConstants c{};
  c.beta1 = step.beta1;
  c.one_minus_beta1 = 1.0 - c.beta1;
  c.beta2 = step.beta2;
  c.one_minus_beta2 = 1.0 - c.beta2;
  c.bias_correction1 = 1.0 - std::pow(c.beta1, static_cast<double>(step.step));
  c.bias_correction2 = 1.0 - std::pow(c.beta2, static_cast<double>(step.step));
  c.lr = step.lr;
  c.decay = c.lr * static_cast<double>(step.weight_decay);
  c.eps = step.eps;
  auto* w_bf16 = static_cast<__nv_bfloat16*>(weight_bf16);
  const unsigned grid = detail::grid_stride_blocks(ceil_div(n, kChunk), kThreads);
  const bool vector = aligned_to(w, 16) && aligned_to(m, 16) && aligned_to(v, 16) &&
                      aligned_to(grad, 16) && (w_bf16 == nullptr || aligned_to(w_bf16, 16));
  if (vector)
    adamw_kernel<M, true><<<grid, kThreads, 0, stream>>>(w, m, v, grad, clip_scale, c, n, w_bf16);
  else
    adamw_kernel<M, false><<<grid, kThreads, 0, stream>>>(w, m, v, grad, clip_scale, c, n, w_bf16);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

size_t grad_norm_workspace_bytes(const GradTensor* tensors, int64_t count) {
  int64_t blocks = 0;
  for (int64_t i = 0; i < count; ++i) blocks += norm_blocks(tensors[i].count);
  return static_cast<size_t>(blocks > 0 ? blocks : 1) * sizeof(double);
}

void grad_norm_and_clip(float* norm, float* clip_scale, int32_t* nonfinite,
                        const GradTensor* tensors, int64_t count, float max_norm, void* workspace,
                        cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(count >= 0 && (count == 0 || tensors != nullptr),
                      "cuda::grad_norm_and_clip: bad tensor list");
  FRUGAL_CUDA_REQUIRE(norm != nullptr && clip_scale != nullptr && nonfinite != nullptr,
                      "cuda::grad_norm_and_clip: null output");
  FRUGAL_CUDA_REQUIRE(workspace != nullptr && aligned_to(workspace, sizeof(double)),
                      "cuda::grad_norm_and_clip: needs an 8-byte aligned workspace");
  auto* partials = static_cast<double*>(workspace);
  int64_t partial_base = 0;
  for (int64_t first = 0; first < count; first += kNormBatch) {
    NormBatch batch{};
    batch.tensors = static_cast<int>(detail::min64(kNormBatch, count - first));
    int64_t blocks = 0;
    for (int j = 0; j < batch.tensors; ++j) {
      const GradTensor& tensor = tensors[first + j];
      FRUGAL_CUDA_REQUIRE(tensor.count >= 0 && (tensor.count == 0 || tensor.data != nullptr),
                          "cuda::grad_norm_and_clip: a tensor has a negative size or no data");
      batch.data[j] = tensor.data;
      batch.count[j] = tensor.count;
      batch.first_block[j] = blocks;
      blocks += norm_blocks(tensor.count);
    }
    batch.first_block[batch.tensors] = blocks;
    if (blocks == 0) continue;
    FRUGAL_CUDA_REQUIRE(blocks <= 0x7FFFFFFF, "cuda::grad_norm_and_clip: too many chunks");
    grad_norm_partial_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        partials + partial_base, batch);
    FRUGAL_CUDA_CHECK_LAUNCH();
    partial_base += blocks;
  }
  grad_norm_finish_kernel<<<1, kFinishThreads, 0, stream>>>(norm, clip_scale, nonfinite, partials,
                                                            partial_base, max_norm);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template void adamw_update<float>(float*, float*, float*, const float*, const float*,
                                  const AdamWStep&, int64_t, void*, cudaStream_t);
template void adamw_update<__nv_bfloat16>(float*, __nv_bfloat16*, __nv_bfloat16*, const float*,
                                          const float*, const AdamWStep&, int64_t, void*,
                                          cudaStream_t);

}  // namespace frugal::cuda
