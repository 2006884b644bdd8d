// CUDA token embedding (interface in embedding_cuda.h, rules in embedding.h):
//   out[n, d] = (T) table[ids[n], :]            table [vocab, d] fp32, out [n, d] T
//   dtable[ids[n], :] += dout[n, :]             dtable [vocab, d] fp32 (accumulated), dout T
//
// Forward: one warp per token row, 16-byte reads of the table when rows are aligned.
// Weight gradient, deterministic and free of float atomics:
//   1. keys = ids (an id outside [0, vocab) becomes the key `vocab` and is skipped), values =
//      token numbers 0..n-1
//   2. a stable radix sort of (key, token) on the key's low bits (CUB; stable, so the tokens of
//      one id stay in ascending order)
//   3. one block per sorted position; the block at the first position of an id finds the end of
//      that id's run and adds the run's dout rows in token order to dtable[id] (in registers,
//      starting from dtable's value). That is the CPU's order of additions, so an fp32 gradient
//      is bit-identical to the CPU's; every table row is written by one block.
// Workspace: sorted and unsorted keys and values (4 x n int32) and CUB's temporary storage.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "core/cuda_check.h"
#include "kernels/cast/vector_access.cuh"
#include "kernels/embedding/embedding_cuda.h"

namespace frugal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kFwdWarps = 8;            // token rows per forward block
constexpr int kBwdThreads = 256;        // one block per (sorted position, column block)
constexpr int64_t kBwdColumns = 4 * kBwdThreads;  // 4 columns per thread
constexpr int kBwdUnroll = 8;           // dout rows loaded ahead of their additions
constexpr size_t kAlign = 256;

using detail::from_float;
using detail::load_pack;
using detail::store_pack;
using detail::to_float;

// kVector: d % 4 == 0 and table/out aligned: a float4 of the table becomes 4 T at once.
template <class T, bool kVector>
__global__ void __launch_bounds__(kFwdWarps* kWarpSize)
    embedding_fwd_kernel(T* __restrict__ out, const float* __restrict__ table,
                         const int32_t* __restrict__ ids, int64_t n, int64_t d) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kFwdWarps + threadIdx.x / kWarpSize;
  if (row >= n) return;
  const float* src = table + static_cast<int64_t>(ids[row]) * d;
  T* dst = out + row * d;
  if (kVector) {
    for (int64_t j = lane * 4; j < d; j += kWarpSize * 4) {
      const float4 v4 = *reinterpret_cast<const float4*>(src + j);
      const float v[4] = {v4.x, v4.y, v4.z, v4.w};
      store_pack<T, 4>(dst + j, v);
    }
  } else {
    for (int64_t j = lane; j < d; j += kWarpSize) dst[j] = from_float<T>(src[j]);
  }
}

__global__ void embedding_sort_input_kernel(uint32_t* __restrict__ keys,
                                            int32_t* __restrict__ tokens,
                                            const int32_t* __restrict__ ids, int64_t n,
                                            int32_t vocab) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t id = ids[i];
  keys[i] = static_cast<uint32_t>((id >= 0 && id < vocab) ? id : vocab);
  tokens[i] = static_cast<int32_t>(i);
}

// Block (p, column block): if sorted position p starts a run of equal ids, dtable[id] += the run's
// dout rows in token order, for this block's columns.
template <class T, bool kVector>
__global__ void __launch_bounds__(kBwdThreads)
    embedding_bwd_runs_kernel(float* __restrict__ dtable, const T* __restrict__ dout,
                              const uint32_t* __restrict__ sorted_ids,
                              const int32_t* __restrict__ sorted_tokens, int64_t n, int64_t d,
                              uint32_t vocab) {
  const int64_t p = blockIdx.x;
  const uint32_t id = sorted_ids[p];
  if (id >= vocab || (p > 0 && sorted_ids[p - 1] == id)) return;  // whole block leaves
  // End of the run: keys are sorted, so the matching positions form a prefix from p.
  int64_t end = p;
  for (int64_t base = p;; base += kBwdThreads) {
    const int64_t q = base + threadIdx.x;
    const int same = __syncthreads_count(q < n && sorted_ids[q] == id);
    if (same < kBwdThreads) {
      end = base + same;
      break;
    }
  }
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kBwdColumns + threadIdx.x * 4;
  if (col >= d) return;
  const int valid = d - col < 4 ? static_cast<int>(d - col) : 4;
  float* row = dtable + static_cast<int64_t>(id) * d + col;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < valid; ++i) acc[i] = row[i];
  int64_t q = p;
  for (; q + kBwdUnroll <= end; q += kBwdUnroll) {
    float v[kBwdUnroll][4];
#pragma unroll
    for (int u = 0; u < kBwdUnroll; ++u) {
      const T* g = dout + static_cast<int64_t>(sorted_tokens[q + u]) * d + col;
      if (kVector) {
        load_pack<T, 4>(v[u], g);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) v[u][i] = i < valid ? to_float(g[i]) : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kBwdUnroll; ++u)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += v[u][i];
  }
  for (; q < end; ++q) {
    const T* g = dout + static_cast<int64_t>(sorted_tokens[q]) * d + col;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (i < valid) acc[i] += to_float(g[i]);
  }
  for (int i = 0; i < valid; ++i) row[i] = acc[i];
}

size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Key bits the sort looks at: enough for 0..vocab (vocab is the key of an invalid id).
int key_bits(int64_t vocab) {
  int bits = 1;
  while ((int64_t{1} << bits) <= vocab) ++bits;
  return bits;
}

size_t cub_sort_bytes(int64_t n, int64_t vocab) {
  size_t bytes = 0;
  FRUGAL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), static_cast<int>(n), 0,
      key_bits(vocab)));
  return bytes;
}

}  // namespace

template <class T>
void embedding_fwd(T* out, const float* table, const int32_t* ids, int64_t n, int64_t d,
                   cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && d >= 1, "embedding_fwd: bad sizes");
  FRUGAL_CUDA_REQUIRE(n / kFwdWarps < INT_MAX, "embedding_fwd: too many tokens for one grid");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(out != nullptr && table != nullptr && ids != nullptr,
                      "embedding_fwd: null tensor");
  const unsigned blocks = static_cast<unsigned>((n + kFwdWarps - 1) / kFwdWarps);
  const bool vector = d % 4 == 0 && reinterpret_cast<uintptr_t>(table) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(out) % (4 * sizeof(T)) == 0;
  if (vector)
    embedding_fwd_kernel<T, true><<<blocks, kFwdWarps * kWarpSize, 0, stream>>>(out, table, ids,
                                                                                 n, d);
  else
    embedding_fwd_kernel<T, false><<<blocks, kFwdWarps * kWarpSize, 0, stream>>>(out, table, ids,
                                                                                  n, d);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

size_t embedding_bwd_workspace_bytes(int64_t n, int64_t vocab) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && n < INT_MAX, "embedding_bwd_workspace_bytes: bad token count");
  FRUGAL_CUDA_REQUIRE(vocab >= 1 && vocab < INT_MAX, "embedding_bwd_workspace_bytes: bad vocab");
  if (n == 0) return 0;
  return 4 * align_up(static_cast<size_t>(n) * sizeof(int32_t)) + align_up(cub_sort_bytes(n, vocab));
}

template <class T>
void embedding_bwd_weight(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t d,
                          int64_t vocab, void* workspace, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0 && n < INT_MAX && d >= 1, "embedding_bwd_weight: bad sizes");
  FRUGAL_CUDA_REQUIRE(vocab >= 1 && vocab < INT_MAX, "embedding_bwd_weight: bad vocab");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(dtable != nullptr && dout != nullptr && ids != nullptr && workspace != nullptr,
                      "embedding_bwd_weight: null tensor or workspace");
  const int64_t column_blocks = (d + kBwdColumns - 1) / kBwdColumns;
  FRUGAL_CUDA_REQUIRE(column_blocks <= 65535, "embedding_bwd_weight: rows too wide");
  const size_t list_bytes = align_up(static_cast<size_t>(n) * sizeof(int32_t));
  auto* base = static_cast<char*>(workspace);
  auto* keys = reinterpret_cast<uint32_t*>(base);
  auto* tokens = reinterpret_cast<int32_t*>(base + list_bytes);
  auto* sorted_keys = reinterpret_cast<uint32_t*>(base + 2 * list_bytes);
  auto* sorted_tokens = reinterpret_cast<int32_t*>(base + 3 * list_bytes);
  void* cub_storage = base + 4 * list_bytes;
  size_t cub_bytes = cub_sort_bytes(n, vocab);

  embedding_sort_input_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
      keys, tokens, ids, n, static_cast<int32_t>(vocab));
  FRUGAL_CUDA_CHECK_LAUNCH();
  FRUGAL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_storage, cub_bytes, keys, sorted_keys,
                                                    tokens, sorted_tokens, static_cast<int>(n), 0,
                                                    key_bits(vocab), stream));
  const bool vector = d % 4 == 0 && reinterpret_cast<uintptr_t>(dout) % (4 * sizeof(T)) == 0;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(column_blocks));
  if (vector)
    embedding_bwd_runs_kernel<T, true><<<grid, kBwdThreads, 0, stream>>>(
        dtable, dout, sorted_keys, sorted_tokens, n, d, static_cast<uint32_t>(vocab));
  else
    embedding_bwd_runs_kernel<T, false><<<grid, kBwdThreads, 0, stream>>>(
        dtable, dout, sorted_keys, sorted_tokens, n, d, static_cast<uint32_t>(vocab));
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template void embedding_fwd<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                   cudaStream_t);
template void embedding_fwd<__nv_bfloat16>(__nv_bfloat16*, const float*, const int32_t*, int64_t,
                                           int64_t, cudaStream_t);
template void embedding_bwd_weight<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                          int64_t, void*, cudaStream_t);
template void embedding_bwd_weight<__nv_bfloat16>(float*, const __nv_bfloat16*, const int32_t*,
                                                  int64_t, int64_t, int64_t, void*, cudaStream_t);

}  // namespace frugal::cuda
