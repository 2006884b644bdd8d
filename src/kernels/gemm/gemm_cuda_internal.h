// Internals shared by the cuBLASLt GEMM files (gemm_cublaslt.cc, gemm_fp8_cublaslt.cc,
// gemm_cuda.cu); not part of the public interface in gemm_cuda.h.
//
// Row-major to column-major: cuBLASLt is column-major, and a row-major matrix X [r, c] with leading
// dimension ld is the column-major matrix X^T [c, r] with the same ld. So the row-major product
//   C[M,N] = op(A)[M,K] · op(B)[K,N]
// is computed as the column-major product C^T[N,M] = op(B)^T · op(A)^T, i.e. one cuBLASLt call with
// its matrix "A" = our B, its "B" = our A, m = N, n = M, and transposes swapped (trans of
// cuBLASLt's A = trans_b, of its B = trans_a). No layout-order attributes are used.
//
// FP8 (gemm_fp8_nt, C = A · B^T): cuBLASLt's A = our B [N,K] read with TRANSA=T (128x128 blocks or
// 1x128 tiles), cuBLASLt's B = our A [M,K] read with TRANSB=N (1x128 tiles), D column-major [N,M] =
// our row-major C [M,N]. This is the combination DESIGN.md "Numerics" measured on the H200.
//
// Plans: each distinct call (column-major problem, types, transposes, scale modes, batching and
// pointer alignments) gets one cached matmul descriptor and the heuristic's first algorithm, so a
// repeated call costs a hash lookup and cublasLtMatmul. Grouped (MoE) calls vary one dimension with
// the expert's token count; their plans are keyed by that dimension rounded up to a bucket (at most
// 8 buckets per power of two), the bucket's algorithm is checked once per exact size with
// cublasLtMatmulAlgoCheck, and an exact plan is made only when the check fails.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/gemm/gemm_cuda.h"

namespace frugal::cuda {

namespace gemm_detail {

constexpr int kNoScaling = -1;  // an operand without block scales (FP32/BF16)

// One cublasLtMatmul call, already in cuBLASLt's column-major terms:
//   D[m,n] = alpha * op(A)[m,k] · op(B)[k,n] + beta * C, with C = D (same pointer and layout).
struct MatmulCall {
  cudaDataType_t a_type = CUDA_R_32F, b_type = CUDA_R_32F, c_type = CUDA_R_32F;
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  int a_scale_mode = kNoScaling, b_scale_mode = kNoScaling;  // cublasLtMatmulMatrixScale_t
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;  // elements
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  const float* a_scales = nullptr;
  const float* b_scales = nullptr;
  float alpha = 1.0f, beta = 0.0f;
};

// Which dimension of a grouped call varies from group to group (bucketed in the plan key).
enum class VaryingDim { None, N, K };

struct MatmulPlan {
  cublasLtMatmulDescOpaque_t desc;
  cublasLtMatmulAlgo_t algo;
  size_t algo_workspace_bytes = 0;
  // For a bucketed plan: exact size of the varying dimension -> the algorithm passed
  // cublasLtMatmulAlgoCheck at that size.
  std::unordered_map<int64_t, bool> algo_fits;
};

using PlanKey = std::array<int64_t, 22>;  // see make_key in gemm_cublaslt.cc

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t v : key) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

// Element size in bytes of a cuBLASLt data type used here.
size_t element_bytes(cudaDataType_t type);
cudaDataType_t to_cuda_type(DataType type);
const char* type_name(DataType type);

// Throws unless host_offsets [groups+1] is non-decreasing from >= 0 and every offset is a
// multiple of row_align (1, or kFp8GroupRowAlign for the FP8 grouped GEMMs).
void check_group_offsets(const char* what, int64_t groups, const int64_t* host_offsets,
                         int64_t row_align);

// Kernels (gemm_cuda.cu).
// c[batch][rows][cols] (leading dimension ldc, batch stride stride_c elements) = beta * c, and
// exactly zero where beta == 0 (NaN in c does not survive). F32 or BF16.
void scale_matrix(void* c, DataType c_type, int64_t rows, int64_t cols, int64_t ldc, int64_t batch,
                  int64_t stride_c, float beta, cudaStream_t stream);
// dst[matrices][row_blocks][k_blocks_padded] = src[matrices][row_blocks][k_blocks], padding = 0:
// the 128x128 block scales in the layout cuBLASLt reads (K blocks padded to a multiple of 4).
void pad_block_scales(float* dst, const float* src, int64_t matrices, int64_t row_blocks,
                      int64_t k_blocks, int64_t k_blocks_padded, cudaStream_t stream);

}  // namespace gemm_detail

struct BlasHandle::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Side streams for the per-group calls of grouped GEMMs (GroupLanes below), each with its own
  // cuBLASLt workspace; made on first use.
  struct Lane {
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;
    void* workspace = nullptr;
  };
  std::vector<Lane> lanes;
  cudaEvent_t fork = nullptr;
  // Scratch for padded FP8 block scales, grown on demand (stream-ordered reuse, one stream).
  float* scale_scratch = nullptr;
  size_t scale_scratch_floats = 0;
  std::unordered_map<gemm_detail::PlanKey, std::unique_ptr<gemm_detail::MatmulPlan>,
                     gemm_detail::PlanKeyHash>
      plans;

  // Runs one cuBLASLt call through the plan cache; `what` names the public call in errors.
  // lane >= 0: on lanes[lane]'s workspace (the call's stream must be that lane's).
  void run(const gemm_detail::MatmulCall& call, gemm_detail::VaryingDim varying,
           cudaStream_t stream, const char* what, int lane = -1);
  ~Impl();
  // At least `floats` floats of scratch, valid until the next call on this handle.
  float* scratch_floats(size_t floats, cudaStream_t stream);
  size_t plan_count() const { return plans.size(); }
};

// The groups of a grouped GEMM are independent (disjoint outputs), and one expert's GEMM is often
// about one wave of the GPU: issued back to back on one stream, each waits for the previous one's
// tail. GroupLanes spreads them round-robin over a few side streams that start after everything
// queued on `stream` so far, and makes `stream` wait for all of them when it goes out of scope.
// Results are the same as on one stream (each group's call is the same cuBLASLt call).
// FRUGAL_GEMM_LANES=n sets the lane count (1: everything on `stream`, as before; default 4).
class GroupLanes {
 public:
  GroupLanes(BlasHandle::Impl& blas, cudaStream_t stream);
  ~GroupLanes();  // joins: `stream` waits for every lane used
  GroupLanes(const GroupLanes&) = delete;
  GroupLanes& operator=(const GroupLanes&) = delete;

  // The stream and lane index for the next group's call (lane -1: the caller's stream).
  std::pair<cudaStream_t, int> next();

 private:
  BlasHandle::Impl& blas_;
  cudaStream_t stream_;
  int count_ = 0;    // lanes in use (0: none, everything on stream_)
  int64_t calls_ = 0;
};

}  // namespace frugal::cuda
