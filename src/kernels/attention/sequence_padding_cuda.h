// Copies a batch of sequences into buffers of another sequence length (the cuDNN attention
// backward on cuDNN < 9.16 pads its sequences to a multiple of 128, cudnn_attention.cc):
//   src [outer, src_rows, row_bytes] -> dst [outer, dst_rows, row_bytes]
// Rows below min(src_rows, dst_rows) are copied; rows from src_rows to dst_rows are zeroed.
// row_bytes must be a multiple of 4; dst and src must not overlap.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

void copy_padded_rows(void* dst, int64_t dst_rows, const void* src, int64_t src_rows,
                      int64_t outer, int64_t row_bytes, cudaStream_t stream);

}  // namespace frugal::cuda
