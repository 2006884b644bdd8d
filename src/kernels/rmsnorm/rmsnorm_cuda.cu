// CUDA RMSNorm (see rmsnorm.h for the formulas), x / dx in TX, y / dy in TY (float or bf16),
// statistics and arithmetic in fp32, w / rstd / dw fp32:
//   y[n,d] = x * rstd[n] * w[d],  rstd[n] = 1 / sqrt(mean_d(x^2) + eps)
//   dx = rstd * (dy*w - xhat * mean_d(dy*w*xhat))     (assigned)
//   dw += sum_n dy * xhat                              (accumulated)
//
// fwd / fwd_quant / bwd_input: one block per row. The row is cut into chunks of 8 values; thread t
// owns chunks t, t + T, ..., t + (kChunks-1)*T (T = block size) and keeps them in registers across
// the block reduction, so the row is read from memory once. The block size and kChunks depend on d
// only (row_config); rows longer than 8 * 256 * kMaxChunks values are swept in several passes and
// re-read in the second sweep. Every path (vector or element loads, float or bf16 input) adds a
// thread's values in the same order, so the statistics have the same bits for the same values.
// residual_rmsnorm_fwd is the fwd kernel whose input chunk is x + branch (one __fadd_rn per value,
// the residual_add kernel's single add), stored to h as it is loaded; rmsnorm_bwd_input_add is the
// bwd_input kernel with __fadd_rn(out, skip) after the same arithmetic (axpby's add; __fadd_rn
// keeps the compiler from contracting it into an FMA with the product before it), and the sum also
// stored rounded to T. Both are template flags of the kernels below, so the norm's own arithmetic
// is the same code as the unfused kernels'.
// fwd_quant: a 1x128 tile is 16 consecutive chunks = the 16 lanes of a half-warp (T is a multiple
// of 32), so each tile's amax is a half-warp shuffle max of the fp32 y (quant_tile.cuh).
// bwd_weight: two passes, no atomics, so the bits do not depend on scheduling. Pass 1: block
// (column group, row chunk) sums dy*x*rstd over its rows into workspace[chunk, d]. Pass 2: each
// column adds its chunk sums to dw in a fixed order (16 strided partial sums, then those in order).
// The chunking depends on (n, d) only.
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant_tile.cuh"
#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal::cuda {
namespace {

using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;

constexpr int kMaxRowThreads = 256;
constexpr int kMaxChunks = 4;                    // chunks per thread kept in registers
constexpr int kWeightThreads = 256;              // threads per block in bwd_weight pass 1
constexpr int64_t kWeightColumnsPerBlock = 1024; // pass-1 column group (4 columns per thread)
constexpr int64_t kWeightTargetBlocks = 2048;    // enough pass-1 blocks to fill an H200 twice over
constexpr int64_t kWeightMinRowsPerChunk = 16;

struct RowConfig {
  int threads;  // multiple of 32, <= kMaxRowThreads
  int chunks;   // 1, 2 or 4 (kChunks)
};

// The smallest kChunks in {1, 2, 4} whose block of <= 256 threads covers the row in one pass;
// longer rows: 256 threads x 4 chunks per pass.
RowConfig row_config(int64_t d) {
  const int64_t chunks = ceil_div(d, kChunk);
  for (int per_thread = 1; per_thread <= kMaxChunks; per_thread *= 2) {
    const int64_t threads = ceil_div(ceil_div(chunks, per_thread), 32) * 32;
    if (threads <= kMaxRowThreads) return {static_cast<int>(threads), per_thread};
  }
  return {kMaxRowThreads, kMaxChunks};
}

// Loads chunk `c` of a row (zeros when c is past the row's end).
template <bool kVector, class T>
__device__ __forceinline__ void load_row_chunk(float (&v)[kChunk], const T* row, int64_t c,
                                               int64_t d) {
  const int64_t valid = d - c * kChunk;
  if (valid > 0) {
    detail::load_chunk<kVector>(v, row + c * kChunk, valid);
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = 0.0f;
  }
}

// The norm's input, chunk c of a row: x, or x + branch when kResidual (TX is then float).
template <bool kVector, bool kResidual, class TX, class TB>
__device__ __forceinline__ void load_input_chunk(float (&v)[kChunk], const TX* x_row,
                                                 const TB* branch_row, int64_t c, int64_t d) {
  load_row_chunk<kVector>(v, x_row, c, d);
  if constexpr (kResidual) {
    float b[kChunk];
    load_row_chunk<kVector>(b, branch_row, c, d);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = __fadd_rn(v[i], b[i]);
  }
}

// kVector: d % 8 == 0 and x, y, w 16-byte aligned (q 8-byte aligned when kQuant; h and branch
// 16-byte aligned when kResidual).
// kQuant: also q [n, d] and scales [ceil(d/128)][n] of the fp32 y; y may then be null.
// kResidual: the input is x + branch, also written to h [n, d] (fp32).
template <class TX, class TY, class TB, int kChunks, bool kVector, bool kQuant, bool kResidual>
__global__ void __launch_bounds__(kMaxRowThreads)
    rmsnorm_fwd_kernel(TY* __restrict__ y, float* __restrict__ rstd, uint8_t* __restrict__ q,
                       float* __restrict__ scales, float* __restrict__ h,
                       const TX* __restrict__ x, const TB* __restrict__ branch,
                       const float* __restrict__ w, int64_t n, int64_t d, float eps,
                       bool power_of_two_scale) {
  const int64_t row = blockIdx.x;
  const TX* x_row = x + row * d;
  const TB* branch_row = kResidual ? branch + row * d : nullptr;
  const int64_t chunks = ceil_div(d, kChunk);
  const int64_t per_pass = static_cast<int64_t>(kChunks) * blockDim.x;
  float v[kChunks][kChunk];
  float sum_sq = 0.0f;
  for (int64_t pass = 0; pass < chunks; pass += per_pass) {  // same count in every thread
    const int64_t first = pass + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t c = first + k * blockDim.x;
      load_input_chunk<kVector, kResidual>(v[k], x_row, branch_row, c, d);
      if constexpr (kResidual) {
        const int64_t valid = d - c * kChunk;
        if (valid > 0) detail::store_chunk<kVector>(h + row * d + c * kChunk, v[k], valid);
      }
    }
#pragma unroll
    for (int k = 0; k < kChunks; ++k)
#pragma unroll
      for (int i = 0; i < kChunk; ++i) sum_sq += v[k][i] * v[k][i];
  }
  const float r = 1.0f / sqrtf(detail::block_sum(sum_sq) / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[row] = r;

  const bool cached = chunks <= per_pass;  // v still holds the whole row
  for (int64_t pass = 0; pass < chunks; pass += per_pass) {  // same count in every thread
    const int64_t first = pass + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t c = first + k * blockDim.x;
      if (!cached) load_input_chunk<kVector, kResidual>(v[k], x_row, branch_row, c, d);
      const int64_t valid = d - c * kChunk;
      float g[kChunk];
      load_row_chunk<kVector>(g, w, c, d);
      float out[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) out[i] = v[k][i] * r * g[i];
      if (!kQuant || y != nullptr)
        if (valid > 0) detail::store_chunk<kVector>(y + row * d + c * kChunk, out, valid);
      if (kQuant) {
        // Every lane takes part in the shuffle; lanes past the row hold zeros.
        const float amax = detail::half_warp_max(detail::chunk_amax(out, 0.0f));
        const float scale = fp8_scale_from_amax(amax, power_of_two_scale);
        if (valid > 0) {
          const detail::ScaleDivider divide(scale, power_of_two_scale);
          detail::store_codes<kVector>(q + row * d + c * kChunk, detail::quantize8(out, divide),
                                       valid);
          if (c % detail::kLanesPerTile == 0) scales[(c / detail::kLanesPerTile) * n + row] = scale;
        }
      }
    }
  }
}

// kVector: d % 8 == 0 and dx, dy, x, w 16-byte aligned (skip and dx_t too when kAdd).
// kAdd (TX float): dx = skip + the norm's dx, and dx_t (when not null) = dx rounded to TY.
template <class TX, class TY, int kChunks, bool kVector, bool kAdd>
__global__ void __launch_bounds__(kMaxRowThreads)
    rmsnorm_bwd_input_kernel(TX* __restrict__ dx, TY* __restrict__ dx_t,
                             const TY* __restrict__ dy, const TX* __restrict__ x,
                             const float* __restrict__ w, const float* __restrict__ rstd,
                             const float* __restrict__ skip, int64_t d) {
  const int64_t row = blockIdx.x;
  const TX* x_row = x + row * d;
  const TY* dy_row = dy + row * d;
  const float r = rstd[row];
  const int64_t chunks = ceil_div(d, kChunk);
  const int64_t per_pass = static_cast<int64_t>(kChunks) * blockDim.x;
  float xv[kChunks][kChunk], gv[kChunks][kChunk];
  float dot = 0.0f;  // sum_j dy*w*x; times r below gives sum_j dy*w*xhat
  for (int64_t pass = 0; pass < chunks; pass += per_pass) {  // same count in every thread
    const int64_t first = pass + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      load_row_chunk<kVector>(xv[k], x_row, first + k * blockDim.x, d);
      load_row_chunk<kVector>(gv[k], dy_row, first + k * blockDim.x, d);
    }
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      float s[kChunk];
      load_row_chunk<kVector>(s, w, first + k * blockDim.x, d);
#pragma unroll
      for (int i = 0; i < kChunk; ++i) dot += gv[k][i] * s[i] * xv[k][i];
    }
  }
  const float mean_dot = detail::block_sum(dot) * r / static_cast<float>(d);
  const float r_mean_dot = r * mean_dot;  // xhat * mean_dot = x * (r * mean_dot)

  const bool cached = chunks <= per_pass;
  for (int64_t pass = 0; pass < chunks; pass += per_pass) {  // same count in every thread
    const int64_t first = pass + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t c = first + k * blockDim.x;
      const int64_t valid = d - c * kChunk;
      if (valid <= 0) continue;
      if (!cached) {
        load_row_chunk<kVector>(xv[k], x_row, c, d);
        load_row_chunk<kVector>(gv[k], dy_row, c, d);
      }
      float s[kChunk];
      load_row_chunk<kVector>(s, w, c, d);
      float out[kChunk];
#pragma unroll
      for (int i = 0; i < kChunk; ++i) out[i] = r * (gv[k][i] * s[i] - xv[k][i] * r_mean_dot);
      if constexpr (kAdd) {
        float skip_values[kChunk];
        load_row_chunk<kVector>(skip_values, skip + row * d, c, d);
#pragma unroll
        for (int i = 0; i < kChunk; ++i) out[i] = __fadd_rn(out[i], skip_values[i]);
        if (dx_t != nullptr) detail::store_chunk<kVector>(dx_t + row * d + c * kChunk, out, valid);
      }
      detail::store_chunk<kVector>(dx + row * d + c * kChunk, out, valid);
    }
  }
}

// 4 values at p widened to fp32 (kVector: 16-byte aligned fp32 or 8-byte aligned bf16).
template <bool kVector>
__device__ __forceinline__ void load4(float (&v)[4], const float* p) {
  if (kVector) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = p[i];
  }
}
template <bool kVector>
__device__ __forceinline__ void load4(float (&v)[4], const __nv_bfloat16* p) {
  if (kVector) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    v[0] = __uint_as_float(raw.x << 16);
    v[1] = __uint_as_float(raw.x & 0xFFFF0000u);
    v[2] = __uint_as_float(raw.y << 16);
    v[3] = __uint_as_float(raw.y & 0xFFFF0000u);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = __bfloat162float(p[i]);
  }
}

// Pass 1: partial[chunk, col] = sum over the chunk's rows of dy*x*rstd. Each thread owns 4
// adjacent columns and walks the chunk's rows in order. kVector: d % 4 == 0, dy and x aligned for
// 4-value loads, partial 16-byte aligned.
template <class TX, class TY, bool kVector>
__global__ void __launch_bounds__(kWeightThreads)
    rmsnorm_bwd_weight_partial_kernel(float* __restrict__ partial, const TY* __restrict__ dy,
                                      const TX* __restrict__ x, const float* __restrict__ rstd,
                                      int64_t n, int64_t d, int64_t rows_per_chunk) {
  const int64_t col = blockIdx.x * kWeightColumnsPerBlock + threadIdx.x * 4;
  if (col >= d) return;
  const int64_t chunk = blockIdx.y;
  const int64_t row_begin = chunk * rows_per_chunk;
  const int64_t row_end = detail::min64(n, row_begin + rows_per_chunk);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (kVector) {
#pragma unroll 4
    for (int64_t row = row_begin; row < row_end; ++row) {
      const float r = rstd[row];
      float g[4], v[4];
      load4<true>(g, dy + row * d + col);
      load4<true>(v, x + row * d + col);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += g[i] * v[i] * r;
    }
  } else {
    const int valid = d - col < 4 ? static_cast<int>(d - col) : 4;
    for (int64_t row = row_begin; row < row_end; ++row) {
      const float r = rstd[row];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (i < valid)
          acc[i] += detail::to_float(dy[row * d + col + i]) * detail::to_float(x[row * d + col + i]) * r;
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

// Pass 2: dw[col] += sum over chunks. A block owns 32 columns (lane = column, so each warp reads
// 128 contiguous bytes per chunk); warp w adds chunks w, w + W, w + 2W, ... in order, then warp 0
// adds the W warp sums in warp order. The order depends on `chunks` only, so the bits do not
// depend on scheduling; 32 columns per block spread the reads over d / 32 multiprocessors.
constexpr int kFinishColumns = 32;
constexpr int kFinishWarps = 16;
__global__ void __launch_bounds__(kFinishColumns * kFinishWarps)
    rmsnorm_bwd_weight_finish_kernel(float* __restrict__ dw, const float* __restrict__ partial,
                                     int64_t chunks, int64_t d) {
  __shared__ float warp_sums[kFinishWarps][kFinishColumns];
  const int lane = threadIdx.x % kFinishColumns, warp = threadIdx.x / kFinishColumns;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kFinishColumns + lane;
  float sum = 0.0f;
  if (col < d) {
#pragma unroll 8
    for (int64_t chunk = warp; chunk < chunks; chunk += kFinishWarps) sum += partial[chunk * d + col];
  }
  warp_sums[warp][lane] = sum;
  __syncthreads();
  if (warp != 0 || col >= d) return;
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kFinishWarps; ++w) total += warp_sums[w][lane];
  dw[col] += total;
}

// Rows per chunk for bwd_weight: enough chunks to give ~kWeightTargetBlocks pass-1 blocks, but at
// least kWeightMinRowsPerChunk rows each. A function of (n, d) only.
int64_t weight_rows_per_chunk(int64_t n, int64_t d) {
  const int64_t column_groups = ceil_div(d, kWeightColumnsPerBlock);
  const int64_t target_chunks = ceil_div(kWeightTargetBlocks, column_groups);
  const int64_t rows = ceil_div(n, target_chunks);
  return rows > kWeightMinRowsPerChunk ? rows : kWeightMinRowsPerChunk;
}

// kResidual: h and branch are used (the input is x + branch); else they are null.
template <class TX, class TY, class TB, bool kQuant, bool kResidual>
void launch_fwd(TY* y, float* rstd, uint8_t* q, float* scales, float* h, const TX* x,
                const TB* branch, const float* w, int64_t n, int64_t d, double eps,
                bool power_of_two_scale, cudaStream_t stream) {
  const RowConfig config = row_config(d);
  const bool vector = d % kChunk == 0 && aligned_to(x, 16) && aligned_to(w, 16) &&
                      aligned_to(y, 16) && (!kQuant || aligned_to(q, 8)) &&
                      (!kResidual || (aligned_to(h, 16) && aligned_to(branch, 16)));
  const float eps_f = static_cast<float>(eps);
  const dim3 grid(static_cast<unsigned>(n));
#define FRUGAL_FWD(CHUNKS, VECTOR)                                                    \
  rmsnorm_fwd_kernel<TX, TY, TB, CHUNKS, VECTOR, kQuant, kResidual>                   \
      <<<grid, config.threads, 0, stream>>>(y, rstd, q, scales, h, x, branch, w, n, d, eps_f, \
                                            power_of_two_scale)
  switch (config.chunks * 2 + (vector ? 1 : 0)) {
    case 2: FRUGAL_FWD(1, false); break;
    case 3: FRUGAL_FWD(1, true); break;
    case 4: FRUGAL_FWD(2, false); break;
    case 5: FRUGAL_FWD(2, true); break;
    case 8: FRUGAL_FWD(4, false); break;
    default: FRUGAL_FWD(4, true); break;
  }
#undef FRUGAL_FWD
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class TX, class TY>
void rmsnorm_fwd(TY* y, float* rstd, const TX* x, const float* w, int64_t n, int64_t d,
                 double eps, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_fwd: needs n >= 0 and d > 0");
  FRUGAL_CUDA_REQUIRE(n <= 0x7FFFFFFF, "cuda::rmsnorm_fwd: too many rows for one grid");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(y != nullptr && rstd != nullptr && x != nullptr && w != nullptr,
                      "cuda::rmsnorm_fwd: null pointer");
  launch_fwd<TX, TY, TX, false, false>(y, rstd, nullptr, nullptr, nullptr, x, nullptr, w, n, d,
                                       eps, false, stream);
}

template <class TX, class TY>
void rmsnorm_fwd_quant(uint8_t* q, float* scales, TY* y, float* rstd, const TX* x, const float* w,
                       int64_t n, int64_t d, double eps, bool power_of_two_scale,
                       cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_fwd_quant: needs n >= 0 and d > 0");
  FRUGAL_CUDA_REQUIRE(n <= 0x7FFFFFFF, "cuda::rmsnorm_fwd_quant: too many rows for one grid");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && rstd != nullptr && x != nullptr &&
                          w != nullptr,
                      "cuda::rmsnorm_fwd_quant: null pointer (only y may be null)");
  launch_fwd<TX, TY, TX, true, false>(y, rstd, q, scales, nullptr, x, nullptr, w, n, d, eps,
                                      power_of_two_scale, stream);
}

template <class T>
void residual_rmsnorm_fwd(float* h, T* y, float* rstd, const float* x, const T* branch,
                          const float* w, int64_t n, int64_t d, double eps, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::residual_rmsnorm_fwd: needs n >= 0 and d > 0");
  FRUGAL_CUDA_REQUIRE(n <= 0x7FFFFFFF, "cuda::residual_rmsnorm_fwd: too many rows for one grid");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(h != nullptr && y != nullptr && rstd != nullptr && x != nullptr &&
                          branch != nullptr && w != nullptr,
                      "cuda::residual_rmsnorm_fwd: null pointer");
  FRUGAL_CUDA_REQUIRE(static_cast<const void*>(h) != static_cast<const void*>(x) &&
                          static_cast<const void*>(h) != static_cast<const void*>(branch),
                      "cuda::residual_rmsnorm_fwd: h must not alias x or branch");
  launch_fwd<float, T, T, false, true>(y, rstd, nullptr, nullptr, h, x, branch, w, n, d, eps,
                                       false, stream);
}

namespace {

// kAdd: skip is read and dx_t (may be null) written; else both are null.
template <class TX, class TY, bool kAdd>
void launch_bwd_input(TX* dx, TY* dx_t, const TY* dy, const TX* x, const float* w,
                      const float* rstd, const float* skip, int64_t n, int64_t d,
                      cudaStream_t stream) {
  const RowConfig config = row_config(d);
  const bool vector = d % kChunk == 0 && aligned_to(dx, 16) && aligned_to(dy, 16) &&
                      aligned_to(x, 16) && aligned_to(w, 16) &&
                      (!kAdd || (aligned_to(skip, 16) && aligned_to(dx_t, 16)));
  const dim3 grid(static_cast<unsigned>(n));
#define FRUGAL_BWD(CHUNKS, VECTOR)                                                               \
  rmsnorm_bwd_input_kernel<TX, TY, CHUNKS, VECTOR, kAdd><<<grid, config.threads, 0, stream>>>( \
      dx, dx_t, dy, x, w, rstd, skip, d)
  switch (config.chunks * 2 + (vector ? 1 : 0)) {
    case 2: FRUGAL_BWD(1, false); break;
    case 3: FRUGAL_BWD(1, true); break;
    case 4: FRUGAL_BWD(2, false); break;
    case 5: FRUGAL_BWD(2, true); break;
    case 8: FRUGAL_BWD(4, false); break;
    default: FRUGAL_BWD(4, true); break;
  }
#undef FRUGAL_BWD
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class TX, class TY>
void rmsnorm_bwd_input(TX* dx, const TY* dy, const TX* x, const float* w, const float* rstd,
                       int64_t n, int64_t d, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_bwd_input: needs n >= 0 and d > 0");
  FRUGAL_CUDA_REQUIRE(n <= 0x7FFFFFFF, "cuda::rmsnorm_bwd_input: too many rows for one grid");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(dx != nullptr && dy != nullptr && x != nullptr && w != nullptr &&
                          rstd != nullptr,
                      "cuda::rmsnorm_bwd_input: null pointer");
  launch_bwd_input<TX, TY, false>(dx, nullptr, dy, x, w, rstd, nullptr, n, d, stream);
}

template <class T>
void rmsnorm_bwd_input_add(float* dx, T* dx_t, const T* dy, const float* x, const float* w,
                           const float* rstd, const float* skip, int64_t n, int64_t d,
                           cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_bwd_input_add: needs n >= 0 and d > 0");
  FRUGAL_CUDA_REQUIRE(n <= 0x7FFFFFFF, "cuda::rmsnorm_bwd_input_add: too many rows for one grid");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(dx != nullptr && dy != nullptr && x != nullptr && w != nullptr &&
                          rstd != nullptr && skip != nullptr,
                      "cuda::rmsnorm_bwd_input_add: null pointer (only dx_t may be null)");
  const void* out = dx;
  FRUGAL_CUDA_REQUIRE(out != skip && out != dy && out != x && out != dx_t,
                      "cuda::rmsnorm_bwd_input_add: dx must not alias skip, dy, x or dx_t");
  launch_bwd_input<float, T, true>(dx, dx_t, dy, x, w, rstd, skip, n, d, stream);
}

int64_t rmsnorm_bwd_weight_workspace_floats(int64_t n, int64_t d) {
  if (n <= 0 || d <= 0) return 0;
  return ceil_div(n, weight_rows_per_chunk(n, d)) * d;
}

template <class TX, class TY>
void rmsnorm_bwd_weight(float* dw, const TY* dy, const TX* x, const float* rstd, int64_t n,
                        int64_t d, float* workspace, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d > 0, "cuda::rmsnorm_bwd_weight: needs n >= 0 and d > 0");
  if (n == 0) return;  // dw += 0
  const int64_t rows_per_chunk = weight_rows_per_chunk(n, d);
  const int64_t chunks = ceil_div(n, rows_per_chunk);
  const int64_t column_groups = ceil_div(d, kWeightColumnsPerBlock);
  FRUGAL_CUDA_REQUIRE(chunks <= 65535 && column_groups <= 0x7FFFFFFF,
                      "cuda::rmsnorm_bwd_weight: shape too large for one grid");
  FRUGAL_CUDA_REQUIRE(workspace != nullptr, "cuda::rmsnorm_bwd_weight: no workspace");
  FRUGAL_CUDA_REQUIRE(dw != nullptr && dy != nullptr && x != nullptr && rstd != nullptr,
                      "cuda::rmsnorm_bwd_weight: null pointer");
  const dim3 partial_grid(static_cast<unsigned>(column_groups), static_cast<unsigned>(chunks));
  const bool vector = d % 4 == 0 && aligned_to(dy, 4 * sizeof(TY)) && aligned_to(x, 4 * sizeof(TX)) &&
                      aligned_to(workspace, 16);
  if (vector)
    rmsnorm_bwd_weight_partial_kernel<TX, TY, true><<<partial_grid, kWeightThreads, 0, stream>>>(
        workspace, dy, x, rstd, n, d, rows_per_chunk);
  else
    rmsnorm_bwd_weight_partial_kernel<TX, TY, false><<<partial_grid, kWeightThreads, 0, stream>>>(
        workspace, dy, x, rstd, n, d, rows_per_chunk);
  FRUGAL_CUDA_CHECK_LAUNCH();
  const dim3 finish_grid(static_cast<unsigned>(ceil_div(d, kFinishColumns)));
  rmsnorm_bwd_weight_finish_kernel<<<finish_grid, kFinishColumns * kFinishWarps, 0, stream>>>(
      dw, workspace, chunks, d);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

#define FRUGAL_INSTANTIATE_RMSNORM(TX, TY)                                                        \
  template void rmsnorm_fwd<TX, TY>(TY*, float*, const TX*, const float*, int64_t, int64_t,       \
                                    double, cudaStream_t);                                        \
  template void rmsnorm_fwd_quant<TX, TY>(uint8_t*, float*, TY*, float*, const TX*, const float*, \
                                          int64_t, int64_t, double, bool, cudaStream_t);          \
  template void rmsnorm_bwd_input<TX, TY>(TX*, const TY*, const TX*, const float*, const float*,  \
                                          int64_t, int64_t, cudaStream_t);                        \
  template void rmsnorm_bwd_weight<TX, TY>(float*, const TY*, const TX*, const float*, int64_t,   \
                                           int64_t, float*, cudaStream_t);
FRUGAL_INSTANTIATE_RMSNORM(float, float)
FRUGAL_INSTANTIATE_RMSNORM(float, __nv_bfloat16)
FRUGAL_INSTANTIATE_RMSNORM(__nv_bfloat16, __nv_bfloat16)
#undef FRUGAL_INSTANTIATE_RMSNORM

#define FRUGAL_INSTANTIATE_RMSNORM_RESIDUAL(T)                                                   \
  template void residual_rmsnorm_fwd<T>(float*, T*, float*, const float*, const T*, const float*, \
                                        int64_t, int64_t, double, cudaStream_t);                 \
  template void rmsnorm_bwd_input_add<T>(float*, T*, const T*, const float*, const float*,        \
                                         const float*, const float*, int64_t, int64_t,           \
                                         cudaStream_t);
FRUGAL_INSTANTIATE_RMSNORM_RESIDUAL(float)
FRUGAL_INSTANTIATE_RMSNORM_RESIDUAL(__nv_bfloat16)
#undef FRUGAL_INSTANTIATE_RMSNORM_RESIDUAL

}  // namespace frugal::cuda
