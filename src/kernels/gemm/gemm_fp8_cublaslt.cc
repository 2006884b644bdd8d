// Block-scaled FP8 GEMMs through cuBLASLt (gemm_cuda.h): gemm_fp8_nt and its grouped (MoE) forms.
//
//   C[M,N] = A[M,K] · B[N,K]^T + beta * C,   A, B E4M3 row-major (K contiguous), FP32 accumulation.
//
// One column-major cuBLASLt call (see gemm_cuda_internal.h): cuBLASLt's A = our B with TRANSA=T
// and scale mode BLK128x128_32F (weights) or VEC128_32F (Wgrad's x^T tiles); cuBLASLt's B = our A
// with TRANSB=N and VEC128_32F; D column-major [N,M] = our C. Scale layouts cuBLASLt reads:
//   VEC128_32F      [ceil(K/128)][rows], rows fastest: exactly quant.h's 1x128 tile layout.
//   BLK128x128_32F  [ceil(rows/128)][round_up(ceil(K/128), 4)]: quant.h's block layout when
//                   ceil(K/128) is a multiple of 4, else copied into a padded scratch first
//                   (PyTorch's cuBLASLt integration, pytorch#166752, reports wrong results without
//                   the padding).
// Shape rules (from the cuBLASLt tensor-core requirements as NVIDIA's TransformerEngine enforces
// them for these modes): K a multiple of 16, M and N multiples of 8, operands, C and scales
// 16-byte aligned, ldc * sizeof(C) a multiple of 16. Calls outside them throw frugal::Error.
//
// Host code only (see gemm_cublaslt.cc). Only in builds with the CUDA backend.
#ifdef FRUGAL_HAVE_CUDA

#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/error.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/gemm/gemm_cuda_internal.h"
#include "kernels/quant/quant.h"

namespace frugal::cuda {

using gemm_detail::MatmulCall;
using gemm_detail::VaryingDim;

namespace {

constexpr int64_t kBlockScaleKPadding = 4;  // BLK128x128 scales: K blocks padded to this multiple

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

bool aligned16(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
}

size_t c_bytes(DataType type) {
  return type == DataType::F32 ? 4 : 2;
}

// One FP8 GEMM whose B scales are already in cuBLASLt's layout (padded for blocks).
void fp8_gemm(BlasHandle& blas, int64_t m, int64_t n, int64_t k, const uint8_t* a,
              const float* a_scales, const uint8_t* b, const float* b_scales_cublas,
              Fp8Scaling b_scaling, float beta, void* c, int64_t ldc, DataType c_type,
              VaryingDim varying, cudaStream_t stream, const char* what, int lane = -1) {
  FRUGAL_CHECK(c_type == DataType::F32 || c_type == DataType::BF16,
               "{}: C must be F32 or BF16, got {}", what, gemm_detail::type_name(c_type));
  FRUGAL_CHECK(m >= 0 && n >= 0 && k >= 0, "{}: negative extent (m={} n={} k={})", what, m, n, k);
  FRUGAL_CHECK(m % 8 == 0, "{}: M={} must be a multiple of 8 (cuBLASLt's 1x128-scaled FP8 operand)",
               what, m);
  FRUGAL_CHECK(n % 8 == 0, "{}: N={} must be a multiple of 8 (cuBLASLt FP8 GEMM)", what, n);
  FRUGAL_CHECK(k % 16 == 0,
               "{}: K={} must be a multiple of 16 (FP8 rows must be 16-byte aligned for cuBLASLt)",
               what, k);
  FRUGAL_CHECK(ldc >= std::max<int64_t>(1, n), "{}: ldc={} is smaller than N={}", what, ldc, n);
  FRUGAL_CHECK(ldc * static_cast<int64_t>(c_bytes(c_type)) % 16 == 0,
               "{}: ldc={} must give 16-byte aligned rows of {} C", what, ldc,
               gemm_detail::type_name(c_type));
  if (m == 0 || n == 0) return;
  FRUGAL_CHECK(c != nullptr && aligned16(c), "{}: C must be non-null and 16-byte aligned", what);
  if (k == 0) {  // an empty sum: C = beta * C
    gemm_detail::scale_matrix(c, c_type, m, n, ldc, 1, 0, beta, stream);
    return;
  }
  FRUGAL_CHECK(a != nullptr && b != nullptr && a_scales != nullptr && b_scales_cublas != nullptr,
               "{}: an operand or scale pointer is null", what);
  FRUGAL_CHECK(aligned16(a) && aligned16(b), "{}: FP8 operands must be 16-byte aligned (A {} B {})",
               what, static_cast<const void*>(a), static_cast<const void*>(b));
  FRUGAL_CHECK(aligned16(a_scales) && aligned16(b_scales_cublas),
               "{}: scale arrays must be 16-byte aligned (A scales {} B scales {})", what,
               static_cast<const void*>(a_scales), static_cast<const void*>(b_scales_cublas));

  MatmulCall call;
  call.a_type = call.b_type = CUDA_R_8F_E4M3;
  call.c_type = gemm_detail::to_cuda_type(c_type);
  call.trans_a = CUBLAS_OP_T;  // cuBLASLt's A = our B [N,K] row-major = column-major [K,N]
  call.trans_b = CUBLAS_OP_N;  // cuBLASLt's B = our A [M,K] row-major = column-major [K,M]
  call.a_scale_mode = b_scaling == Fp8Scaling::Block128x128
                          ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                          : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  call.b_scale_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  call.m = n;
  call.n = m;
  call.k = k;
  call.lda = k;
  call.ldb = k;
  call.ldc = ldc;
  call.a = b;
  call.b = a;
  call.c = c;
  call.a_scales = b_scales_cublas;
  call.b_scales = a_scales;
  call.alpha = 1.0f;
  call.beta = beta;
  blas.impl().run(call, varying, stream, what, lane);
}

// The 128x128 block scales of `matrices` stacked [rows, K] weights in cuBLASLt's layout: the
// caller's array when ceil(K/128) is a multiple of 4, else a padded copy in the handle's scratch.
// Returns the array and its per-matrix stride in floats.
std::pair<const float*, int64_t> block_scales_for_cublas(BlasHandle& blas, const float* scales,
                                                         int64_t matrices, int64_t rows, int64_t k,
                                                         cudaStream_t stream) {
  const int64_t row_blocks = fp8_block_count(rows), k_blocks = fp8_block_count(k);
  if (k_blocks % kBlockScaleKPadding == 0 || matrices == 0 || scales == nullptr)
    return {scales, row_blocks * k_blocks};
  const int64_t padded = round_up(k_blocks, kBlockScaleKPadding);
  float* scratch =
      blas.impl().scratch_floats(static_cast<size_t>(matrices * row_blocks * padded), stream);
  gemm_detail::pad_block_scales(scratch, scales, matrices, row_blocks, k_blocks, padded, stream);
  return {scratch, row_blocks * padded};
}

}  // namespace

void gemm_fp8_nt(BlasHandle& blas, int64_t m, int64_t n, int64_t k, const uint8_t* a,
                 const float* a_scales, const uint8_t* b, const float* b_scales,
                 Fp8Scaling b_scaling, float beta, void* c, int64_t ldc, DataType c_type,
                 cudaStream_t stream) {
  const char* what = "gemm_fp8_nt";
  const float* b_scales_cublas = b_scales;
  if (b_scaling == Fp8Scaling::Block128x128 && m > 0 && n > 0 && k > 0 && k % 16 == 0)
    b_scales_cublas = block_scales_for_cublas(blas, b_scales, 1, n, k, stream).first;
  fp8_gemm(blas, m, n, k, a, a_scales, b, b_scales_cublas, b_scaling, beta, c, ldc, c_type,
           VaryingDim::None, stream, what);
}

void grouped_gemm_fp8_nt(BlasHandle& blas, int64_t groups, const int64_t* host_offsets, int64_t n,
                         int64_t k, const uint8_t* a, const float* a_scales, const uint8_t* b,
                         const float* b_scales, void* c, DataType c_type, cudaStream_t stream) {
  const char* what = "grouped_gemm_fp8_nt";
  gemm_detail::check_group_offsets(what, groups, host_offsets, kFp8GroupRowAlign);
  FRUGAL_CHECK(n >= 0 && k >= 0, "{}: negative extent (n={} k={})", what, n, k);
  FRUGAL_CHECK(c_type == DataType::F32 || c_type == DataType::BF16,
               "{}: C must be F32 or BF16, got {}", what, gemm_detail::type_name(c_type));
  bool any_rows = false;
  for (int64_t g = 0; g < groups; ++g) any_rows = any_rows || host_offsets[g + 1] > host_offsets[g];
  if (!any_rows || n == 0) return;
  const int64_t k_blocks = fp8_block_count(k);
  const auto [group_scales, scales_stride] =
      k > 0 && k % 16 == 0 ? block_scales_for_cublas(blas, b_scales, groups, n, k, stream)
                           : std::pair<const float*, int64_t>{b_scales, 0};
  GroupLanes lanes(blas.impl(), stream);  // after the scale padding, which the lanes wait for
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = host_offsets[g], rows = host_offsets[g + 1] - begin;
    if (rows == 0) continue;
    const auto [lane_stream, lane] = lanes.next();
    // c_g[rows,N] = a_g[rows,K] · b_g[N,K]^T
    fp8_gemm(blas, rows, n, k, a + begin * k, a_scales + begin * k_blocks, b + g * n * k,
             group_scales + g * scales_stride, Fp8Scaling::Block128x128, 0.0f,
             static_cast<char*>(c) + begin * n * static_cast<int64_t>(c_bytes(c_type)), n, c_type,
             VaryingDim::N, lane_stream, what, lane);
  }
}

void grouped_gemm_fp8_wgrad(BlasHandle& blas, int64_t groups, const int64_t* host_offsets,
                            int64_t n, int64_t k, const uint8_t* dyT, const float* dyT_scales,
                            const uint8_t* xT, const float* xT_scales, float* dw, bool accumulate,
                            cudaStream_t stream) {
  const char* what = "grouped_gemm_fp8_wgrad";
  gemm_detail::check_group_offsets(what, groups, host_offsets, kFp8GroupRowAlign);
  FRUGAL_CHECK(n >= 0 && k >= 0, "{}: negative extent (n={} k={})", what, n, k);
  GroupLanes lanes(blas.impl(), stream);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = host_offsets[g], rows = host_offsets[g + 1] - begin;
    float* dw_g = dw + g * n * k;
    if (rows == 0) {
      // No tokens: dW_g gains nothing, and without accumulate it is exactly zero.
      if (!accumulate) gemm_detail::scale_matrix(dw_g, DataType::F32, n, k, k, 1, 0, 0.0f, stream);
      continue;
    }
    const auto [lane_stream, lane] = lanes.next();
    // dW_g[N,K] (+)= dyT_g[N,rows] · xT_g[K,rows]^T, both tile-scaled along rows.
    const int64_t tile_row = begin / kFp8BlockSize;
    fp8_gemm(blas, n, k, rows, dyT + begin * n, dyT_scales + tile_row * n, xT + begin * k,
             xT_scales + tile_row * k, Fp8Scaling::Tile1x128, accumulate ? 1.0f : 0.0f, dw_g, k,
             DataType::F32, VaryingDim::K, lane_stream, what, lane);
  }
}

}  // namespace frugal::cuda

#endif  // FRUGAL_HAVE_CUDA
