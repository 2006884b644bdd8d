// CUDA RMSNorm, fp32 (see rmsnorm.h for the formulas):
//   y[n,d] = x * rstd[n] * w[d],  rstd[n] = 1 / sqrt(mean_d(x^2) + eps)
//   dx = rstd * (dy*w - xhat * mean_d(dy*w*xhat))     (assigned)
//   dw += sum_n dy * xhat                              (accumulated)
//
// fwd / bwd_input: one 256-thread block per row; each thread strides over the row in float4 steps
// when the row is 16-byte aligned, a block tree reduction gives the row statistic, and a second
// sweep over the row (now in L1/L2) writes the output.
// bwd_weight: two passes, no atomics, so the bits do not depend on scheduling. Pass 1: block
// (column group, row chunk) sums dy*x*rstd over its rows into workspace[chunk, d]. Pass 2: each
// column adds its chunk sums in chunk order to dw. The chunking depends on (n, d) only.
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kRowThreads = 256;                 // threads per row in fwd / bwd_input
constexpr int kWeightThreads = 256;              // threads per block in bwd_weight pass 1 and 2
constexpr int64_t kWeightColumnsPerBlock = 1024; // pass-1 column group (4 columns per thread)
constexpr int64_t kWeightTargetBlocks = 2048;    // enough pass-1 blocks to fill an H200 twice over
constexpr int64_t kWeightMinRowsPerChunk = 16;

// Sum over the block, returned to every thread. Fixed shuffle tree then fixed warp order.
__device__ float block_sum(float value) {
  __shared__ float warp_sums[kRowThreads / kWarpSize];
  __shared__ float total;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  const int warp = threadIdx.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) warp_sums[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int i = 0; i < kRowThreads / kWarpSize; ++i) sum += warp_sums[i];
    total = sum;
  }
  __syncthreads();
  return total;
}

// kVector: d % 4 == 0 and every pointer 16-byte aligned, so rows can be read as float4.
template <bool kVector>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_fwd_kernel(float* __restrict__ y, float* __restrict__ rstd, const float* __restrict__ x,
                       const float* __restrict__ w, int64_t d, float eps) {
  const int64_t row = blockIdx.x;
  const float* x_row = x + row * d;
  float* y_row = y + row * d;
  float sum_sq = 0.0f;
  if (kVector) {
    const float4* x4 = reinterpret_cast<const float4*>(x_row);
    for (int64_t i = threadIdx.x; i < d / 4; i += kRowThreads) {
      const float4 v = x4[i];
      sum_sq += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int64_t j = threadIdx.x; j < d; j += kRowThreads) sum_sq += x_row[j] * x_row[j];
  }
  const float r = 1.0f / sqrtf(block_sum(sum_sq) / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  if (kVector) {
    const float4* x4 = reinterpret_cast<const float4*>(x_row);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    float4* y4 = reinterpret_cast<float4*>(y_row);
    for (int64_t i = threadIdx.x; i < d / 4; i += kRowThreads) {
      const float4 v = x4[i], g = w4[i];
      y4[i] = make_float4(v.x * r * g.x, v.y * r * g.y, v.z * r * g.z, v.w * r * g.w);
    }
  } else {
    for (int64_t j = threadIdx.x; j < d; j += kRowThreads) y_row[j] = x_row[j] * r * w[j];
  }
}

template <bool kVector>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_bwd_input_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                             const float* __restrict__ x, const float* __restrict__ w,
                             const float* __restrict__ rstd, int64_t d) {
  const int64_t row = blockIdx.x;
  const float* x_row = x + row * d;
  const float* dy_row = dy + row * d;
  float* dx_row = dx + row * d;
  const float r = rstd[row];
  float dot = 0.0f;  // sum_j dy*w*x; times r below gives sum_j dy*w*xhat
  if (kVector) {
    const float4* x4 = reinterpret_cast<const float4*>(x_row);
    const float4* dy4 = reinterpret_cast<const float4*>(dy_row);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    for (int64_t i = threadIdx.x; i < d / 4; i += kRowThreads) {
      const float4 v = x4[i], g = dy4[i], s = w4[i];
      dot += g.x * s.x * v.x + g.y * s.y * v.y + g.z * s.z * v.z + g.w * s.w * v.w;
    }
  } else {
    for (int64_t j = threadIdx.x; j < d; j += kRowThreads) dot += dy_row[j] * w[j] * x_row[j];
  }
  const float mean_dot = block_sum(dot) * r / static_cast<float>(d);
  const float r_mean_dot = r * mean_dot;  // xhat * mean_dot = x * (r * mean_dot)
  if (kVector) {
    const float4* x4 = reinterpret_cast<const float4*>(x_row);
    const float4* dy4 = reinterpret_cast<const float4*>(dy_row);
    const float4* w4 = reinterpret_cast<const float4*>(w);
    float4* dx4 = reinterpret_cast<float4*>(dx_row);
    for (int64_t i = threadIdx.x; i < d / 4; i += kRowThreads) {
      const float4 v = x4[i], g = dy4[i], s = w4[i];
      dx4[i] = make_float4(r * (g.x * s.x - v.x * r_mean_dot), r * (g.y * s.y - v.y * r_mean_dot),
                           r * (g.z * s.z - v.z * r_mean_dot), r * (g.w * s.w - v.w * r_mean_dot));
    }
  } else {
    for (int64_t j = threadIdx.x; j < d; j += kRowThreads)
      dx_row[j] = r * (dy_row[j] * w[j] - x_row[j] * r_mean_dot);
  }
}

// Pass 1: partial[chunk, col] = sum over the chunk's rows of dy*x*rstd. Each thread owns 4
// adjacent columns (one float4 when kVector) and walks the chunk's rows in order.
template <bool kVector>
__global__ void __launch_bounds__(kWeightThreads)
    rmsnorm_bwd_weight_partial_kernel(float* __restrict__ partial, const float* __restrict__ dy,
                                      const float* __restrict__ x, const float* __restrict__ rstd,
                                      int64_t n, int64_t d, int64_t rows_per_chunk) {
  const int64_t col = blockIdx.x * kWeightColumnsPerBlock + threadIdx.x * 4;
  if (col >= d) return;
  const int64_t chunk = blockIdx.y;
  const int64_t row_begin = chunk * rows_per_chunk;
  const int64_t row_end = min(n, row_begin + rows_per_chunk);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (kVector) {
#pragma unroll 4
    for (int64_t row = row_begin; row < row_end; ++row) {
      const float r = rstd[row];
      const float4 g = *reinterpret_cast<const float4*>(dy + row * d + col);
      const float4 v = *reinterpret_cast<const float4*>(x + row * d + col);
      acc[0] += g.x * v.x * r;
      acc[1] += g.y * v.y * r;
      acc[2] += g.z * v.z * r;
      acc[3] += g.w * v.w * r;
    }
  } else {
    const int valid = d - col < 4 ? static_cast<int>(d - col) : 4;
    for (int64_t row = row_begin; row < row_end; ++row) {
      const float r = rstd[row];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (i < valid) acc[i] += dy[row * d + col + i] * x[row * d + col + i] * r;
    }
  }
  float* out = partial + chunk * d + col;
  if (kVector) {
    *reinterpret_cast<float4*>(out) = make_float4(acc[0], acc[1], acc[2], acc[3]);
  } else {
    const int valid = d - col < 4 ? static_cast<int>(d - col) : 4;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (i < valid) out[i] = acc[i];
  }
}

// Pass 2: dw[col] += sum over chunks, in chunk order.
__global__ void __launch_bounds__(kWeightThreads)
    rmsnorm_bwd_weight_finish_kernel(float* __restrict__ dw, const float* __restrict__ partial,
                                     int64_t chunks, int64_t d) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWeightThreads + threadIdx.x;
  if (col >= d) return;
  float sum = 0.0f;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * d + col];
  dw[col] += sum;
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows per chunk for bwd_weight: enough chunks to give ~kWeightTargetBlocks pass-1 blocks, but at
// least kWeightMinRowsPerChunk rows each. A function of (n, d) only.
int64_t weight_rows_per_chunk(int64_t n, int64_t d) {
  const int64_t column_groups = ceil_div(d, kWeightColumnsPerBlock);
  const int64_t target_chunks = ceil_div(kWeightTargetBlocks, column_groups);
  const int64_t rows = ceil_div(n, target_chunks);
  return rows > kWeightMinRowsPerChunk ? rows : kWeightMinRowsPerChunk;
}

}  // namespace

void rmsnorm_fwd(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t d,
                 double eps, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_fwd: needs n >= 0 and d > 0");
  FRUGAL_CUDA_REQUIRE(n <= 0x7FFFFFFF, "cuda::rmsnorm_fwd: too many rows for one grid");
  if (n == 0) return;
  const dim3 grid(static_cast<unsigned>(n));
  const float eps_f = static_cast<float>(eps);
  if (d % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(y))
    rmsnorm_fwd_kernel<true><<<grid, kRowThreads, 0, stream>>>(y, rstd, x, w, d, eps_f);
  else
    rmsnorm_fwd_kernel<false><<<grid, kRowThreads, 0, stream>>>(y, rstd, x, w, d, eps_f);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void rmsnorm_bwd_input(float* dx, const float* dy, const float* x, const float* w,
                       const float* rstd, int64_t n, int64_t d, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_bwd_input: needs n >= 0 and d > 0");
  FRUGAL_CUDA_REQUIRE(n <= 0x7FFFFFFF, "cuda::rmsnorm_bwd_input: too many rows for one grid");
  if (n == 0) return;
  const dim3 grid(static_cast<unsigned>(n));
  if (d % 4 == 0 && aligned16(dx) && aligned16(dy) && aligned16(x) && aligned16(w))
    rmsnorm_bwd_input_kernel<true><<<grid, kRowThreads, 0, stream>>>(dx, dy, x, w, rstd, d);
  else
    rmsnorm_bwd_input_kernel<false><<<grid, kRowThreads, 0, stream>>>(dx, dy, x, w, rstd, d);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

int64_t rmsnorm_bwd_weight_workspace_floats(int64_t n, int64_t d) {
  if (n <= 0 || d <= 0) return 0;
  return ceil_div(n, weight_rows_per_chunk(n, d)) * d;
}

void rmsnorm_bwd_weight(float* dw, const float* dy, const float* x, const float* rstd, int64_t n,
                        int64_t d, float* workspace, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_bwd_weight: needs n >= 0 and d > 0");
  if (n == 0) return;  // dw += 0
  const int64_t rows_per_chunk = weight_rows_per_chunk(n, d);
  const int64_t chunks = ceil_div(n, rows_per_chunk);
  const int64_t column_groups = ceil_div(d, kWeightColumnsPerBlock);
  FRUGAL_CUDA_REQUIRE(chunks <= 65535 && column_groups <= 0x7FFFFFFF,
                      "cuda::rmsnorm_bwd_weight: shape too large for one grid");
  FRUGAL_CUDA_REQUIRE(workspace != nullptr, "cuda::rmsnorm_bwd_weight: no workspace");
  const dim3 partial_grid(static_cast<unsigned>(column_groups), static_cast<unsigned>(chunks));
  if (d % 4 == 0 && aligned16(dy) && aligned16(x) && aligned16(workspace))
    rmsnorm_bwd_weight_partial_kernel<true><<<partial_grid, kWeightThreads, 0, stream>>>(
        workspace, dy, x, rstd, n, d, rows_per_chunk);
  else
    rmsnorm_bwd_weight_partial_kernel<false><<<partial_grid, kWeightThreads, 0, stream>>>(
        workspace, dy, x, rstd, n, d, rows_per_chunk);
  FRUGAL_CUDA_CHECK_LAUNCH();
  const dim3 finish_grid(static_cast<unsigned>(ceil_div(d, kWeightThreads)));
  rmsnorm_bwd_weight_finish_kernel<<<finish_grid, kWeightThreads, 0, stream>>>(dw, workspace,
                                                                               chunks, d);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
