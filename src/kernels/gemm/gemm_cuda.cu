// Small kernels around the cuBLASLt GEMMs (see gemm_cuda_internal.h):
//   scale_matrix      c[batch][rows][cols] = beta * c (exact zeros for beta == 0), for K == 0
//                     products and the Wgrad of experts that received no tokens.
//   pad_block_scales  128x128 weight block scales [matrices][row_blocks][k_blocks] copied to the
//                     layout cuBLASLt's BLK128x128_32F mode reads, K blocks padded to a multiple
//                     of 4: [matrices][row_blocks][round_up(k_blocks, 4)].
// The cuBLASLt calls themselves live in gemm_cublaslt.cc and gemm_fp8_cublaslt.cc (host code).
#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/gemm/gemm_cuda_internal.h"

namespace frugal::cuda::gemm_detail {
namespace {

constexpr int kThreads = 256;

template <class T>
__device__ inline T scaled(T value, float beta);
template <>
__device__ inline float scaled<float>(float value, float beta) {
  return beta == 0.0f ? 0.0f : value * beta;
}
template <>
__device__ inline __nv_bfloat16 scaled<__nv_bfloat16>(__nv_bfloat16 value, float beta) {
  return __float2bfloat16(beta == 0.0f ? 0.0f : __bfloat162float(value) * beta);
}

// One thread per element of one batch entry (blockIdx.y); grid-stride over rows * cols.
template <class T>
__global__ void scale_matrix_kernel(T* __restrict__ c, int64_t rows, int64_t cols, int64_t ldc,
                                    int64_t stride_c, float beta) {
  T* matrix = c + static_cast<int64_t>(blockIdx.y) * stride_c;
  const int64_t count = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / cols, col = i % cols;
    T& value = matrix[row * ldc + col];
    value = scaled(value, beta);
  }
}

__global__ void pad_block_scales_kernel(float* __restrict__ dst, const float* __restrict__ src,
                                        int64_t rows, int64_t k_blocks, int64_t k_blocks_padded) {
  // rows = matrices * row_blocks: every (matrix, row block) is one row of scales.
  const int64_t count = rows * k_blocks_padded;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / k_blocks_padded, kb = i % k_blocks_padded;
    dst[i] = kb < k_blocks ? src[row * k_blocks + kb] : 0.0f;
  }
}

unsigned grid_for(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

void scale_matrix(void* c, DataType c_type, int64_t rows, int64_t cols, int64_t ldc, int64_t batch,
                  int64_t stride_c, float beta, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && cols >= 0 && batch >= 0, "scale_matrix: negative extent");
  FRUGAL_CUDA_REQUIRE(batch <= 65535, "scale_matrix: more than 65535 matrices");
  if (rows == 0 || cols == 0 || batch == 0) return;
  const dim3 grid(grid_for(rows * cols), static_cast<unsigned>(batch));
  if (c_type == DataType::F32) {
    scale_matrix_kernel<<<grid, kThreads, 0, stream>>>(static_cast<float*>(c), rows, cols, ldc,
                                                       stride_c, beta);
  } else if (c_type == DataType::BF16) {
    scale_matrix_kernel<<<grid, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(c), rows, cols,
                                                       ldc, stride_c, beta);
  } else {
    FRUGAL_CUDA_REQUIRE(false, "scale_matrix: the output must be F32 or BF16");
  }
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void pad_block_scales(float* dst, const float* src, int64_t matrices, int64_t row_blocks,
                      int64_t k_blocks, int64_t k_blocks_padded, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(k_blocks_padded >= k_blocks, "pad_block_scales: padded width too small");
  const int64_t rows = matrices * row_blocks;
  if (rows == 0 || k_blocks_padded == 0) return;
  pad_block_scales_kernel<<<grid_for(rows * k_blocks_padded), kThreads, 0, stream>>>(
      dst, src, rows, k_blocks, k_blocks_padded);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda::gemm_detail
