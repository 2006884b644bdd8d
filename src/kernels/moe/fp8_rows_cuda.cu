// CUDA row and scale gathers for FP8 payloads (see fp8_rows.h). One warp per row for the bytes
// (16-byte words when every row start and length allow it, else bytes); one thread per (row, tile)
// scale, grid-stride.
#include "kernels/moe/fp8_rows.h"

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"

namespace frugal::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = kThreads / kWarpSize;

template <class Word>
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(Word* __restrict__ dst, int64_t dst_stride, const Word* __restrict__ src,
                       int64_t src_stride, const int32_t* __restrict__ index, int64_t rows,
                       int64_t row_words) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (r >= rows) return;
  const int64_t s = index != nullptr ? index[r] : r;
  Word* out = dst + r * dst_stride;
  if (s < 0) {
    for (int64_t i = lane; i < row_words; i += kWarpSize) out[i] = Word{};
    return;
  }
  const Word* in = src + s * src_stride;
  for (int64_t i = lane; i < row_words; i += kWarpSize) out[i] = in[i];
}

__global__ void __launch_bounds__(kThreads)
    gather_scales_kernel(float* __restrict__ dst, int64_t dst_row_stride, int64_t dst_tile_stride,
                         const float* __restrict__ src, int64_t src_row_stride,
                         int64_t src_tile_stride, const int32_t* __restrict__ index, int64_t rows,
                         int64_t tiles, float pad_scale) {
  const int64_t total = rows * tiles;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t r = i / tiles, t = i % tiles;
    const int64_t s = index != nullptr ? index[r] : r;
    dst[r * dst_row_stride + t * dst_tile_stride] =
        s < 0 ? pad_scale : src[s * src_row_stride + t * src_tile_stride];
  }
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

void gather_byte_rows(uint8_t* dst, int64_t dst_stride, const uint8_t* src, int64_t src_stride,
                      const int32_t* index, int64_t rows, int64_t row_bytes, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && row_bytes >= 0 && dst_stride >= row_bytes &&
                          src_stride >= row_bytes,
                      "gather_byte_rows: negative size or a stride shorter than a row");
  if (rows == 0 || row_bytes == 0) return;
  FRUGAL_CUDA_REQUIRE(dst != nullptr && src != nullptr, "gather_byte_rows: null pointer");
  const unsigned blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  if (row_bytes % 16 == 0 && dst_stride % 16 == 0 && src_stride % 16 == 0 && aligned16(dst) &&
      aligned16(src)) {
    gather_rows_kernel<uint4><<<blocks, kThreads, 0, stream>>>(
        reinterpret_cast<uint4*>(dst), dst_stride / 16, reinterpret_cast<const uint4*>(src),
        src_stride / 16, index, rows, row_bytes / 16);
  } else {
    gather_rows_kernel<uint8_t><<<blocks, kThreads, 0, stream>>>(dst, dst_stride, src, src_stride,
                                                                 index, rows, row_bytes);
  }
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void gather_scales(float* dst, int64_t dst_row_stride, int64_t dst_tile_stride, const float* src,
                   int64_t src_row_stride, int64_t src_tile_stride, const int32_t* index,
                   int64_t rows, int64_t tiles, float pad_scale, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && tiles >= 0, "gather_scales: negative size");
  if (rows == 0 || tiles == 0) return;
  FRUGAL_CUDA_REQUIRE(dst != nullptr && src != nullptr, "gather_scales: null pointer");
  const int64_t total = rows * tiles;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
  gather_scales_kernel<<<blocks, kThreads, 0, stream>>>(dst, dst_row_stride, dst_tile_stride, src,
                                                        src_row_stride, src_tile_stride, index,
                                                        rows, tiles, pad_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
