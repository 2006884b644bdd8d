// Causal flash attention, the generic SIMT path: the fp32 recipe (T = float, must match the CPU
// reference to ~1e-6) and the bf16 fallback for head dims or alignments the tensor-core kernels do
// not take. FP32 arithmetic throughout; any qk_dim, v_dim in 1..256.
//
// Shapes: q, k [batch, seq, heads, qk_dim]; v, out, dout [batch, seq, heads, v_dim];
//         lse, delta [batch, heads, seq].
//
// Every kernel: one block of 4 warps per (batch*head, 16 rows); each warp owns 4 of the rows and
// walks the other side of the attention matrix in shared-memory tiles of 32, one position per lane.
//   fwd : rows are queries; per key tile, lane j computes s_ij, the warp does the online softmax
//         (running max and sum), and every lane accumulates its output columns c = lane + 32 t.
//   dq  : rows are queries; dq_i = scale * sum_j p_ij (dp_ij - delta_i) k_j over key tiles j <= i.
//   dkdv: rows are keys; dv_j = sum_i p_ij dout_i, dk_j = scale * sum_i ds_ij q_i over query
//         tiles i >= j. p_ij = exp(s_ij - lse_i) is recomputed from the forward's lse.
// No atomics: each output element is summed by one thread in a fixed order (deterministic).
// Shared-memory rows use an odd pitch so that lanes reading different rows hit different banks.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/attention/flash_attention_launch.h"

namespace frugal::cuda::flash {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;  // rows (queries or keys) per block
constexpr int kTile = kWarpSize;              // positions per shared tile: one per lane
constexpr int kCols = kSimtMaxDim / kWarpSize;  // output columns per lane
constexpr unsigned kFullMask = 0xFFFFFFFFu;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline void store(float* p, float x) { *p = x; }
__device__ inline void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

__device__ inline float warp_max(float x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}
// Butterfly sum: every lane adds the same pairs, so every lane gets the same bits.
__device__ inline float warp_sum(float x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

__device__ inline float dot(const float* a, const float* b, int n) {
  float sum = 0.0f;
  for (int c = 0; c < n; ++c) sum = fmaf(a[c], b[c], sum);
  return sum;
}

// Odd row pitch (in floats) for a tile of rows of `dim` values.
__host__ __device__ inline int pitch_of(int dim) { return dim | 1; }

// rows x dim values of positions first..first+rows-1 of one (batch, head) slice into shared memory
// (row pitch `pitch`); positions at or past `seq` read as zero.
template <class T>
__device__ void load_rows(float* dst, int pitch, const T* src, int64_t row_stride, int first,
                          int rows, int seq, int dim) {
  for (int idx = threadIdx.x; idx < rows * dim; idx += kThreads) {
    const int r = idx / dim, c = idx - r * dim;
    const int position = first + r;
    dst[r * pitch + c] = position < seq ? to_float(src[position * row_stride + c]) : 0.0f;
  }
}

// Per-slice pointers: the (batch, head) of block x, position 0.
struct Slice {
  int64_t bh, qk_offset, v_offset, qk_stride, v_stride;
  __device__ Slice(int seq, int heads, int qk_dim, int v_dim) {
    bh = blockIdx.x;
    const int64_t b = bh / heads, h = bh % heads;
    qk_stride = static_cast<int64_t>(heads) * qk_dim;
    v_stride = static_cast<int64_t>(heads) * v_dim;
    qk_offset = b * seq * qk_stride + h * qk_dim;
    v_offset = b * seq * v_stride + h * v_dim;
  }
};

// ---- forward ---------------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(kThreads)
    simt_fwd_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                    const T* __restrict__ k, const T* __restrict__ v, int seq, int heads,
                    int qk_dim, int v_dim, float scale) {
  extern __shared__ float smem[];
  const int qk_pitch = pitch_of(qk_dim), v_pitch = pitch_of(v_dim);
  float* q_rows = smem;                       // [kRows][qk_pitch]
  float* k_tile = q_rows + kRows * qk_pitch;  // [kTile][qk_pitch]
  float* v_tile = k_tile + kTile * qk_pitch;  // [kTile][v_pitch]
  const Slice slice(seq, heads, qk_dim, v_dim);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int row0 = blockIdx.y * kRows;
  const int last_row = min(row0 + kRows, seq) - 1;

  load_rows(q_rows, qk_pitch, q + slice.qk_offset, slice.qk_stride, row0, kRows, seq, qk_dim);
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][kCols];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    row_max[rr] = -INFINITY;
    row_sum[rr] = 0.0f;
#pragma unroll
    for (int t = 0; t < kCols; ++t) acc[rr][t] = 0.0f;
  }

  for (int key0 = 0; key0 <= last_row; key0 += kTile) {
    __syncthreads();  // the previous tiles are consumed
    load_rows(k_tile, qk_pitch, k + slice.qk_offset, slice.qk_stride, key0, kTile, seq, qk_dim);
    load_rows(v_tile, v_pitch, v + slice.v_offset, slice.v_stride, key0, kTile, seq, v_dim);
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr, i = row0 + r;
      if (i > last_row || key0 > i) continue;  // warp-uniform
      const int j = key0 + lane;
      const bool valid = j <= i;
      const float s =
          valid ? dot(q_rows + r * qk_pitch, k_tile + lane * qk_pitch, qk_dim) * scale : -INFINITY;
      const float new_max = fmaxf(row_max[rr], warp_max(s));  // finite: key0 <= i is valid
      const float p = valid ? expf(s - new_max) : 0.0f;
      const float correction = expf(row_max[rr] - new_max);  // 0 on the first tile
      row_sum[rr] = row_sum[rr] * correction + warp_sum(p);
      row_max[rr] = new_max;
#pragma unroll
      for (int t = 0; t < kCols; ++t) acc[rr][t] *= correction;
      const int keys = min(kTile, i - key0 + 1);
      for (int jj = 0; jj < keys; ++jj) {
        const float pj = __shfl_sync(kFullMask, p, jj);
        const float* v_row = v_tile + jj * v_pitch;
#pragma unroll
        for (int t = 0; t < kCols; ++t) {
          const int c = lane + kWarpSize * t;
          if (c < v_dim) acc[rr][t] = fmaf(pj, v_row[c], acc[rr][t]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int i = row0 + warp * kRowsPerWarp + rr;
    if (i > last_row) continue;
    const float inv_sum = 1.0f / row_sum[rr];
    T* out_row = out + slice.v_offset + i * slice.v_stride;
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int c = lane + kWarpSize * t;
      if (c < v_dim) store(out_row + c, acc[rr][t] * inv_sum);
    }
    if (lane == 0) lse[slice.bh * seq + i] = row_max[rr] + logf(row_sum[rr]);
  }
}

// ---- backward: delta -------------------------------------------------------------------------

constexpr int kDeltaWarps = 8;

// One warp per (batch, position, head) row.
template <class T>
__global__ void __launch_bounds__(kDeltaWarps * kWarpSize)
    delta_kernel(float* __restrict__ delta, const T* __restrict__ dout, const T* __restrict__ out,
                 int64_t rows, int seq, int heads, int v_dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kDeltaWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // whole warp
  const int lane = threadIdx.x % kWarpSize;
  const T* dout_row = dout + row * v_dim;
  const T* out_row = out + row * v_dim;
  float sum = 0.0f;
  for (int c = lane; c < v_dim; c += kWarpSize)
    sum = fmaf(to_float(dout_row[c]), to_float(out_row[c]), sum);
  sum = warp_sum(sum);
  // row = (b * seq + i) * heads + h  ->  delta[(b * heads + h) * seq + i]
  const int64_t h = row % heads, bi = row / heads;
  const int64_t b = bi / seq, i = bi % seq;
  if (lane == 0) delta[(b * heads + h) * seq + i] = sum;
}

// ---- backward: dq ----------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(kThreads)
    simt_dq_kernel(T* __restrict__ dq, const T* __restrict__ dout, const float* __restrict__ lse,
                   const float* __restrict__ delta, const T* __restrict__ q,
                   const T* __restrict__ k, const T* __restrict__ v, int seq, int heads,
                   int qk_dim, int v_dim, float scale) {
  extern __shared__ float smem[];
  const int qk_pitch = pitch_of(qk_dim), v_pitch = pitch_of(v_dim);
  float* q_rows = smem;                        // [kRows][qk_pitch]
  float* dout_rows = q_rows + kRows * qk_pitch;  // [kRows][v_pitch]
  float* k_tile = dout_rows + kRows * v_pitch;   // [kTile][qk_pitch]
  float* v_tile = k_tile + kTile * qk_pitch;     // [kTile][v_pitch]
  const Slice slice(seq, heads, qk_dim, v_dim);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int row0 = blockIdx.y * kRows;
  const int last_row = min(row0 + kRows, seq) - 1;

  load_rows(q_rows, qk_pitch, q + slice.qk_offset, slice.qk_stride, row0, kRows, seq, qk_dim);
  load_rows(dout_rows, v_pitch, dout + slice.v_offset, slice.v_stride, row0, kRows, seq, v_dim);
  float row_lse[kRowsPerWarp], row_delta[kRowsPerWarp], acc[kRowsPerWarp][kCols];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int i = row0 + warp * kRowsPerWarp + rr;
    row_lse[rr] = i <= last_row ? lse[slice.bh * seq + i] : 0.0f;
    row_delta[rr] = i <= last_row ? delta[slice.bh * seq + i] : 0.0f;
#pragma unroll
    for (int t = 0; t < kCols; ++t) acc[rr][t] = 0.0f;
  }

  for (int key0 = 0; key0 <= last_row; key0 += kTile) {
    __syncthreads();
    load_rows(k_tile, qk_pitch, k + slice.qk_offset, slice.qk_stride, key0, kTile, seq, qk_dim);
    load_rows(v_tile, v_pitch, v + slice.v_offset, slice.v_stride, key0, kTile, seq, v_dim);
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr, i = row0 + r;
      if (i > last_row || key0 > i) continue;  // warp-uniform
      const bool valid = key0 + lane <= i;
      float ds = 0.0f;
      if (valid) {
        const float s = dot(q_rows + r * qk_pitch, k_tile + lane * qk_pitch, qk_dim) * scale;
        const float dp = dot(dout_rows + r * v_pitch, v_tile + lane * v_pitch, v_dim);
        ds = expf(s - row_lse[rr]) * (dp - row_delta[rr]);
      }
      const int keys = min(kTile, i - key0 + 1);
      for (int jj = 0; jj < keys; ++jj) {
        const float ds_j = __shfl_sync(kFullMask, ds, jj);
        const float* k_row = k_tile + jj * qk_pitch;
#pragma unroll
        for (int t = 0; t < kCols; ++t) {
          const int c = lane + kWarpSize * t;
          if (c < qk_dim) acc[rr][t] = fmaf(ds_j, k_row[c], acc[rr][t]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int i = row0 + warp * kRowsPerWarp + rr;
    if (i > last_row) continue;
    T* dq_row = dq + slice.qk_offset + i * slice.qk_stride;
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int c = lane + kWarpSize * t;
      if (c < qk_dim) store(dq_row + c, acc[rr][t] * scale);
    }
  }
}

// ---- backward: dk, dv ------------------------------------------------------------------------

template <class T>
__global__ void __launch_bounds__(kThreads)
    simt_dkdv_kernel(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ dout,
                     const float* __restrict__ lse, const float* __restrict__ delta,
                     const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     int seq, int heads, int qk_dim, int v_dim, float scale) {
  extern __shared__ float smem[];
  const int qk_pitch = pitch_of(qk_dim), v_pitch = pitch_of(v_dim);
  float* k_rows = smem;                          // [kRows][qk_pitch]
  float* v_rows = k_rows + kRows * qk_pitch;     // [kRows][v_pitch]
  float* q_tile = v_rows + kRows * v_pitch;      // [kTile][qk_pitch]
  float* dout_tile = q_tile + kTile * qk_pitch;  // [kTile][v_pitch]
  float* lse_tile = dout_tile + kTile * v_pitch;  // [kTile]
  float* delta_tile = lse_tile + kTile;           // [kTile]
  const Slice slice(seq, heads, qk_dim, v_dim);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int row0 = blockIdx.y * kRows;  // first key of the block
  const int last_key = min(row0 + kRows, seq) - 1;

  load_rows(k_rows, qk_pitch, k + slice.qk_offset, slice.qk_stride, row0, kRows, seq, qk_dim);
  load_rows(v_rows, v_pitch, v + slice.v_offset, slice.v_stride, row0, kRows, seq, v_dim);
  float dk_acc[kRowsPerWarp][kCols], dv_acc[kRowsPerWarp][kCols];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr)
#pragma unroll
    for (int t = 0; t < kCols; ++t) dk_acc[rr][t] = dv_acc[rr][t] = 0.0f;

  for (int query0 = row0 / kTile * kTile; query0 < seq; query0 += kTile) {
    __syncthreads();
    load_rows(q_tile, qk_pitch, q + slice.qk_offset, slice.qk_stride, query0, kTile, seq, qk_dim);
    load_rows(dout_tile, v_pitch, dout + slice.v_offset, slice.v_stride, query0, kTile, seq,
              v_dim);
    if (threadIdx.x < kTile) {
      const int i = query0 + threadIdx.x;
      lse_tile[threadIdx.x] = i < seq ? lse[slice.bh * seq + i] : 0.0f;
      delta_tile[threadIdx.x] = i < seq ? delta[slice.bh * seq + i] : 0.0f;
    }
    __syncthreads();
    const int queries_end = min(kTile, seq - query0);  // tile rows holding real queries
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr, j = row0 + r;
      if (j > last_key || query0 + kTile - 1 < j) continue;  // warp-uniform
      const int i = query0 + lane;
      const bool valid = i >= j && i < seq;
      float p = 0.0f, ds = 0.0f;
      if (valid) {
        const float s = dot(q_tile + lane * qk_pitch, k_rows + r * qk_pitch, qk_dim) * scale;
        const float dp = dot(dout_tile + lane * v_pitch, v_rows + r * v_pitch, v_dim);
        p = expf(s - lse_tile[lane]);
        ds = p * (dp - delta_tile[lane]);
      }
      for (int ii = max(0, j - query0); ii < queries_end; ++ii) {
        const float p_i = __shfl_sync(kFullMask, p, ii);
        const float ds_i = __shfl_sync(kFullMask, ds, ii);
        const float* dout_row = dout_tile + ii * v_pitch;
        const float* q_row = q_tile + ii * qk_pitch;
#pragma unroll
        for (int t = 0; t < kCols; ++t) {
          const int c = lane + kWarpSize * t;
          if (c < v_dim) dv_acc[rr][t] = fmaf(p_i, dout_row[c], dv_acc[rr][t]);
          if (c < qk_dim) dk_acc[rr][t] = fmaf(ds_i, q_row[c], dk_acc[rr][t]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int j = row0 + warp * kRowsPerWarp + rr;
    if (j > last_key) continue;
    T* dk_row = dk + slice.qk_offset + j * slice.qk_stride;
    T* dv_row = dv + slice.v_offset + j * slice.v_stride;
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int c = lane + kWarpSize * t;
      if (c < qk_dim) store(dk_row + c, dk_acc[rr][t] * scale);
      if (c < v_dim) store(dv_row + c, dv_acc[rr][t]);
    }
  }
}

// Kernels whose shared memory can pass the 48 KiB default must opt in to more.
template <class Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
}

dim3 row_block_grid(const AttentionShape& shape) {
  const int64_t row_blocks = (shape.seq + kRows - 1) / kRows;
  FRUGAL_CUDA_REQUIRE(row_blocks <= 65535, "flash attention (simt): sequence too long for the grid");
  FRUGAL_CUDA_REQUIRE(shape.batch * shape.heads <= 0x7FFFFFFF,
                      "flash attention (simt): batch * heads too large for the grid");
  return dim3(static_cast<unsigned>(shape.batch * shape.heads), static_cast<unsigned>(row_blocks));
}

}  // namespace

template <class T>
void simt_fwd(T* out, float* lse, const T* q, const T* k, const T* v, const AttentionShape& shape,
              cudaStream_t stream) {
  const int qk_pitch = pitch_of(static_cast<int>(shape.qk_dim));
  const int v_pitch = pitch_of(static_cast<int>(shape.v_dim));
  const size_t bytes = sizeof(float) * ((kRows + kTile) * qk_pitch + kTile * v_pitch);
  allow_shared_bytes(simt_fwd_kernel<T>, bytes);
  simt_fwd_kernel<T><<<row_block_grid(shape), kThreads, bytes, stream>>>(
      out, lse, q, k, v, static_cast<int>(shape.seq), static_cast<int>(shape.heads),
      static_cast<int>(shape.qk_dim), static_cast<int>(shape.v_dim), shape.scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T>
void launch_delta(float* delta, const T* dout, const T* out, const AttentionShape& shape,
                  cudaStream_t stream) {
  const int64_t rows = shape.batch * shape.seq * shape.heads;
  const int64_t blocks = (rows + kDeltaWarps - 1) / kDeltaWarps;
  FRUGAL_CUDA_REQUIRE(blocks <= 0x7FFFFFFF, "flash attention: too many rows for the delta grid");
  delta_kernel<T><<<static_cast<unsigned>(blocks), kDeltaWarps * kWarpSize, 0, stream>>>(
      delta, dout, out, rows, static_cast<int>(shape.seq), static_cast<int>(shape.heads),
      static_cast<int>(shape.v_dim));
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T>
void simt_bwd(T* dq, T* dk, T* dv, const T* dout, const float* lse, const float* delta, const T* q,
              const T* k, const T* v, const AttentionShape& shape, cudaStream_t stream) {
  const int qk_pitch = pitch_of(static_cast<int>(shape.qk_dim));
  const int v_pitch = pitch_of(static_cast<int>(shape.v_dim));
  const int seq = static_cast<int>(shape.seq), heads = static_cast<int>(shape.heads);
  const int qk_dim = static_cast<int>(shape.qk_dim), v_dim = static_cast<int>(shape.v_dim);
  const dim3 grid = row_block_grid(shape);

  const size_t dq_bytes = sizeof(float) * ((kRows + kTile) * (qk_pitch + v_pitch));
  allow_shared_bytes(simt_dq_kernel<T>, dq_bytes);
  simt_dq_kernel<T><<<grid, kThreads, dq_bytes, stream>>>(dq, dout, lse, delta, q, k, v, seq,
                                                          heads, qk_dim, v_dim, shape.scale);
  FRUGAL_CUDA_CHECK_LAUNCH();

  const size_t dkdv_bytes = sizeof(float) * ((kRows + kTile) * (qk_pitch + v_pitch) + 2 * kTile);
  allow_shared_bytes(simt_dkdv_kernel<T>, dkdv_bytes);
  simt_dkdv_kernel<T><<<grid, kThreads, dkdv_bytes, stream>>>(dk, dv, dout, lse, delta, q, k, v,
                                                              seq, heads, qk_dim, v_dim,
                                                              shape.scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

#define INSTANTIATE(T)                                                                          \
  template void simt_fwd<T>(T*, float*, const T*, const T*, const T*, const AttentionShape&,    \
                            cudaStream_t);                                                      \
  template void launch_delta<T>(float*, const T*, const T*, const AttentionShape&,              \
                                cudaStream_t);                                                  \
  template void simt_bwd<T>(T*, T*, T*, const T*, const float*, const float*, const T*,         \
                            const T*, const T*, const AttentionShape&, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(__nv_bfloat16)
#undef INSTANTIATE

}  // namespace frugal::cuda::flash
