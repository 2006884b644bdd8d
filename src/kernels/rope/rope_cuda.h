// RoPE on the GPU (same rules as rope.h: interleaved pairs, YaRN table). The table lives on the
// device as fp32 cos/sin [positions, rope_dim/2] (converted once from RopeTable's doubles).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

// x [tokens, heads, head_stride], elements [rope_offset, rope_offset + rope_dim) of each head
// rotated in place; positions [tokens] index the table rows.
template <class T>
void rope_fwd(T* x, const float* cos, const float* sin, int64_t rope_dim, const int32_t* positions,
              int64_t tokens, int64_t heads, int64_t head_stride, int64_t rope_offset,
              cudaStream_t stream);
template <class T>
void rope_bwd(T* grad, const float* cos, const float* sin, int64_t rope_dim,
              const int32_t* positions, int64_t tokens, int64_t heads, int64_t head_stride,
              int64_t rope_offset, cudaStream_t stream);

}  // namespace frugal::cuda
