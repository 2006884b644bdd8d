// MLA glue kernels on the GPU (computation, layouts and rounding in mla_glue.h; the CPU references
// there define these bit for bit). T is float or __nv_bfloat16. rope.table_positions is not used
// (positions are not checked on the device).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention/mla_glue.h"

namespace frugal::cuda {

// k [rows, heads, nope + rope], v [rows, heads, v] from kv_b [rows, heads, nope + v] and the
// un-rotated k_pe (row r at k_pe + r * k_pe_ld, rope values), one pass.
template <class T>
void mla_split_kv(T* k, T* v, const T* kv_b, const T* k_pe, int64_t k_pe_ld, const MlaRope& rope,
                  int64_t rows, const MlaHeadDims& dims, cudaStream_t stream);

// d_kv_b [rows, heads, nope + v] from dk [rows, heads, nope + rope] and dv [rows, heads, v], and
// d_k_pe (row r at d_k_pe + r * d_k_pe_ld, columns [0, rope) written) = RoPE_bwd of the head sum
// of dk's rope parts, one pass.
template <class T>
void mla_merge_kv_grad(T* d_kv_b, T* d_k_pe, int64_t d_k_pe_ld, const T* dk, const T* dv,
                       const MlaRope& rope, int64_t rows, const MlaHeadDims& dims,
                       cudaStream_t stream);

}  // namespace frugal::cuda
