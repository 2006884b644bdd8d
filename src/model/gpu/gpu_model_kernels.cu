// Glue kernels of the GPU model (see gpu_model_kernels.h). Elementwise kernels use a grid-stride
// loop over 64-bit indices; the loss kernels sum in a fixed order.
#include <cuda_bf16.h>

#include <algorithm>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "model/gpu/gpu_model_kernels.h"

namespace frugal::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

int blocks_for(int64_t n) {
  return static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

using detail::from_float;
using detail::to_float;

template <class T>
__global__ void residual_add_kernel(float* out, const float* x, const T* branch, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * kThreads)
    out[i] = x[i] + to_float(branch[i]);
}

template <class TD, class TS>
__global__ void add_into_kernel(TD* dst, const TS* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * kThreads)
    dst[i] = from_float<TD>(to_float(dst[i]) + to_float(src[i]));
}

__global__ void fill_kernel(float* x, float value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * kThreads)
    x[i] = value;
}

__global__ void xent_grad_scales_kernel(float* scales, const int64_t* valid, int64_t depths,
                                        double loss_scale, double mtp_weight) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  scales[0] = valid[0] > 0 ? static_cast<float>(loss_scale / static_cast<double>(valid[0])) : 0.0f;
  for (int64_t k = 1; k <= depths; ++k)
    scales[k] = valid[k] > 0
                    ? static_cast<float>(loss_scale * mtp_weight / static_cast<double>(valid[k]))
                    : 0.0f;
}

__global__ void finalize_losses_kernel(DeviceLosses* out, const double* sums, const int64_t* valid,
                                       int64_t depths, const double* balance, int64_t n_balance,
                                       double mtp_weight) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  DeviceLosses l;
  l.main = valid[0] > 0 ? sums[0] / static_cast<double>(valid[0]) : 0.0;
  l.tokens = valid[0];
  double mtp = 0.0;
  for (int64_t k = 1; k <= depths; ++k)
    mtp += valid[k] > 0 ? sums[k] / static_cast<double>(valid[k]) : 0.0;
  if (depths > 0) mtp /= static_cast<double>(depths);
  l.mtp = mtp;
  double bal = 0.0;
  for (int64_t i = 0; i < n_balance; ++i) bal += balance[i];
  l.balance = bal;
  l.total = l.main + mtp_weight * mtp * static_cast<double>(depths) + bal;
  *out = l;
}

}  // namespace

template <class T>
void residual_add(float* out, const float* x, const T* branch, int64_t n, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "residual_add: negative size");
  if (n == 0) return;
  residual_add_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(out, x, branch, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class TD, class TS>
void add_into(TD* dst, const TS* src, int64_t n, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "add_into: negative size");
  if (n == 0) return;
  add_into_kernel<TD, TS><<<blocks_for(n), kThreads, 0, stream>>>(dst, src, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void fill(float* x, float value, int64_t n, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "fill: negative size");
  if (n == 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, value, n);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void xent_grad_scales(float* scales, const int64_t* valid, int64_t depths, double loss_scale,
                      double mtp_weight, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(depths >= 0, "xent_grad_scales: negative depth count");
  xent_grad_scales_kernel<<<1, 1, 0, stream>>>(scales, valid, depths, loss_scale, mtp_weight);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void finalize_losses(DeviceLosses* out, const double* sums, const int64_t* valid, int64_t depths,
                     const double* balance, int64_t n_balance, double mtp_weight,
                     cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(depths >= 0 && n_balance >= 0, "finalize_losses: negative count");
  finalize_losses_kernel<<<1, 1, 0, stream>>>(out, sums, valid, depths, balance, n_balance,
                                              mtp_weight);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template void residual_add<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void residual_add<__nv_bfloat16>(float*, const float*, const __nv_bfloat16*, int64_t,
                                          cudaStream_t);
template void add_into<float, float>(float*, const float*, int64_t, cudaStream_t);
template void add_into<float, __nv_bfloat16>(float*, const __nv_bfloat16*, int64_t, cudaStream_t);
template void add_into<__nv_bfloat16, float>(__nv_bfloat16*, const float*, int64_t, cudaStream_t);
template void add_into<__nv_bfloat16, __nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, int64_t,
                                                     cudaStream_t);

}  // namespace frugal::cuda
