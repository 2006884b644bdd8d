// CUDA token <-> expert reordering of an MoE layer (rules in permute.h, interface and padding in
// moe_cuda.h).
//
// build_expert_permutation: a stable counting sort of the N = tokens*K assignments by expert,
// in three kernels and no host sync:
//   1. count:   chunk c of kChunk assignments -> chunk_counts[c, e] (shared-memory histogram)
//   2. offsets: one block; per expert, the exclusive prefix of its chunk counts over chunks (in
//               place), its real count (and load +=), then an exclusive scan of the counts rounded
//               up to row_align -> expert_offsets [E+1]
//   3. scatter: chunk c again, 256 assignments per round in order; an assignment's row is
//               expert_offsets[e] + (earlier chunks' count of e) + (earlier rounds' count of e in
//               this chunk) + (earlier warps' count of e in this round) + (earlier lanes' count of
//               e in this warp, from __match_any_sync). Every position is a count of assignments
//               with a smaller index, so the order is the CPU's (tokens ascending per expert).
// row_assignment is set to -1 over the whole padded bound first (one memset), so padding rows and
// rows past the last expert read as padding.
//
// Row ops: one warp per output row, 16-byte accesses when every row is 16-byte aligned, fp32
// arithmetic, sums in k order with separately rounded products (the CPU's operation order).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/moe/moe_cuda.h"

namespace frugal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kSortThreads = 256;
constexpr int kSortWarps = kSortThreads / kWarpSize;
constexpr int64_t kChunk = 2048;                  // assignments per count / scatter block
constexpr int kOffsetThreads = 1024;              // the single offsets block: one expert per thread
constexpr int64_t kMaxExperts = kOffsetThreads;  // scatter's shared memory: (8 + 1) x E ints
constexpr int kRowWarps = 8;                      // rows per block in the row ops
constexpr size_t kWorkspaceAlign = 256;

// ---- the permutation ---------------------------------------------------------------------------

__global__ void __launch_bounds__(kSortThreads)
    count_chunks_kernel(int32_t* __restrict__ chunk_counts, const int32_t* __restrict__ topk_idx,
                        int64_t n, int n_experts) {
  extern __shared__ int32_t histogram[];  // [E]
  for (int e = threadIdx.x; e < n_experts; e += kSortThreads) histogram[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(n, begin + kChunk);
  for (int64_t a = begin + threadIdx.x; a < end; a += kSortThreads) {
    const int32_t e = topk_idx[a];
    if (e >= 0 && e < n_experts) atomicAdd(&histogram[e], 1);  // integer: order-free
  }
  __syncthreads();
  int32_t* out = chunk_counts + static_cast<int64_t>(blockIdx.x) * n_experts;
  for (int e = threadIdx.x; e < n_experts; e += kSortThreads) out[e] = histogram[e];
}

// Exclusive scan over the block (one value per thread), fixed order; returns the thread's prefix
// and writes the block total to *total.
__device__ int64_t block_exclusive_scan(int64_t value, int64_t* total) {
  __shared__ int64_t warp_totals[kOffsetThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  int64_t inclusive = value;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int64_t up = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == kWarpSize - 1) warp_totals[warp] = inclusive;
  __syncthreads();
  int64_t before = 0, sum = 0;
  for (int w = 0; w < kOffsetThreads / kWarpSize; ++w) {
    if (w < warp) before += warp_totals[w];
    sum += warp_totals[w];
  }
  *total = sum;
  return before + inclusive - value;
}

__global__ void __launch_bounds__(kOffsetThreads)
    expert_offsets_kernel(int64_t* __restrict__ expert_offsets, int64_t* __restrict__ expert_counts,
                          int64_t* __restrict__ load, int32_t* __restrict__ chunk_counts,
                          int64_t chunks, int n_experts, int64_t row_align) {
  const int e = threadIdx.x;
  int64_t count = 0;
  if (e < n_experts) {
    for (int64_t c = 0; c < chunks; ++c) {  // coalesced across experts: [chunk, E]
      int32_t* slot = chunk_counts + c * n_experts + e;
      const int32_t v = *slot;
      *slot = static_cast<int32_t>(count);  // rows of e in chunks before c
      count += v;
    }
    expert_counts[e] = count;
    if (load != nullptr) load[e] += count;
  }
  const int64_t padded = (count + row_align - 1) / row_align * row_align;
  int64_t total = 0;
  const int64_t offset = block_exclusive_scan(padded, &total);
  if (e < n_experts) expert_offsets[e] = offset;
  if (e == 0) expert_offsets[n_experts] = total;
}

__global__ void __launch_bounds__(kSortThreads)
    scatter_chunks_kernel(int32_t* __restrict__ assignment_row, int32_t* __restrict__ row_assignment,
                          const int32_t* __restrict__ topk_idx,
                          const int32_t* __restrict__ chunk_prefix,
                          const int64_t* __restrict__ expert_offsets, int64_t n, int n_experts) {
  extern __shared__ int32_t scatter_shared[];
  int32_t* next_row = scatter_shared;             // [E] next free row of e for this chunk
  int32_t* warp_counts = next_row + n_experts;    // [warps, E] this round's count per warp
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(n, begin + kChunk);
  const int32_t* prefix = chunk_prefix + static_cast<int64_t>(blockIdx.x) * n_experts;
  for (int e = threadIdx.x; e < n_experts; e += kSortThreads) {
    next_row[e] = static_cast<int32_t>(expert_offsets[e]) + prefix[e];
    for (int w = 0; w < kSortWarps; ++w) warp_counts[w * n_experts + e] = 0;
  }
  __syncthreads();
  const unsigned lanes_before = (1u << lane) - 1u;
  for (int64_t round = begin; round < end; round += kSortThreads) {
    const int64_t a = round + threadIdx.x;
    int32_t e = a < end ? topk_idx[a] : -1;
    if (e < 0 || e >= n_experts) e = -1;
    const unsigned same = __match_any_sync(kFullMask, e);
    const bool leader = (same & lanes_before) == 0;  // lowest lane of its expert in this warp
    if (e >= 0 && leader) warp_counts[warp * n_experts + e] = __popc(same);
    __syncthreads();
    if (e >= 0) {
      int32_t row = next_row[e] + __popc(same & lanes_before);
      for (int w = 0; w < warp; ++w) row += warp_counts[w * n_experts + e];
      assignment_row[a] = row;
      row_assignment[row] = static_cast<int32_t>(a);
    } else if (a < end) {
      assignment_row[a] = -1;  // an expert index out of range: no row
    }
    __syncthreads();
    if (e >= 0 && leader) {
      atomicAdd(&next_row[e], __popc(same));  // integer: order-free
      warp_counts[warp * n_experts + e] = 0;
    }
    __syncthreads();
  }
}

// ---- row ops -----------------------------------------------------------------------------------

// N consecutive elements moved as one access (N = 16 bytes / sizeof(T) on the vector path).
using detail::from_float;
using detail::load_pack;
using detail::Pack;
using detail::store_pack;
using detail::to_float;

template <class T, int N>
__global__ void __launch_bounds__(kRowWarps* kWarpSize)
    permute_rows_kernel(T* __restrict__ xp, const T* __restrict__ x,
                        const int32_t* __restrict__ row_assignment, int64_t rows, int64_t top_k,
                        int64_t hidden) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (p >= rows) return;
  const int32_t a = row_assignment[p];
  T* dst = xp + p * hidden;
  if (a < 0) {
    float zeros[N] = {};
    for (int64_t j = lane * N; j < hidden; j += kWarpSize * N) store_pack<T, N>(dst + j, zeros);
    return;
  }
  const T* src = x + (a / top_k) * hidden;
  for (int64_t j = lane * N; j < hidden; j += kWarpSize * N)
    *reinterpret_cast<Pack<T, N>*>(dst + j) = *reinterpret_cast<const Pack<T, N>*>(src + j);
}

// y[t] (+)= sum_k weight_k * src[row(t,k)]; weights == nullptr means weight 1 (unpermute_sum).
template <class T, int N>
__global__ void __launch_bounds__(kRowWarps* kWarpSize)
    gather_sum_kernel(T* __restrict__ y, const T* __restrict__ src,
                      const float* __restrict__ weights, const int32_t* __restrict__ assignment_row,
                      int64_t tokens, int64_t top_k, int64_t hidden, bool accumulate) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (t >= tokens) return;
  T* out = y + t * hidden;
  for (int64_t j = lane * N; j < hidden; j += kWarpSize * N) {
    float acc[N];
    if (accumulate) {
      load_pack<T, N>(acc, out + j);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) acc[i] = 0.0f;
    }
#pragma unroll 4
    for (int64_t k = 0; k < top_k; ++k) {  // unrolled: several rows' loads in flight at once
      const int32_t row = assignment_row[t * top_k + k];
      if (row < 0) continue;
      float v[N];
      load_pack<T, N>(v, src + static_cast<int64_t>(row) * hidden + j);
      if (weights != nullptr) {
        const float w = weights[t * top_k + k];
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = __fadd_rn(acc[i], __fmul_rn(w, v[i]));
      } else {
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] += v[i];
      }
    }
    store_pack<T, N>(out + j, acc);
  }
}

template <class T, int N>
__global__ void __launch_bounds__(kRowWarps* kWarpSize)
    combine_bwd_kernel(T* __restrict__ d_expert_out, float* __restrict__ dweights,
                       const T* __restrict__ dy, const T* __restrict__ expert_out,
                       const float* __restrict__ weights,
                       const int32_t* __restrict__ row_assignment, int64_t rows, int64_t top_k,
                       int64_t hidden) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarpSize;
  if (p >= rows) return;
  const int32_t a = row_assignment[p];
  T* d_out = d_expert_out + p * hidden;
  if (a < 0) {  // padding row
    float zeros[N] = {};
    for (int64_t j = lane * N; j < hidden; j += kWarpSize * N) store_pack<T, N>(d_out + j, zeros);
    return;
  }
  const float w = weights[a];
  const T* g = dy + (a / top_k) * hidden;
  const T* out = expert_out + p * hidden;
  float dot = 0.0f;
  for (int64_t j = lane * N; j < hidden; j += kWarpSize * N) {
    float gv[N], ov[N], dv[N];
    load_pack<T, N>(gv, g + j);
    load_pack<T, N>(ov, out + j);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      dv[i] = __fmul_rn(w, gv[i]);
      dot += gv[i] * ov[i];
    }
    store_pack<T, N>(d_out + j, dv);
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    dot += __shfl_xor_sync(kFullMask, dot, offset);
  if (lane == 0) dweights[a] = dot;
}

template <class T>
bool rows_vectorizable(int64_t hidden, std::initializer_list<const void*> pointers) {
  if ((hidden * static_cast<int64_t>(sizeof(T))) % 16 != 0) return false;
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kRowWarps - 1) / kRowWarps);
}

void check_row_args(int64_t rows, int64_t top_k, int64_t hidden, const char* message) {
  FRUGAL_CUDA_REQUIRE(rows >= 0 && top_k >= 1 && hidden >= 1, message);
  FRUGAL_CUDA_REQUIRE(rows / kRowWarps < INT_MAX, message);
}

template <class T>
constexpr int kVector = 16 / static_cast<int>(sizeof(T));

}  // namespace

size_t expert_permutation_workspace_bytes(int64_t tokens, int64_t top_k, int64_t n_experts) {
  FRUGAL_CUDA_REQUIRE(tokens >= 0 && top_k >= 1 && n_experts >= 1,
                      "expert_permutation_workspace_bytes: bad sizes");
  const int64_t chunks = (tokens * top_k + kChunk - 1) / kChunk;
  const size_t bytes = static_cast<size_t>(chunks * n_experts) * sizeof(int32_t);
  return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

void build_expert_permutation(int64_t* expert_offsets, int64_t* expert_counts, int64_t* load,
                              int32_t* assignment_row, int32_t* row_assignment,
                              const int32_t* topk_idx, int64_t tokens, int64_t top_k,
                              int64_t n_experts, int64_t row_align, void* workspace,
                              cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(tokens >= 0 && top_k >= 1, "build_expert_permutation: bad token count or K");
  FRUGAL_CUDA_REQUIRE(n_experts >= 1 && n_experts <= kMaxExperts,
                      "build_expert_permutation: expert count must be in [1, 1024]");
  FRUGAL_CUDA_REQUIRE(row_align >= 1, "build_expert_permutation: row_align must be >= 1");
  const int64_t n = tokens * top_k;
  const int64_t row_bound = n + n_experts * (row_align - 1);
  FRUGAL_CUDA_REQUIRE(row_bound < INT_MAX,
                      "build_expert_permutation: padded rows do not fit int32 row indices");
  FRUGAL_CUDA_REQUIRE(expert_offsets != nullptr && expert_counts != nullptr,
                      "build_expert_permutation: null offsets or counts");
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (n > 0)
    FRUGAL_CUDA_REQUIRE(assignment_row != nullptr && row_assignment != nullptr &&
                            topk_idx != nullptr && workspace != nullptr,
                        "build_expert_permutation: null tensor or workspace");
  const int E = static_cast<int>(n_experts);
  auto* chunk_counts = static_cast<int32_t*>(workspace);  // [chunks, E]
  FRUGAL_CUDA_REQUIRE(row_bound == 0 || row_assignment != nullptr,
                      "build_expert_permutation: null row_assignment (padded rows are written)");
  if (row_bound > 0)  // -1 everywhere: padding rows, and rows past the last expert's
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(row_assignment, 0xFF, row_bound * sizeof(int32_t), stream));
  if (chunks > 0) {
    count_chunks_kernel<<<static_cast<unsigned>(chunks), kSortThreads, E * sizeof(int32_t),
                          stream>>>(chunk_counts, topk_idx, n, E);
    FRUGAL_CUDA_CHECK_LAUNCH();
  }
  expert_offsets_kernel<<<1, kOffsetThreads, 0, stream>>>(expert_offsets, expert_counts, load,
                                                          chunk_counts, chunks, E, row_align);
  FRUGAL_CUDA_CHECK_LAUNCH();
  if (chunks > 0) {
    const size_t shared = sizeof(int32_t) * (1 + kSortWarps) * E;
    scatter_chunks_kernel<<<static_cast<unsigned>(chunks), kSortThreads, shared, stream>>>(
        assignment_row, row_assignment, topk_idx, chunk_counts, expert_offsets, n, E);
    FRUGAL_CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void permute_rows(T* xp, const T* x, const int32_t* row_assignment, int64_t padded_rows,
                  int64_t top_k, int64_t hidden, cudaStream_t stream) {
  check_row_args(padded_rows, top_k, hidden, "permute_rows: bad sizes");
  if (padded_rows == 0) return;
  FRUGAL_CUDA_REQUIRE(xp != nullptr && x != nullptr && row_assignment != nullptr,
                      "permute_rows: null tensor");
  if (rows_vectorizable<T>(hidden, {xp, x}))
    permute_rows_kernel<T, kVector<T>><<<row_blocks(padded_rows), kRowWarps * kWarpSize, 0,
                                         stream>>>(xp, x, row_assignment, padded_rows, top_k,
                                                   hidden);
  else
    permute_rows_kernel<T, 1><<<row_blocks(padded_rows), kRowWarps * kWarpSize, 0, stream>>>(
        xp, x, row_assignment, padded_rows, top_k, hidden);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

namespace {

// gather_sum_kernel over `tokens` output rows, on the vector path when every row allows it.
template <class T>
void launch_gather_sum(T* out, const T* rows_in, const float* weights,
                       const int32_t* assignment_row, int64_t tokens, int64_t top_k, int64_t hidden,
                       bool accumulate, cudaStream_t stream) {
  if (rows_vectorizable<T>(hidden, {out, rows_in}))
    gather_sum_kernel<T, kVector<T>><<<row_blocks(tokens), kRowWarps * kWarpSize, 0, stream>>>(
        out, rows_in, weights, assignment_row, tokens, top_k, hidden, accumulate);
  else
    gather_sum_kernel<T, 1><<<row_blocks(tokens), kRowWarps * kWarpSize, 0, stream>>>(
        out, rows_in, weights, assignment_row, tokens, top_k, hidden, accumulate);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class T>
void unpermute_sum(T* dx, const T* dxp, const int32_t* assignment_row, int64_t tokens,
                   int64_t top_k, int64_t hidden, bool accumulate, cudaStream_t stream) {
  check_row_args(tokens, top_k, hidden, "unpermute_sum: bad sizes");
  if (tokens == 0) return;
  FRUGAL_CUDA_REQUIRE(dx != nullptr && dxp != nullptr && assignment_row != nullptr,
                      "unpermute_sum: null tensor");
  launch_gather_sum(dx, dxp, nullptr, assignment_row, tokens, top_k, hidden, accumulate, stream);
}

template <class T>
void combine_fwd(T* y, const T* expert_out, const float* weights, const int32_t* assignment_row,
                 int64_t tokens, int64_t top_k, int64_t hidden, bool accumulate,
                 cudaStream_t stream) {
  check_row_args(tokens, top_k, hidden, "combine_fwd: bad sizes");
  if (tokens == 0) return;
  FRUGAL_CUDA_REQUIRE(y != nullptr && expert_out != nullptr && weights != nullptr &&
                          assignment_row != nullptr,
                      "combine_fwd: null tensor");
  launch_gather_sum(y, expert_out, weights, assignment_row, tokens, top_k, hidden, accumulate,
                    stream);
}

template <class T>
void combine_bwd(T* d_expert_out, float* dweights, const T* dy, const T* expert_out,
                 const float* weights, const int32_t* assignment_row, const int32_t* row_assignment,
                 int64_t padded_rows, int64_t tokens, int64_t top_k, int64_t hidden,
                 cudaStream_t stream) {
  // Walks the permuted rows (row_assignment), each row written by one warp; assignment_row is
  // its inverse and not needed here.
  (void)assignment_row;
  check_row_args(padded_rows, top_k, hidden, "combine_bwd: bad sizes");
  FRUGAL_CUDA_REQUIRE(tokens >= 0, "combine_bwd: negative token count");
  if (padded_rows == 0) return;
  FRUGAL_CUDA_REQUIRE(d_expert_out != nullptr && row_assignment != nullptr,
                      "combine_bwd: null tensor");
  if (tokens > 0)
    FRUGAL_CUDA_REQUIRE(dweights != nullptr && dy != nullptr && expert_out != nullptr &&
                            weights != nullptr,
                        "combine_bwd: null tensor");
  if (rows_vectorizable<T>(hidden, {d_expert_out, dy, expert_out}))
    combine_bwd_kernel<T, kVector<T>><<<row_blocks(padded_rows), kRowWarps * kWarpSize, 0,
                                        stream>>>(d_expert_out, dweights, dy, expert_out, weights,
                                                  row_assignment, padded_rows, top_k, hidden);
  else
    combine_bwd_kernel<T, 1><<<row_blocks(padded_rows), kRowWarps * kWarpSize, 0, stream>>>(
        d_expert_out, dweights, dy, expert_out, weights, row_assignment, padded_rows, top_k,
        hidden);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

#define FRUGAL_INSTANTIATE_MOE_ROWS(T)                                                          \
  template void permute_rows<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t,        \
                                cudaStream_t);                                                  \
  template void unpermute_sum<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t, bool, \
                                 cudaStream_t);                                                 \
  template void combine_fwd<T>(T*, const T*, const float*, const int32_t*, int64_t, int64_t,    \
                               int64_t, bool, cudaStream_t);                                    \
  template void combine_bwd<T>(T*, float*, const T*, const T*, const float*, const int32_t*,    \
                               const int32_t*, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
FRUGAL_INSTANTIATE_MOE_ROWS(float)
FRUGAL_INSTANTIATE_MOE_ROWS(__nv_bfloat16)
#undef FRUGAL_INSTANTIATE_MOE_ROWS

}  // namespace frugal::cuda
