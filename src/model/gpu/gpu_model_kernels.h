// Small CUDA kernels that glue the GPU model's ops together (the heavy ops live in src/kernels):
// mixed-precision residual adds, fills, and the loss bookkeeping that lets a step form its losses
// without a host sync.
// T is float or __nv_bfloat16; arithmetic in fp32, results rounded to nearest even.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

// out[n] = x[n] + (float) branch[n]   (out may alias x: the fp32 residual stream)
template <class T>
void residual_add(float* out, const float* x, const T* branch, int64_t n, cudaStream_t stream);
// dst[n] = dst[n] + src[n], computed in fp32 and rounded to TD.
template <class TD, class TS>
void add_into(TD* dst, const TS* src, int64_t n, cudaStream_t stream);
// x[n] = value
void fill(float* x, float value, int64_t n, cudaStream_t stream);

// The losses of one micro-batch as they leave the device (one copy).
struct DeviceLosses {
  double total;
  double main;
  double mtp;
  double balance;
  int64_t tokens;
};

// Cross-entropy gradient scales, on the device from the valid-target counts of the forward:
//   scales[0] = loss_scale / valid[0]                        (main next-token loss)
//   scales[k] = loss_scale * mtp_weight / valid[k], k = 1..depths   (mtp_weight = lambda / D)
// and 0 where a count is 0.
void xent_grad_scales(float* scales, const int64_t* valid, int64_t depths, double loss_scale,
                      double mtp_weight, cudaStream_t stream);
// out = the Losses of the CPU Transformer::forward from the per-term sums:
//   sums[0]/valid[0] (main), mean over depths of sums[k]/valid[k] (mtp), sum of balance[n_balance]
//   in order, total = main + mtp_weight * depths * mtp + balance.
void finalize_losses(DeviceLosses* out, const double* sums, const int64_t* valid, int64_t depths,
                     const double* balance, int64_t n_balance, double mtp_weight,
                     cudaStream_t stream);

}  // namespace frugal::cuda
