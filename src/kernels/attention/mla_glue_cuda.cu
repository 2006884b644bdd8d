// CUDA MLA glue (interface in mla_glue_cuda.h, computation and rounding in mla_glue.h).
// One kernel each way per MLA layer instead of separate copies, a head broadcast / head sum and a
// RoPE pass. Same bits as those: raw copies, the heads summed in order in fp32, the pair
// arithmetic of rope_math.cuh.
//
// Work items are runs of kN consecutive elements of one head (16 bytes when kVector: every size,
// row stride and pointer allows it; one element otherwise), one thread each, consecutive threads on
// consecutive runs (coalesced). Index arithmetic in 32 bits when every offset is below 2^31.
//   split_kv:       per (row, head): nope runs (kv_b -> k), v runs (kv_b -> v), rope runs
//                   (k_pe rotated -> k; each head rotates its row's k_pe again: same bits)
//   merge_kv_grad:  per (row, head): nope runs (dk -> d_kv_b), v runs (dv -> d_kv_b); then per
//                   (row, rope run): the head sum of dk's rope run, rounded to T, rotated back.
// With one-element runs a rope element's thread reads its pair partner too.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "core/cuda_check.h"
#include "kernels/attention/mla_glue_cuda.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/rope/rope_math.cuh"

namespace frugal::cuda {
namespace {

constexpr int kThreads = 256;

using detail::copy_run;
using detail::from_float;
using detail::load_run;
using detail::rope_rotate_pair;
using detail::store_run;
using detail::to_float;

// Sizes of one launch in runs of kN elements, in the kernel's index type.
template <class Index>
struct RunDims {
  Index heads, nope, rope, v;          // elements
  Index nope_runs, rope_runs, v_runs;  // runs per head (rope_runs: per row for the gradient sum)
  Index pe_ld;                         // row stride of k_pe / d_k_pe
  Index total;                         // work items
};

template <class T, bool kVector, int kN, class Index>
__global__ void __launch_bounds__(kThreads)
    split_kv_kernel(T* __restrict__ k, T* __restrict__ v, const T* __restrict__ kv_b,
                    const T* __restrict__ k_pe, const float* __restrict__ cos_table,
                    const float* __restrict__ sin_table, const int32_t* __restrict__ positions,
                    RunDims<Index> d) {
  const Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= d.total) return;
  const Index runs_per_head = d.nope_runs + d.v_runs + d.rope_runs;
  const Index row_head = i / runs_per_head;  // row * heads + head
  const Index run = i - row_head * runs_per_head;
  const Index qk = d.nope + d.rope, kv_b_head = d.nope + d.v;
  if (run < d.nope_runs) {
    copy_run<kVector, kN>(k + row_head * qk + run * kN, kv_b + row_head * kv_b_head + run * kN);
    return;
  }
  if (run < d.nope_runs + d.v_runs) {
    const Index e = (run - d.nope_runs) * kN;
    copy_run<kVector, kN>(v + row_head * d.v + e, kv_b + row_head * kv_b_head + d.nope + e);
    return;
  }
  const Index e = (run - d.nope_runs - d.v_runs) * kN;  // element in [0, rope)
  const Index row = row_head / d.heads;
  const int64_t table_row = static_cast<int64_t>(positions[row]) * (d.rope / 2);
  const T* src = k_pe + row * d.pe_ld;
  T* dst = k + row_head * qk + d.nope + e;
  if constexpr (kN == 1) {
    const Index pair = e / 2;
    float x0 = to_float(src[2 * pair]), x1 = to_float(src[2 * pair + 1]);
    rope_rotate_pair(x0, x1, cos_table[table_row + pair], sin_table[table_row + pair], 1.0f);
    *dst = from_float<T>(e % 2 == 0 ? x0 : x1);
  } else {
    float x[kN];
    load_run<kVector, kN>(x, src + e);
    const int64_t first_pair = table_row + e / 2;
#pragma unroll
    for (int p = 0; p < kN / 2; ++p)
      rope_rotate_pair(x[2 * p], x[2 * p + 1], cos_table[first_pair + p], sin_table[first_pair + p],
                       1.0f);
    store_run<kVector, kN>(dst, x);
  }
}

template <class T, bool kVector, int kN, class Index>
__global__ void __launch_bounds__(kThreads)
    merge_kv_grad_kernel(T* __restrict__ d_kv_b, T* __restrict__ d_k_pe, const T* __restrict__ dk,
                         const T* __restrict__ dv, const float* __restrict__ cos_table,
                         const float* __restrict__ sin_table, const int32_t* __restrict__ positions,
                         Index copy_items, RunDims<Index> d) {
  const Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= d.total) return;
  const Index qk = d.nope + d.rope, kv_b_head = d.nope + d.v;
  if (i < copy_items) {
    const Index runs_per_head = d.nope_runs + d.v_runs;
    const Index row_head = i / runs_per_head;
    const Index run = i - row_head * runs_per_head;
    if (run < d.nope_runs) {
      copy_run<kVector, kN>(d_kv_b + row_head * kv_b_head + run * kN,
                            dk + row_head * qk + run * kN);
    } else {
      const Index e = (run - d.nope_runs) * kN;
      copy_run<kVector, kN>(d_kv_b + row_head * kv_b_head + d.nope + e, dv + row_head * d.v + e);
    }
    return;
  }
  const Index j = i - copy_items;
  const Index row = j / d.rope_runs;
  const Index e = (j - row * d.rope_runs) * kN;  // element in [0, rope)
  const int64_t table_row = static_cast<int64_t>(positions[row]) * (d.rope / 2);
  const T* src = dk + row * d.heads * qk + d.nope;  // head 0's rope part of the row
  T* dst = d_k_pe + row * d.pe_ld + e;
  if constexpr (kN == 1) {
    const Index pair = e / 2;
    float s0 = 0.0f, s1 = 0.0f;  // heads in order, fp32
    for (Index h = 0; h < d.heads; ++h) {
      s0 += to_float(src[h * qk + 2 * pair]);
      s1 += to_float(src[h * qk + 2 * pair + 1]);
    }
    float x0 = to_float(from_float<T>(s0)), x1 = to_float(from_float<T>(s1));
    rope_rotate_pair(x0, x1, cos_table[table_row + pair], sin_table[table_row + pair], -1.0f);
    *dst = from_float<T>(e % 2 == 0 ? x0 : x1);
  } else {
    float sum[kN];
#pragma unroll
    for (int t = 0; t < kN; ++t) sum[t] = 0.0f;
    for (Index h = 0; h < d.heads; ++h) {
      float x[kN];
      load_run<kVector, kN>(x, src + h * qk + e);
#pragma unroll
      for (int t = 0; t < kN; ++t) sum[t] += x[t];
    }
    float x[kN];
#pragma unroll
    for (int t = 0; t < kN; ++t) x[t] = to_float(from_float<T>(sum[t]));  // the stored sum
    const int64_t first_pair = table_row + e / 2;
#pragma unroll
    for (int p = 0; p < kN / 2; ++p)
      rope_rotate_pair(x[2 * p], x[2 * p + 1], cos_table[first_pair + p], sin_table[first_pair + p],
                       -1.0f);
    store_run<kVector, kN>(dst, x);
  }
}

void check_args(const MlaRope& rope, int64_t rows, const MlaHeadDims& d, int64_t pe_ld) {
  FRUGAL_CUDA_REQUIRE(
      rows >= 0 && d.heads > 0 && d.nope >= 0 && d.rope > 0 && d.rope % 2 == 0 && d.v > 0,
      "mla glue: bad sizes (rows, heads, nope, rope even, v)");
  FRUGAL_CUDA_REQUIRE(rows <= 1 || pe_ld >= d.rope,
                      "mla glue: the k_pe / d_k_pe row stride is smaller than rope");
  FRUGAL_CUDA_REQUIRE(
      rows == 0 || (rope.cos != nullptr && rope.sin != nullptr && rope.positions != nullptr),
      "mla glue: null rope table or positions");
}

// Whether every element offset of the launch (and its item count) fits below 2^31.
bool fits_32_bits(int64_t rows, const MlaHeadDims& d, int64_t pe_ld, int64_t items) {
  const int64_t limit = int64_t{1} << 31;
  const int64_t widest = d.nope + (d.rope > d.v ? d.rope : d.v);
  return rows * d.heads * widest < limit && rows * (pe_ld > d.rope ? pe_ld : d.rope) < limit &&
         items + kThreads < limit;
}

template <class Index, int kN>
RunDims<Index> run_dims(const MlaHeadDims& d, int64_t pe_ld, int64_t total) {
  RunDims<Index> r;
  r.heads = static_cast<Index>(d.heads);
  r.nope = static_cast<Index>(d.nope);
  r.rope = static_cast<Index>(d.rope);
  r.v = static_cast<Index>(d.v);
  r.nope_runs = static_cast<Index>(d.nope / kN);
  r.rope_runs = static_cast<Index>(d.rope / kN);
  r.v_runs = static_cast<Index>(d.v / kN);
  r.pe_ld = static_cast<Index>(pe_ld);
  r.total = static_cast<Index>(total);
  return r;
}

unsigned blocks_for(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  FRUGAL_CUDA_REQUIRE(blocks < INT_MAX, "mla glue: too many elements for one grid");
  return static_cast<unsigned>(blocks);
}

template <class T, bool kVector, int kN, class Index>
void launch_split(T* k, T* v, const T* kv_b, const T* k_pe, int64_t k_pe_ld, const MlaRope& rope,
                  int64_t rows, const MlaHeadDims& d, cudaStream_t stream) {
  const int64_t total = rows * d.heads * ((d.nope + d.rope + d.v) / kN);
  split_kv_kernel<T, kVector, kN, Index><<<blocks_for(total), kThreads, 0, stream>>>(
      k, v, kv_b, k_pe, rope.cos, rope.sin, rope.positions, run_dims<Index, kN>(d, k_pe_ld, total));
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <class T, bool kVector, int kN, class Index>
void launch_merge(T* d_kv_b, T* d_k_pe, int64_t d_k_pe_ld, const T* dk, const T* dv,
                  const MlaRope& rope, int64_t rows, const MlaHeadDims& d, cudaStream_t stream) {
  const int64_t copy_items = rows * d.heads * ((d.nope + d.v) / kN);
  const int64_t total = copy_items + rows * (d.rope / kN);
  merge_kv_grad_kernel<T, kVector, kN, Index><<<blocks_for(total), kThreads, 0, stream>>>(
      d_kv_b, d_k_pe, dk, dv, rope.cos, rope.sin, rope.positions, static_cast<Index>(copy_items),
      run_dims<Index, kN>(d, d_k_pe_ld, total));
  FRUGAL_CUDA_CHECK_LAUNCH();
}

// 16-byte runs when all sizes, the row stride and the pointers allow them.
template <class T>
bool vector_ok(const MlaHeadDims& d, int64_t rows, int64_t pe_ld,
               std::initializer_list<const void*> pointers) {
  constexpr int64_t kVec = detail::kVectorElems<T>;
  if (d.nope % kVec != 0 || d.rope % kVec != 0 || d.v % kVec != 0) return false;
  if (rows > 1 && pe_ld % kVec != 0) return false;
  for (const void* p : pointers)
    if (!detail::aligned_to(p, 16)) return false;
  return true;
}

// Calls launch.template operator()<kVector, kN, Index>() for the layout chosen: 16-byte runs of
// kVectorElems<T> elements when `vector`, else one element; 32-bit indices when `narrow`.
template <class T, class Launch>
void launch_for_layout(bool vector, bool narrow, const Launch& launch) {
  constexpr int kVec = detail::kVectorElems<T>;
  if (vector && narrow)
    launch.template operator()<true, kVec, uint32_t>();
  else if (vector)
    launch.template operator()<true, kVec, int64_t>();
  else if (narrow)
    launch.template operator()<false, 1, uint32_t>();
  else
    launch.template operator()<false, 1, int64_t>();
}

}  // namespace

template <class T>
void mla_split_kv(T* k, T* v, const T* kv_b, const T* k_pe, int64_t k_pe_ld, const MlaRope& rope,
                  int64_t rows, const MlaHeadDims& d, cudaStream_t stream) {
  check_args(rope, rows, d, k_pe_ld);
  if (rows == 0) return;
  FRUGAL_CUDA_REQUIRE(k != nullptr && v != nullptr && kv_b != nullptr && k_pe != nullptr,
                      "mla_split_kv: null tensor");
  const bool vector = vector_ok<T>(d, rows, k_pe_ld, {k, v, kv_b, k_pe});
  const int64_t items = rows * d.heads * (d.nope + d.rope + d.v);  // at most (one-element runs)
  launch_for_layout<T>(vector, fits_32_bits(rows, d, k_pe_ld, items),
                       [&]<bool kVector, int kN, class Index>() {
                         launch_split<T, kVector, kN, Index>(k, v, kv_b, k_pe, k_pe_ld, rope,
                                                             rows, d, stream);
                       });
}

template <class T>
void mla_merge_kv_grad(T* d_kv_b, T* d_k_pe, int64_t d_k_pe_ld, const T* dk, const T* dv,
                       const MlaRope& rope, int64_t rows, const MlaHeadDims& d,
                       cudaStream_t stream) {
  check_args(rope, rows, d, d_k_pe_ld);
  if (rows == 0) return;
  FRUGAL_CUDA_REQUIRE(d_kv_b != nullptr && d_k_pe != nullptr && dk != nullptr && dv != nullptr,
                      "mla_merge_kv_grad: null tensor");
  const bool vector = vector_ok<T>(d, rows, d_k_pe_ld, {d_kv_b, d_k_pe, dk, dv});
  const int64_t items = rows * d.heads * (d.nope + d.v) + rows * d.rope;
  launch_for_layout<T>(vector, fits_32_bits(rows, d, d_k_pe_ld, items),
                       [&]<bool kVector, int kN, class Index>() {
                         launch_merge<T, kVector, kN, Index>(d_kv_b, d_k_pe, d_k_pe_ld, dk, dv,
                                                             rope, rows, d, stream);
                       });
}

#define FRUGAL_INSTANTIATE_MLA_GLUE(T)                                                             \
  template void mla_split_kv<T>(T*, T*, const T*, const T*, int64_t, const MlaRope&, int64_t,      \
                                const MlaHeadDims&, cudaStream_t);                                 \
  template void mla_merge_kv_grad<T>(T*, T*, int64_t, const T*, const T*, const MlaRope&, int64_t, \
                                     const MlaHeadDims&, cudaStream_t);
FRUGAL_INSTANTIATE_MLA_GLUE(float)
FRUGAL_INSTANTIATE_MLA_GLUE(__nv_bfloat16)
#undef FRUGAL_INSTANTIATE_MLA_GLUE

}  // namespace frugal::cuda
