// Dense and grouped GEMMs on the GPU through cuBLASLt: FP32, BF16 and DeepSeek-V3's block-scaled
// FP8 (spec §4, DESIGN.md "Numerics"). Row-major semantics everywhere, like cpu::gemm_strided.
//
// Linear layers (y = x W^T, W [N,K]) map onto these calls:
//   Fprop   y[M,N]   = x[M,K]  · W[N,K]^T       gemm(trans_b=true)   | gemm_fp8_nt(x_q, W_q)
//   Dgrad   dx[M,K]  = dy[M,N] · W[N,K]         gemm()               | gemm_fp8_nt(dy_q, WT_q)
//   Wgrad   dW[N,K] += dy[M,N]^T · x[M,K]       gemm(trans_a=true)   | gemm_fp8_nt(dyT_q, xT_q)
// FP8 operands are always E4M3 row-major with K (the reduction) contiguous, which is the only
// layout the tensor cores take: Dgrad reads the transposed weight WT [K,N] (quantized once per
// optimizer step next to W), Wgrad reads dy^T [N,M] and x^T [K,M] quantized in 1x128 tiles along M
// (the 128x1 tiles of the spec), made by cuda::transpose_quantize_1x128 (kernels/quant).
// Scale layouts are those of kernels/quant/quant.h: tiles [ceil(K/128)][rows] (rows fastest),
// blocks [ceil(rows/128)][ceil(K/128)].
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace frugal::cuda {

enum class DataType { F32, BF16, E4M3 };

// The cuBLASLt handle and one workspace, made once and reused by every call on one stream.
class BlasHandle {
 public:
  explicit BlasHandle(size_t workspace_bytes = size_t{64} << 20);
  ~BlasHandle();
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// C[M,N] = alpha * op(A) · op(B) + beta * C, row-major with leading dimensions lda/ldb/ldc.
// A and B are both F32 or both BF16; C is F32 or BF16. F32 inputs compute in true FP32 (no TF32:
// the fp32 recipe must match the CPU); BF16 inputs accumulate in FP32.
void gemm(BlasHandle& blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
          float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, DataType ab_type,
          float beta, void* c, int64_t ldc, DataType c_type, cudaStream_t stream);

// `batch` independent GEMMs at element strides stride_a/b/c (same rules as gemm).
void gemm_batched(BlasHandle& blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const void* a, int64_t lda, int64_t stride_a, const void* b,
                  int64_t ldb, int64_t stride_b, DataType ab_type, float beta, void* c,
                  int64_t ldc, int64_t stride_c, DataType c_type, int64_t batch,
                  cudaStream_t stream);

// How an FP8 operand of shape [rows, K] is scaled.
enum class Fp8Scaling {
  Tile1x128,     // scales [ceil(K/128)][rows]            (activations, gradients, transposes)
  Block128x128,  // scales [ceil(rows/128)][ceil(K/128)]  (weights)
};

// C[M,N] = A[M,K] · B[N,K]^T + beta * C with E4M3 operands, FP32 accumulation; C is BF16 or F32.
// A is scaled in 1x128 tiles; B in 128x128 blocks (Fprop, Dgrad) or 1x128 tiles (Wgrad).
void gemm_fp8_nt(BlasHandle& blas, int64_t m, int64_t n, int64_t k, const uint8_t* a,
                 const float* a_scales, const uint8_t* b, const float* b_scales,
                 Fp8Scaling b_scaling, float beta, void* c, int64_t ldc, DataType c_type,
                 cudaStream_t stream);

// Grouped GEMMs of an MoE layer: group g (an expert) owns rows [offsets[g], offsets[g+1]) of the
// permuted token matrix; `host_offsets` [groups+1] is on the host (the layer copies its expert
// counts once, not once per expert). Empty groups are skipped. Weights of group g start at
// element g * N * K of `w` (the experts' [N,K] matrices stacked).
//   grouped_gemm_nt   y[rows,N]        = x[rows,K] · W_g^T          (Fprop)
//   grouped_gemm_nn   dx[rows,K]       = dy[rows,N] · W_g           (Dgrad)
//   grouped_gemm_tn   dW_g[N,K] (+)= dy_g^T · x_g                   (Wgrad; accumulate: beta 1)
// x/dy/w share `ab_type` (F32 or BF16); outputs are `c_type`.
void grouped_gemm_nt(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                     int64_t k, const void* x, const void* w, DataType ab_type, void* y,
                     DataType c_type, cudaStream_t stream);
void grouped_gemm_nn(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                     int64_t k, const void* dy, const void* w, DataType ab_type, void* dx,
                     DataType c_type, cudaStream_t stream);
void grouped_gemm_tn(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                     int64_t k, const void* dy, const void* x, DataType ab_type, void* dw,
                     DataType c_type, bool accumulate, cudaStream_t stream);

// FP8 grouped Fprop/Dgrad: A rows quantized per group (group g's tile scales start at
// a_scales + offsets[g] * ceil(K/128), laid out [ceil(K/128)][rows_g]); B_g block-scaled at
// b + g*N*K with scales at b_scales + g * ceil(N/128) * ceil(K/128). Offsets must be multiples of
// kFp8GroupRowAlign (the permutation pads each expert with zero rows).
constexpr int64_t kFp8GroupRowAlign = 128;
void grouped_gemm_fp8_nt(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                         int64_t k, const uint8_t* a, const float* a_scales, const uint8_t* b,
                         const float* b_scales, void* c, DataType c_type, cudaStream_t stream);
// FP8 grouped Wgrad: dW_g[N,K] (+)= dyT_g[N,rows_g] · xT_g[K,rows_g]^T, both tile-scaled along
// rows. dyT_g starts at dyT + offsets[g]*N with scales at dyT_scales + offsets[g]/128*N (layout
// [rows_g/128][N]); xT_g likewise with K. Made by cuda::transpose_quantize_1x128_grouped.
void grouped_gemm_fp8_wgrad(BlasHandle& blas, int64_t groups, const int64_t* host_offsets,
                            int64_t n, int64_t k, const uint8_t* dyT, const float* dyT_scales,
                            const uint8_t* xT, const float* xT_scales, float* dw, bool accumulate,
                            cudaStream_t stream);

}  // namespace frugal::cuda
