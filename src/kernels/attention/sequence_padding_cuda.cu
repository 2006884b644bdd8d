// copy_padded_rows (sequence_padding_cuda.h): one thread per 16-byte (or 4-byte) unit of the
// destination, grid-stride; a unit past the source's rows is written as zeros.
#include "kernels/attention/sequence_padding_cuda.h"

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"

namespace frugal::cuda {
namespace {

template <class Unit>
__global__ void copy_padded_rows_kernel(Unit* __restrict__ dst, int64_t dst_rows,
                                        const Unit* __restrict__ src, int64_t src_rows,
                                        int64_t outer, int64_t row_units) {
  const int64_t total = outer * dst_rows * row_units;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t unit = i % row_units, row = (i / row_units) % dst_rows;
    const int64_t seq = i / (row_units * dst_rows);
    dst[i] = row < src_rows ? src[(seq * src_rows + row) * row_units + unit] : Unit{};
  }
}

}  // namespace

void copy_padded_rows(void* dst, int64_t dst_rows, const void* src, int64_t src_rows,
                      int64_t outer, int64_t row_bytes, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(dst_rows >= 0 && src_rows >= 0 && outer >= 0 && row_bytes >= 0 &&
                          row_bytes % 4 == 0,
                      "cuda::copy_padded_rows: negative extent, or row bytes not a multiple of 4");
  if (outer == 0 || dst_rows == 0 || row_bytes == 0) return;
  FRUGAL_CUDA_REQUIRE(dst != nullptr && (src != nullptr || src_rows == 0),
                      "cuda::copy_padded_rows: null pointer");
  const bool wide = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(src) % 16 == 0;
  const int64_t unit_bytes = wide ? 16 : 4, row_units = row_bytes / unit_bytes;
  const int64_t total = outer * dst_rows * row_units;
  constexpr int kThreads = 256;
  constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond this
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks));
  if (wide)
    copy_padded_rows_kernel<<<blocks, kThreads, 0, stream>>>(
        static_cast<uint4*>(dst), dst_rows, static_cast<const uint4*>(src), src_rows, outer,
        row_units);
  else
    copy_padded_rows_kernel<<<blocks, kThreads, 0, stream>>>(
        static_cast<uint32_t*>(dst), dst_rows, static_cast<const uint32_t*>(src), src_rows, outer,
        row_units);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
