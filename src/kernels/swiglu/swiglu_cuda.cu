// CUDA SwiGLU (see swiglu.h), elementwise over [rows, cols] with g, u (and dg, du) at row stride
// ld_in and h at row stride cols; T is float or bf16, arithmetic in fp32:
//   h = silu(g) * u,   dg = dh * u * sig * (1 + g * (1 - sig)),   du = dh * silu(g)
// fwd / bwd: grid-stride loop over chunks of 8 values of a row (vector loads and stores when every
// row start is 16-byte aligned, element by element otherwise and in a row's last partial chunk).
// fwd_quant: h is never stored; the 1x128 quantizer of quant_tile.cuh reads it from g and u, so the
// codes and scales are those of cpu::quantize_act_1x128 applied to the fp32 h of swiglu_fwd<float>.
// The arithmetic is swiglu_math.cuh's (the CPU's overflow-free sigmoid with expf), so results agree
// with the CPU to a few ulp. The flat fp32 forms are the 2-D forms with one row.
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant_tile.cuh"
#include "kernels/swiglu/swiglu.h"
#include "kernels/swiglu/swiglu_math.cuh"

namespace frugal::cuda {
namespace {

using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;

constexpr int kThreads = 256;

using detail::swiglu_grad;
using detail::swiglu_value;

// Chunk i of a [rows, cols] matrix cut into ceil(cols/8) chunks per row.
struct ChunkPlace {
  int64_t row, col, valid;
};
__device__ __forceinline__ ChunkPlace chunk_place(int64_t i, int64_t chunks_per_row, int64_t cols) {
  const int64_t row = i / chunks_per_row;
  const int64_t col = (i - row * chunks_per_row) * kChunk;
  return {row, col, detail::min64(kChunk, cols - col)};
}

template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    swiglu_fwd_kernel(T* __restrict__ h, const T* __restrict__ g, const T* __restrict__ u,
                      int64_t rows, int64_t cols, int64_t ld_in) {
  const int64_t chunks_per_row = ceil_div(cols, kChunk);
  const int64_t total = rows * chunks_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += stride) {
    const ChunkPlace p = chunk_place(i, chunks_per_row, cols);
    float gv[kChunk], uv[kChunk], hv[kChunk];
    detail::load_chunk<kVector>(gv, g + p.row * ld_in + p.col, p.valid);
    detail::load_chunk<kVector>(uv, u + p.row * ld_in + p.col, p.valid);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) hv[j] = swiglu_value(gv[j], uv[j]);
    detail::store_chunk<kVector>(h + p.row * cols + p.col, hv, p.valid);
  }
}

template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    swiglu_bwd_kernel(T* __restrict__ dg, T* __restrict__ du, const T* __restrict__ dh,
                      const T* __restrict__ g, const T* __restrict__ u, int64_t rows, int64_t cols,
                      int64_t ld_in) {
  const int64_t chunks_per_row = ceil_div(cols, kChunk);
  const int64_t total = rows * chunks_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += stride) {
    const ChunkPlace p = chunk_place(i, chunks_per_row, cols);
    const int64_t in = p.row * ld_in + p.col;
    float dhv[kChunk], gv[kChunk], uv[kChunk], dgv[kChunk], duv[kChunk];
    detail::load_chunk<kVector>(dhv, dh + p.row * cols + p.col, p.valid);
    detail::load_chunk<kVector>(gv, g + in, p.valid);
    detail::load_chunk<kVector>(uv, u + in, p.valid);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) swiglu_grad(dhv[j], gv[j], uv[j], dgv[j], duv[j]);
    detail::store_chunk<kVector>(dg + in, dgv, p.valid);
    detail::store_chunk<kVector>(du + in, duv, p.valid);
  }
}

// h values for act_quant_kernel, computed from g and u.
template <class T, bool kVector>
struct SwigluSource {
  const T* g;
  const T* u;
  int64_t ld_in;
  __device__ void load(float (&v)[kChunk], int64_t row, int64_t col, int64_t valid) const {
    float gv[kChunk], uv[kChunk];
    detail::load_chunk<kVector>(gv, g + row * ld_in + col, valid);
    detail::load_chunk<kVector>(uv, u + row * ld_in + col, valid);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) v[j] = swiglu_value(gv[j], uv[j]);
  }
};

unsigned grid_for(int64_t rows, int64_t cols) {
  return detail::grid_stride_blocks(rows * ceil_div(cols, kChunk), kThreads);
}

// Every row start of a [rows, ld] array at p is 16-byte aligned (one row: only p matters).
template <class T>
bool rows_aligned(const T* p, int64_t rows, int64_t ld) {
  return aligned_to(p, 16) && (rows == 1 || ld % kChunk == 0);
}

}  // namespace

template <class T>
void swiglu_fwd(T* h, const T* g, const T* u, int64_t rows, int64_t cols, int64_t ld_in,
                cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && ld_in >= cols,
                      "cuda::swiglu_fwd: needs rows >= 0, cols >= 0 and ld_in >= cols");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(h != nullptr && g != nullptr && u != nullptr, "cuda::swiglu_fwd: null pointer");
  const bool vector = rows_aligned(h, rows, cols) && rows_aligned(g, rows, ld_in) &&
                      rows_aligned(u, rows, ld_in);
  if (vector)
    swiglu_fwd_kernel<T, true><<<grid_for(rows, cols), kThreads, 0, stream>>>(h, g, u, rows, cols, ld_in);
  else
    swiglu_fwd_kernel<T, false><<<grid_for(rows, cols), kThreads, 0, stream>>>(h, g, u, rows, cols, ld_in);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T>
void swiglu_bwd(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t rows, int64_t cols,
                int64_t ld_in, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && ld_in >= cols,
                      "cuda::swiglu_bwd: needs rows >= 0, cols >= 0 and ld_in >= cols");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(dg != nullptr && du != nullptr && dh != nullptr && g != nullptr && u != nullptr,
                      "cuda::swiglu_bwd: null pointer");
  const bool vector = rows_aligned(dg, rows, ld_in) && rows_aligned(du, rows, ld_in) &&
                      rows_aligned(dh, rows, cols) && rows_aligned(g, rows, ld_in) &&
                      rows_aligned(u, rows, ld_in);
  if (vector)
    swiglu_bwd_kernel<T, true><<<grid_for(rows, cols), kThreads, 0, stream>>>(dg, du, dh, g, u, rows,
                                                                             cols, ld_in);
  else
    swiglu_bwd_kernel<T, false><<<grid_for(rows, cols), kThreads, 0, stream>>>(dg, du, dh, g, u, rows,
                                                                              cols, ld_in);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T>
void swiglu_fwd_quant(uint8_t* q, float* scales, const T* g, const T* u, int64_t rows, int64_t cols,
                      int64_t ld_in, bool power_of_two_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && ld_in >= cols,
                      "cuda::swiglu_fwd_quant: needs rows >= 0, cols >= 0 and ld_in >= cols");
  if (rows == 0 || cols == 0) return;
  FRUGAL_CUDA_REQUIRE(q != nullptr && scales != nullptr && g != nullptr && u != nullptr,
                      "cuda::swiglu_fwd_quant: null pointer");
  // The quantizer reads whole chunks of a tile: every row start must be aligned, one row or many.
  const bool vector = cols % kChunk == 0 && ld_in % kChunk == 0 && aligned_to(g, 16) &&
                      aligned_to(u, 16) && aligned_to(q, 8);
  const dim3 blocks = detail::act_quant_grid(rows, cols);
  if (vector)
    detail::act_quant_kernel<SwigluSource<T, true>, true, false>
        <<<blocks, detail::kActQuantThreads, 0, stream>>>(
            q, scales, SwigluSource<T, true>{g, u, ld_in}, rows, cols, nullptr, 0,
            power_of_two_scale);
  else
    detail::act_quant_kernel<SwigluSource<T, false>, false, false>
        <<<blocks, detail::kActQuantThreads, 0, stream>>>(
            q, scales, SwigluSource<T, false>{g, u, ld_in}, rows, cols, nullptr, 0,
            power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void swiglu_fwd(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::swiglu_fwd: negative size");
  if (n == 0) return;
  swiglu_fwd<float>(h, g, u, 1, n, n, stream);
}

void swiglu_bwd(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::swiglu_bwd: negative size");
  if (n == 0) return;
  swiglu_bwd<float>(dg, du, dh, g, u, 1, n, n, stream);
}

#define FRUGAL_INSTANTIATE_SWIGLU(T)                                                              \
  template void swiglu_fwd<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, cudaStream_t);  \
  template void swiglu_bwd<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,   \
                              cudaStream_t);                                                     \
  template void swiglu_fwd_quant<T>(uint8_t*, float*, const T*, const T*, int64_t, int64_t,      \
                                    int64_t, bool, cudaStream_t);
FRUGAL_INSTANTIATE_SWIGLU(float)
FRUGAL_INSTANTIATE_SWIGLU(__nv_bfloat16)
#undef FRUGAL_INSTANTIATE_SWIGLU

}  // namespace frugal::cuda
