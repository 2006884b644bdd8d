// CUDA absorbed-MLA decode attention over the paged BF16 latent cache: the math, shapes and
// layouts of kernels/attention/mla_decode.h, BF16 q / cache / out, FP32 scores, online softmax
// and accumulation. Long sequences are split over several thread blocks (split-KV) and the
// partial results merged by their log-sum-exp, so a few rows still fill the GPU.
// All pointers are device pointers; page_table, row_sequence and lengths included.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/attention/mla_decode.h"

namespace frugal::cuda {

// Scratch bytes for the split-KV partials of this shape when the longest row has max_length
// positions (0 when no split is needed).
size_t mla_decode_workspace_bytes(const MlaDecodeShape& shape, int64_t max_length);

// workspace: at least mla_decode_workspace_bytes(shape, max_length) bytes, where max_length >=
// every lengths[r] (a bound the caller knows on the host, e.g. the longest sequence).
void mla_decode_attention(__nv_bfloat16* out, const __nv_bfloat16* q, const __nv_bfloat16* cache,
                          const int32_t* page_table, const int32_t* row_sequence,
                          const int32_t* lengths, const MlaDecodeShape& shape,
                          int64_t max_length, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream);

}  // namespace frugal::cuda
