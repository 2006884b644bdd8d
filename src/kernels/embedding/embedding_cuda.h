// Token embedding on the GPU (same rules as embedding.h): out[n,d] = (T) table[ids[n], :] and
// dtable[ids[n], :] += dout[n, :]. The weight gradient is deterministic: rows are grouped by id
// (a stable sort of the n ids) and each table row sums its tokens in token order, no atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace frugal::cuda {

template <class T>
void embedding_fwd(T* out, const float* table, const int32_t* ids, int64_t n, int64_t d,
                   cudaStream_t stream);
size_t embedding_bwd_workspace_bytes(int64_t n, int64_t vocab);
template <class T>
void embedding_bwd_weight(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t d,
                          int64_t vocab, void* workspace, cudaStream_t stream);

}  // namespace frugal::cuda
