// Small CUDA kernels of the GPU generation model (gpu_inference_model.cc) that no training kernel
// covers:
//   write_latent_entries  the row's cache entry [c ; k_pe] (fp32 in, BF16 out) into the paged
//                         pool [num_pages, layers, page_size, entry_dim] at (sequence, position)
//   gather_rows           out[i, :] = in[index[i], :]  (the rows whose logits are asked for)
// Device pointers, asynchronous on `stream`. CUDA builds only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

// Row r: c [rows, kv_lora] (row stride ld_c), k_pe [rows, rope] (row stride ld_pe), its sequence
// row_sequence[r] (a row of page_table [sequences, max_pages]) and its position positions[r].
void write_latent_entries(__nv_bfloat16* pool, const float* c, int64_t ld_c, const float* k_pe,
                          int64_t ld_pe, const int32_t* page_table, const int32_t* row_sequence,
                          const int32_t* positions, int64_t rows, int64_t kv_lora, int64_t rope,
                          int64_t layers, int64_t layer, int64_t page_size, int64_t max_pages,
                          cudaStream_t stream);

// out [count, cols] = in[index[i], :] for i < count (in [*, cols]).
void gather_rows(__nv_bfloat16* out, const __nv_bfloat16* in, const int32_t* index, int64_t count,
                 int64_t cols, cudaStream_t stream);

}  // namespace frugal::cuda
