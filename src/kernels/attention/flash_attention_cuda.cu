// Entry points of flash_attention_cuda.h: argument checks and the choice of kernel.
//   T = float: the SIMT kernels (flash_attention_simt.cu), FP32 throughout.
//   T = __nv_bfloat16: cuDNN's fused engine when the preference and the call allow it
//     (cudnn_attention.h); else the sm90 tensor-core kernels when qk_dim = 192, v_dim = 128 and
//     every pointer is 16-byte aligned (sm90_flash_fwd_bf16.cu, sm90_flash_bwd_bf16.cu); otherwise
//     the SIMT kernels on bf16 data (any head dims up to 256, any alignment).
// Each call records which kernels ran (flash_attention_backend in cudnn_attention.h).
// The backward's workspace holds delta [batch, heads, seq] (fp32), filled before frugal's kernels
// run (the cuDNN path computes its own).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/attention/cudnn_attention.h"
#include "kernels/attention/flash_attention_cuda.h"
#include "kernels/attention/flash_attention_launch.h"

namespace frugal::cuda {
namespace {

using flash::AttentionShape;

AttentionShape checked_shape(int64_t batch, int64_t seq, int64_t heads, int64_t qk_dim,
                             int64_t v_dim, float scale) {
  FRUGAL_CUDA_REQUIRE(batch >= 0 && seq >= 0 && heads >= 0,
                      "flash attention: batch, seq and heads must not be negative");
  FRUGAL_CUDA_REQUIRE(seq < (int64_t{1} << 30), "flash attention: seq too long");
  FRUGAL_CUDA_REQUIRE(heads < (int64_t{1} << 20), "flash attention: too many heads");
  FRUGAL_CUDA_REQUIRE(qk_dim >= 1 && qk_dim <= flash::kSimtMaxDim,
                      "flash attention: qk_dim must be in 1..256");
  FRUGAL_CUDA_REQUIRE(v_dim >= 1 && v_dim <= flash::kSimtMaxDim,
                      "flash attention: v_dim must be in 1..256");
  FRUGAL_CUDA_REQUIRE(std::isfinite(scale) && scale > 0.0f,
                      "flash attention: scale must be positive and finite");
  return AttentionShape{batch, seq, heads, qk_dim, v_dim, scale};
}

int64_t rows(const AttentionShape& shape) { return shape.batch * shape.seq * shape.heads; }

bool aligned_16(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

bool sm90_dims(const AttentionShape& shape) {
  return shape.qk_dim == flash::kSm90QkDim && shape.v_dim == flash::kSm90VDim;
}

size_t delta_bytes(const AttentionShape& shape) {
  const size_t bytes = static_cast<size_t>(rows(shape)) * sizeof(float);
  return (bytes + 255) / 256 * 256;
}

}  // namespace

template <class T>
void flash_attention_fwd(T* out, float* lse, const T* q, const T* k, const T* v, int64_t batch,
                         int64_t seq, int64_t heads, int64_t qk_dim, int64_t v_dim, float scale,
                         cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>);
  const AttentionShape shape = checked_shape(batch, seq, heads, qk_dim, v_dim, scale);
  if (rows(shape) == 0) return;
  FRUGAL_CUDA_REQUIRE(out != nullptr && lse != nullptr && q != nullptr && k != nullptr &&
                          v != nullptr,
                      "flash_attention_fwd: null tensor");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (flash::cudnn_fwd_bf16(out, lse, q, k, v, shape, stream)) {
      flash::record_backend(false, "cudnn");
      return;
    }
    if (sm90_dims(shape) && aligned_16({out, q, k, v})) {
      flash::sm90_fwd_bf16(out, lse, q, k, v, shape, stream);
      flash::record_backend(false, "sm90");
      return;
    }
  }
  flash::simt_fwd(out, lse, q, k, v, shape, stream);
  flash::record_backend(false, "simt");
}

template <class T>
size_t flash_attention_bwd_workspace_bytes(int64_t batch, int64_t seq, int64_t heads,
                                           int64_t qk_dim, int64_t v_dim) {
  return delta_bytes(checked_shape(batch, seq, heads, qk_dim, v_dim, 1.0f));
}

template <class T>
void flash_attention_bwd(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse,
                         const T* q, const T* k, const T* v, int64_t batch, int64_t seq,
                         int64_t heads, int64_t qk_dim, int64_t v_dim, float scale,
                         void* workspace, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>);
  const AttentionShape shape = checked_shape(batch, seq, heads, qk_dim, v_dim, scale);
  if (rows(shape) == 0) return;
  FRUGAL_CUDA_REQUIRE(dq != nullptr && dk != nullptr && dv != nullptr && dout != nullptr &&
                          out != nullptr && lse != nullptr && q != nullptr && k != nullptr &&
                          v != nullptr,
                      "flash_attention_bwd: null tensor");
  FRUGAL_CUDA_REQUIRE(workspace != nullptr && reinterpret_cast<uintptr_t>(workspace) % 4 == 0,
                      "flash_attention_bwd: workspace missing or not 4-byte aligned "
                      "(size it with flash_attention_bwd_workspace_bytes)");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (flash::cudnn_bwd_bf16(dq, dk, dv, dout, out, lse, q, k, v, shape, stream)) {
      flash::record_backend(true, "cudnn");
      return;
    }
  }
  float* delta = static_cast<float*>(workspace);  // [batch, heads, seq]
  flash::launch_delta(delta, dout, out, shape, stream);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (sm90_dims(shape) && aligned_16({dq, dk, dv, dout, q, k, v})) {
      flash::sm90_bwd_bf16(dq, dk, dv, dout, lse, delta, q, k, v, shape, stream);
      flash::record_backend(true, "sm90");
      return;
    }
  }
  flash::simt_bwd(dq, dk, dv, dout, lse, delta, q, k, v, shape, stream);
  flash::record_backend(true, "simt");
}

#define INSTANTIATE(T)                                                                          \
  template void flash_attention_fwd<T>(T*, float*, const T*, const T*, const T*, int64_t,       \
                                       int64_t, int64_t, int64_t, int64_t, float,               \
                                       cudaStream_t);                                           \
  template size_t flash_attention_bwd_workspace_bytes<T>(int64_t, int64_t, int64_t, int64_t,    \
                                                         int64_t);                              \
  template void flash_attention_bwd<T>(T*, T*, T*, const T*, const T*, const float*, const T*,  \
                                       const T*, const T*, int64_t, int64_t, int64_t, int64_t,  \
                                       int64_t, float, void*, cudaStream_t);
INSTANTIATE(float)
INSTANTIATE(__nv_bfloat16)
#undef INSTANTIATE

}  // namespace frugal::cuda
