// The small kernels of the GPU generation model (see gpu_inference_kernels.cuh). One thread per
// element, grid-stride; no reductions, so the results are exact copies / roundings.
#include "infer/gpu/gpu_inference_kernels.cuh"

#include "core/cuda_check.h"

namespace frugal::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

__global__ void write_latent_entries_kernel(__nv_bfloat16* __restrict__ pool,
                                            const float* __restrict__ c, int64_t ld_c,
                                            const float* __restrict__ k_pe, int64_t ld_pe,
                                            const int32_t* __restrict__ page_table,
                                            const int32_t* __restrict__ row_sequence,
                                            const int32_t* __restrict__ positions, int64_t rows,
                                            int64_t kv_lora, int64_t rope, int64_t layers,
                                            int64_t layer, int64_t page_size, int64_t max_pages) {
  const int64_t entry = kv_lora + rope;
  const int64_t total = rows * entry;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / entry, e = i % entry;
    const int64_t position = positions[r];
    const int64_t page = page_table[static_cast<int64_t>(row_sequence[r]) * max_pages +
                                    position / page_size];
    const int64_t slot = ((page * layers + layer) * page_size + position % page_size) * entry;
    const float value = e < kv_lora ? c[r * ld_c + e] : k_pe[r * ld_pe + (e - kv_lora)];
    pool[slot + e] = __float2bfloat16_rn(value);
  }
}

__global__ void gather_rows_kernel(__nv_bfloat16* __restrict__ out,
                                   const __nv_bfloat16* __restrict__ in,
                                   const int32_t* __restrict__ index, int64_t count,
                                   int64_t cols) {
  const int64_t total = count * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, col = i % cols;
    out[i] = in[static_cast<int64_t>(index[r]) * cols + col];
  }
}

}  // namespace

void write_latent_entries(__nv_bfloat16* pool, const float* c, int64_t ld_c, const float* k_pe,
                          int64_t ld_pe, const int32_t* page_table, const int32_t* row_sequence,
                          const int32_t* positions, int64_t rows, int64_t kv_lora, int64_t rope,
                          int64_t layers, int64_t layer, int64_t page_size, int64_t max_pages,
                          cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && kv_lora >= 1 && rope >= 0 && layers >= 1 && layer >= 0 &&
                          layer < layers && page_size >= 1 && max_pages >= 1,
                      "write_latent_entries: bad shape");
  FRUGAL_CUDA_REQUIRE(ld_c >= kv_lora && ld_pe >= rope, "write_latent_entries: bad row strides");
  if (rows == 0) return;
  write_latent_entries_kernel<<<blocks_for(rows * (kv_lora + rope)), kThreads, 0, stream>>>(
      pool, c, ld_c, k_pe, ld_pe, page_table, row_sequence, positions, rows, kv_lora, rope,
      layers, layer, page_size, max_pages);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void gather_rows(__nv_bfloat16* out, const __nv_bfloat16* in, const int32_t* index, int64_t count,
                 int64_t cols, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(count >= 0 && cols >= 1, "gather_rows: bad shape");
  if (count == 0) return;
  gather_rows_kernel<<<blocks_for(count * cols), kThreads, 0, stream>>>(out, in, index, count,
                                                                       cols);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
