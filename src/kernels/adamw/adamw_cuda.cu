// CUDA optimizer step (see adamw_cuda.h): fused AdamW over one tensor or many, the global gradient
// norm with clipping and the non-finite check.
//
// adamw_update: grid-stride loop over chunks of 8 elements. The element update (adamw_element.cuh,
// shared with the FP8-fused update of adamw_fp8_cuda.cu) is the CPU reference's (train/adamw.cc) operation for operation, in double with explicit round-to-nearest
// intrinsics (no fused multiply-adds, which the host reference does not use either):
//   g = grad * clip;  m = beta1*m + (1-beta1)*g;  v = beta2*v + ((1-beta2)*g)*g   (then stored as M)
//   m_hat = m / (1-beta1^t);  v_hat = v / (1-beta2^t)      (from the stored, rounded m and v)
//   w = (w - (lr*wd)*w) - (lr*m_hat) / (sqrt(v_hat) + eps)                         (stored as fp32)
// The bias corrections are computed on the host with std::pow in double, as the CPU AdamW does. So
// with M = float the results equal the CPU AdamW's bit for bit (given the same float inputs); with
// M = bf16 each moment is rounded once from double to bf16 (nearest even). A clip scale of exactly 0
// (what grad_norm_and_clip writes when the norm is not finite) is a skipped step, as on the CPU:
// nothing is written. A null clip_scale means 1.
//
// adamw_update_multi: the same element update (one shared device function, so the same
// expressions and roundings; lr * weight_decay is formed per segment on the device with __dmul_rn,
// the product the single-tensor launcher forms on the host) over a fixed table of segments in one
// launch. The table (built once by adamw_multi_prepare) holds one 64-byte record per non-empty
// segment and the prefix of their tile counts; a tile is 8192 elements (256 threads x 4 chunks of
// 8) of one segment. Blocks run a grid-stride loop over tiles and find a tile's segment by binary
// search in the prefix. The vector path is chosen per segment (all its arrays 16-byte aligned).
//
// grad_norm_and_clip: pass 1 cuts every tensor into chunks of kNormChunk elements; one block per
// chunk sums the squares in double (fixed per-thread order, fixed tree) into its own slot of the
// workspace. The tensor table travels in the kernel parameters, kNormBatch tensors per launch, so
// nothing is copied from the host. Pass 2, one block, adds the partials in a fixed order and writes
// norm, clip scale and the non-finite flag. No atomics: the same bits on every run. With a table
// prepared once (grad_norm_prepare: tensor records and their block prefix in device memory), pass 1
// is a single launch whose blocks find their tensor by binary search; the blocks, their partials
// and their order are the same as in the batched form, so the results are the same bits.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "kernels/adamw/adamw_cuda.h"
#include "kernels/adamw/adamw_element.cuh"
#include "kernels/cast/vector_access.cuh"

namespace frugal::cuda {
namespace {

using detail::adamw_constants;
using detail::AdamWConstants;
using detail::aligned_to;
using detail::ceil_div;
using detail::kChunk;

constexpr int kThreads = 256;

using detail::text;

// One chunk (elements [offset, offset + valid), valid in 1..8) of one tensor: load, update, store.
// Shared by both kernels, so the per-tensor and multi-tensor updates are the same expressions.
// kVector: w, m, v, grad (and weight_bf16) 16-byte aligned.
template <class M, bool kVector>
__device__ __forceinline__ void adamw_chunk(float* __restrict__ w, M* __restrict__ m,
                                            M* __restrict__ v, const float* __restrict__ grad,
                                            __nv_bfloat16* __restrict__ weight_bf16, int64_t offset,
                                            int64_t valid, double clip_d, const AdamWConstants& c,
                                            double decay) {
  float wv[kChunk], mv[kChunk], vv[kChunk], gv[kChunk];
  detail::load_chunk<kVector>(wv, w + offset, valid);
  detail::load_chunk<kVector>(mv, m + offset, valid);
  detail::load_chunk<kVector>(vv, v + offset, valid);
  detail::load_chunk<kVector>(gv, grad + offset, valid);
#pragma unroll
  for (int j = 0; j < kChunk; ++j)
    detail::adamw_element<M>(wv[j], mv[j], vv[j], gv[j], clip_d, c, decay);
  detail::store_chunk<kVector>(w + offset, wv, valid);
  detail::store_chunk<kVector>(m + offset, mv, valid);
  detail::store_chunk<kVector>(v + offset, vv, valid);
  if (weight_bf16 != nullptr) detail::store_chunk<kVector>(weight_bf16 + offset, wv, valid);
}

template <class M, bool kVector>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* __restrict__ w, M* __restrict__ m, M* __restrict__ v,
                 const float* __restrict__ grad, const float* __restrict__ clip_scale,
                 AdamWConstants c, int64_t n, __nv_bfloat16* __restrict__ weight_bf16) {
  const float clip = clip_scale != nullptr ? *clip_scale : 1.0f;
  if (clip == 0.0f) return;  // a skipped step (non-finite gradient norm)
  const double clip_d = clip;
  const int64_t chunks = ceil_div(n, kChunk);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < chunks;
       i += stride) {
    const int64_t offset = i * kChunk;
    adamw_chunk<M, kVector>(w, m, v, grad, weight_bf16, offset, detail::min64(kChunk, n - offset),
                            clip_d, c, c.decay);
  }
}

// ---- many tensors in one launch -----------------------------------------------------------------
// The table in device memory: `segments` records, then first_tile[segments + 1] (int64): the tiles
// of record j are [first_tile[j], first_tile[j + 1]). A tile is kTileElements consecutive elements
// of one segment (the last tile of a segment may be shorter); one block updates one tile at a time,
// thread t taking chunks t, t + kThreads, ... of it (coalesced). Empty segments are left out.

constexpr int kTileChunksPerThread = 4;
constexpr int64_t kTileElements = int64_t{kThreads} * kChunk * kTileChunksPerThread;  // 8192

struct SegmentRecord {
  float* w;
  void* m;
  void* v;
  const float* grad;
  __nv_bfloat16* weight_bf16;
  int64_t count;
  double weight_decay;  // the segment's float weight decay, widened (exact)
  int64_t vector;       // 1: every array 16-byte aligned
};
static_assert(sizeof(SegmentRecord) == 64, "SegmentRecord is 64 bytes (the table layout)");

int64_t tiles_of(int64_t count) { return ceil_div(count, kTileElements); }

template <class M, bool kVector>
__device__ __forceinline__ void adamw_tile(const SegmentRecord& s, int64_t tile_in_segment,
                                           double clip_d, const AdamWConstants& c, double decay) {
  float* w = s.w;
  M* m = static_cast<M*>(s.m);
  M* v = static_cast<M*>(s.v);
  const float* grad = s.grad;
  __nv_bfloat16* weight_bf16 = s.weight_bf16;
  const int64_t first = tile_in_segment * kTileElements;
#pragma unroll 1
  for (int k = 0; k < kTileChunksPerThread; ++k) {
    const int64_t offset = first + (static_cast<int64_t>(k) * kThreads + threadIdx.x) * kChunk;
    if (offset >= s.count) break;  // later chunks of this thread lie further on
    adamw_chunk<M, kVector>(w, m, v, grad, weight_bf16, offset,
                            detail::min64(kChunk, s.count - offset), clip_d, c, decay);
  }
}

// Registers (ptxas, sm_90a): 76-78 with the tile loop not unrolled, no spills, so 3 blocks of 256
// per SM (unrolled it took 92: 2 blocks; forcing 3 with __launch_bounds__ spilled).
template <class M>
__global__ void __launch_bounds__(kThreads)
    adamw_multi_kernel(const SegmentRecord* __restrict__ records,
                       const int64_t* __restrict__ first_tile, int64_t segments, int64_t tiles,
                       const float* __restrict__ clip_scale, AdamWConstants c) {
  const float clip = clip_scale != nullptr ? *clip_scale : 1.0f;
  if (clip == 0.0f) return;  // a skipped step (non-finite gradient norm)
  const double clip_d = clip;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    // The segment: the last j with first_tile[j] <= tile (every record has at least one tile).
    int64_t low = 0, high = segments - 1;
    while (low < high) {
      const int64_t middle = (low + high + 1) / 2;
      if (first_tile[middle] <= tile)
        low = middle;
      else
        high = middle - 1;
    }
    const SegmentRecord s = records[low];
    // The same product the per-tensor launcher forms on the host (lr * weight_decay in double).
    const double decay = __dmul_rn(c.lr, s.weight_decay);
    if (s.vector != 0)
      adamw_tile<M, true>(s, tile - first_tile[low], clip_d, c, decay);
    else
      adamw_tile<M, false>(s, tile - first_tile[low], clip_d, c, decay);
  }
}

// ---- gradient norm -------------------------------------------------------------------------------

constexpr int64_t kNormChunk = int64_t{1} << 15;  // elements per pass-1 block
constexpr int kNormBatch = 128;                    // tensors per pass-1 launch (kernel parameters)
constexpr int kFinishThreads = 1024;

struct NormBatch {
  const float* data[kNormBatch];
  int64_t count[kNormBatch];
  int64_t first_block[kNormBatch + 1];  // block range of tensor j: [first_block[j], first_block[j+1])
  int tensors;
};

// Sum over the block (blockDim.x a multiple of 32), returned to thread 0. Fixed order.
__device__ double block_sum_double(double value) {
  __shared__ double warp_sums[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0)
    for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) total += warp_sums[i];
  return total;
}

// The sum of squares of data[begin, begin + count) (count <= kNormChunk) over the block, returned
// to thread 0: a fixed per-thread order (explicit fused multiply-adds) and a fixed tree. Shared by
// both pass-1 kernels, so they give the same partials.
__device__ __forceinline__ double norm_block_partial(const float* data, int64_t begin,
                                                     int64_t count) {
  const bool vector = reinterpret_cast<uintptr_t>(data) % 16 == 0;
  double sum = 0.0;
  for (int64_t c = threadIdx.x; c * kChunk < count; c += kThreads) {
    float x[kChunk];
    const int64_t valid = count - c * kChunk;
    if (vector)
      detail::load_chunk<true>(x, data + begin + c * kChunk, valid);
    else
      detail::load_chunk<false>(x, data + begin + c * kChunk, valid);
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      const double value = static_cast<double>(x[i]);
      sum = __fma_rn(value, value, sum);
    }
  }
  return block_sum_double(sum);
}

__global__ void __launch_bounds__(kThreads)
    grad_norm_partial_kernel(double* __restrict__ partials, NormBatch batch) {
  const int64_t block = blockIdx.x;
  int j = 0;
  while (j + 1 < batch.tensors && batch.first_block[j + 1] <= block) ++j;
  const int64_t begin = (block - batch.first_block[j]) * kNormChunk;
  const double total = norm_block_partial(batch.data[j], begin,
                                          detail::min64(kNormChunk, batch.count[j] - begin));
  if (threadIdx.x == 0) partials[block] = total;
}

// A prepared table (grad_norm_prepare): `tensors` records of non-empty tensors, then
// first_block[tensors + 1]; one block per kNormChunk elements of every tensor, in one launch.
struct NormRecord {
  const float* data;
  int64_t count;
};

__global__ void __launch_bounds__(kThreads)
    grad_norm_partial_table_kernel(double* __restrict__ partials,
                                   const NormRecord* __restrict__ records,
                                   const int64_t* __restrict__ first_block, int64_t tensors) {
  const int64_t block = blockIdx.x;
  int64_t low = 0, high = tensors - 1;  // the last j with first_block[j] <= block
  while (low < high) {
    const int64_t middle = (low + high + 1) / 2;
    if (first_block[middle] <= block)
      low = middle;
    else
      high = middle - 1;
  }
  const NormRecord r = records[low];
  const int64_t begin = (block - first_block[low]) * kNormChunk;
  const double total =
      norm_block_partial(r.data, begin, detail::min64(kNormChunk, r.count - begin));
  if (threadIdx.x == 0) partials[block] = total;
}

__global__ void __launch_bounds__(kFinishThreads)
    grad_norm_finish_kernel(float* __restrict__ norm, float* __restrict__ clip_scale,
                            int32_t* __restrict__ nonfinite, const double* __restrict__ partials,
                            int64_t count, float max_norm) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kFinishThreads) sum += partials[i];
  const double total = block_sum_double(sum);
  if (threadIdx.x != 0) return;
  const double root = sqrt(total);
  const bool finite = isfinite(root);
  norm[0] = static_cast<float>(root);
  nonfinite[0] = finite ? 0 : 1;
  double scale = 1.0;
  if (!finite)
    scale = 0.0;
  else if (max_norm > 0.0f)
    scale = fmin(1.0, static_cast<double>(max_norm) / (root + 1e-6));
  clip_scale[0] = static_cast<float>(scale);
}

int64_t norm_blocks(int64_t count) { return count > 0 ? ceil_div(count, kNormChunk) : 0; }

}  // namespace

template <class M>
void adamw_update(float* w, M* m, M* v, const float* grad, const float* clip_scale,
                  const AdamWStep& step, int64_t n, void* weight_bf16, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n >= 0, "cuda::adamw_update: negative size");
  const AdamWConstants c = adamw_constants(step, "adamw_update");
  if (n == 0) return;
  FRUGAL_CUDA_REQUIRE(w != nullptr && m != nullptr && v != nullptr && grad != nullptr,
                      "cuda::adamw_update: null pointer");
  auto* w_bf16 = static_cast<__nv_bfloat16*>(weight_bf16);
  const unsigned grid = detail::grid_stride_blocks(ceil_div(n, kChunk), kThreads);
  const bool vector = aligned_to(w, 16) && aligned_to(m, 16) && aligned_to(v, 16) &&
                      aligned_to(grad, 16) && (w_bf16 == nullptr || aligned_to(w_bf16, 16));
  if (vector)
    adamw_kernel<M, true><<<grid, kThreads, 0, stream>>>(w, m, v, grad, clip_scale, c, n, w_bf16);
  else
    adamw_kernel<M, false><<<grid, kThreads, 0, stream>>>(w, m, v, grad, clip_scale, c, n, w_bf16);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

size_t adamw_multi_table_bytes(int64_t count) {
  return detail::segment_table_bytes<SegmentRecord>(count, "cuda::adamw_multi_table_bytes");
}

template <class M>
AdamWMultiTable adamw_multi_prepare(const AdamWSegment* segments, int64_t count,
                                    void* table_memory, size_t table_bytes, cudaStream_t stream) {
  ADAMW_REQUIRE(count >= 0 && (count == 0 || segments != nullptr),
                "cuda::adamw_multi_prepare: bad segment list (" + text(count) + " segments)");
  std::vector<SegmentRecord> records;
  records.reserve(static_cast<size_t>(count));
  std::vector<int64_t> first_tile{0};
  for (int64_t i = 0; i < count; ++i) {
    const AdamWSegment& s = segments[i];
    ADAMW_REQUIRE(s.count >= 0, "cuda::adamw_multi_prepare: segment " + text(i) + " has size " +
                                    text(s.count));
    ADAMW_REQUIRE(s.weight_decay >= 0.0f && std::isfinite(s.weight_decay),
                  "cuda::adamw_multi_prepare: segment " + text(i) + " has weight decay " +
                      std::to_string(s.weight_decay));
    if (s.count == 0) continue;
    ADAMW_REQUIRE(s.w != nullptr && s.m != nullptr && s.v != nullptr && s.grad != nullptr,
                  "cuda::adamw_multi_prepare: segment " + text(i) + " (" + text(s.count) +
                      " elements) has a null array");
    SegmentRecord r{};
    r.w = s.w;
    r.m = s.m;
    r.v = s.v;
    r.grad = s.grad;
    r.weight_bf16 = static_cast<__nv_bfloat16*>(s.weight_bf16);
    r.count = s.count;
    r.weight_decay = static_cast<double>(s.weight_decay);
    r.vector = aligned_to(s.w, 16) && aligned_to(s.m, 16) && aligned_to(s.v, 16) &&
                       aligned_to(s.grad, 16) &&
                       (s.weight_bf16 == nullptr || aligned_to(s.weight_bf16, 16))
                   ? 1
                   : 0;
    records.push_back(r);
    first_tile.push_back(first_tile.back() + tiles_of(s.count));
  }
  AdamWMultiTable table;
  table.device = table_memory;
  table.segments = static_cast<int64_t>(records.size());
  table.tiles = first_tile.back();
  table.moment_bytes = static_cast<int>(sizeof(M));
  if (records.empty()) return table;
  detail::upload_segment_table(table_memory, table_bytes, records, first_tile, stream,
                               "cuda::adamw_multi_prepare");
  return table;
}

template <class M>
void adamw_update_multi(const AdamWMultiTable& table, const float* clip_scale,
                        const AdamWStep& step, cudaStream_t stream) {
  const AdamWConstants c = adamw_constants(step, "adamw_update_multi");
  ADAMW_REQUIRE(table.moment_bytes == static_cast<int>(sizeof(M)),
                "cuda::adamw_update_multi: the table was prepared for " + text(table.moment_bytes) +
                    "-byte moments, not " + text(static_cast<int64_t>(sizeof(M))));
  ADAMW_REQUIRE(table.segments >= 0 && table.tiles >= table.segments,
                "cuda::adamw_update_multi: table not prepared (" + text(table.segments) +
                    " segments, " + text(table.tiles) + " tiles)");
  if (table.segments == 0) return;
  FRUGAL_CUDA_REQUIRE(table.device != nullptr, "cuda::adamw_update_multi: table without memory");
  const auto* records = static_cast<const SegmentRecord*>(table.device);
  const auto* first_tile = reinterpret_cast<const int64_t*>(records + table.segments);
  const unsigned grid = static_cast<unsigned>(detail::min64(table.tiles, detail::kMaxGridBlocks));
  adamw_multi_kernel<M><<<grid, kThreads, 0, stream>>>(records, first_tile, table.segments,
                                                        table.tiles, clip_scale, c);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

size_t grad_norm_workspace_bytes(const GradTensor* tensors, int64_t count) {
  int64_t blocks = 0;
  for (int64_t i = 0; i < count; ++i) blocks += norm_blocks(tensors[i].count);
  return static_cast<size_t>(blocks > 0 ? blocks : 1) * sizeof(double);
}

void grad_norm_and_clip(float* norm, float* clip_scale, int32_t* nonfinite,
                        const GradTensor* tensors, int64_t count, float max_norm, void* workspace,
                        cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(count >= 0 && (count == 0 || tensors != nullptr),
                      "cuda::grad_norm_and_clip: bad tensor list");
  FRUGAL_CUDA_REQUIRE(norm != nullptr && clip_scale != nullptr && nonfinite != nullptr,
                      "cuda::grad_norm_and_clip: null output");
  FRUGAL_CUDA_REQUIRE(workspace != nullptr && aligned_to(workspace, sizeof(double)),
                      "cuda::grad_norm_and_clip: needs an 8-byte aligned workspace");
  auto* partials = static_cast<double*>(workspace);
  int64_t partial_base = 0;
  for (int64_t first = 0; first < count; first += kNormBatch) {
    NormBatch batch{};
    batch.tensors = static_cast<int>(detail::min64(kNormBatch, count - first));
    int64_t blocks = 0;
    for (int j = 0; j < batch.tensors; ++j) {
      const GradTensor& tensor = tensors[first + j];
      FRUGAL_CUDA_REQUIRE(tensor.count >= 0 && (tensor.count == 0 || tensor.data != nullptr),
                          "cuda::grad_norm_and_clip: a tensor has a negative size or no data");
      batch.data[j] = tensor.data;
      batch.count[j] = tensor.count;
      batch.first_block[j] = blocks;
      blocks += norm_blocks(tensor.count);
    }
    batch.first_block[batch.tensors] = blocks;
    if (blocks == 0) continue;
    FRUGAL_CUDA_REQUIRE(blocks <= 0x7FFFFFFF, "cuda::grad_norm_and_clip: too many chunks");
    grad_norm_partial_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        partials + partial_base, batch);
    FRUGAL_CUDA_CHECK_LAUNCH();
    partial_base += blocks;
  }
  grad_norm_finish_kernel<<<1, kFinishThreads, 0, stream>>>(norm, clip_scale, nonfinite, partials,
                                                            partial_base, max_norm);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

size_t grad_norm_table_bytes(int64_t count) {
  FRUGAL_CUDA_REQUIRE(count >= 0, "cuda::grad_norm_table_bytes: negative tensor count");
  return static_cast<size_t>(count) * sizeof(NormRecord) +
         static_cast<size_t>(count + 1) * sizeof(int64_t);
}

GradNormTable grad_norm_prepare(const GradTensor* tensors, int64_t count, void* table_memory,
                                size_t table_bytes, cudaStream_t stream) {
  ADAMW_REQUIRE(count >= 0 && (count == 0 || tensors != nullptr),
                "cuda::grad_norm_prepare: bad tensor list (" + text(count) + " tensors)");
  std::vector<NormRecord> records;
  std::vector<int64_t> first_block{0};
  for (int64_t i = 0; i < count; ++i) {
    const GradTensor& t = tensors[i];
    ADAMW_REQUIRE(t.count >= 0 && (t.count == 0 || t.data != nullptr),
                  "cuda::grad_norm_prepare: tensor " + text(i) + " (" + text(t.count) +
                      " elements) has a negative size or no data");
    if (t.count == 0) continue;
    records.push_back({t.data, t.count});
    first_block.push_back(first_block.back() + norm_blocks(t.count));
  }
  GradNormTable table;
  table.device = table_memory;
  table.tensors = static_cast<int64_t>(records.size());
  table.blocks = first_block.back();
  ADAMW_REQUIRE(table.blocks <= 0x7FFFFFFF,
                "cuda::grad_norm_prepare: too many chunks (" + text(table.blocks) + ")");
  if (records.empty()) return table;
  const size_t record_bytes = records.size() * sizeof(NormRecord);
  const size_t prefix_bytes = first_block.size() * sizeof(int64_t);
  FRUGAL_CUDA_REQUIRE(table_memory != nullptr && aligned_to(table_memory, 16),
                      "cuda::grad_norm_prepare: needs 16-byte aligned table memory");
  ADAMW_REQUIRE(table_bytes >= record_bytes + prefix_bytes,
                "cuda::grad_norm_prepare: table memory of " +
                    text(static_cast<int64_t>(table_bytes)) + " bytes, " +
                    text(static_cast<int64_t>(record_bytes + prefix_bytes)) + " needed");
  auto* base = static_cast<unsigned char*>(table_memory);
  FRUGAL_CUDA_CHECK(
      cudaMemcpyAsync(base, records.data(), record_bytes, cudaMemcpyHostToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(base + record_bytes, first_block.data(), prefix_bytes,
                                    cudaMemcpyHostToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host vectors go out of scope
  return table;
}

void grad_norm_and_clip(float* norm, float* clip_scale, int32_t* nonfinite,
                        const GradNormTable& table, float max_norm, void* workspace,
                        cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(norm != nullptr && clip_scale != nullptr && nonfinite != nullptr,
                      "cuda::grad_norm_and_clip: null output");
  FRUGAL_CUDA_REQUIRE(workspace != nullptr && aligned_to(workspace, sizeof(double)),
                      "cuda::grad_norm_and_clip: needs an 8-byte aligned workspace");
  ADAMW_REQUIRE(table.tensors >= 0 && table.blocks >= table.tensors &&
                    (table.tensors == 0 || table.device != nullptr),
                "cuda::grad_norm_and_clip: table not prepared (" + text(table.tensors) +
                    " tensors, " + text(table.blocks) + " blocks)");
  auto* partials = static_cast<double*>(workspace);
  if (table.tensors > 0) {
    const auto* records = static_cast<const NormRecord*>(table.device);
    const auto* first_block = reinterpret_cast<const int64_t*>(records + table.tensors);
    grad_norm_partial_table_kernel<<<static_cast<unsigned>(table.blocks), kThreads, 0, stream>>>(
        partials, records, first_block, table.tensors);
    FRUGAL_CUDA_CHECK_LAUNCH();
  }
  grad_norm_finish_kernel<<<1, kFinishThreads, 0, stream>>>(norm, clip_scale, nonfinite, partials,
                                                            table.blocks, max_norm);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template void adamw_update<float>(float*, float*, float*, const float*, const float*,
                                  const AdamWStep&, int64_t, void*, cudaStream_t);
template void adamw_update<__nv_bfloat16>(float*, __nv_bfloat16*, __nv_bfloat16*, const float*,
                                          const float*, const AdamWStep&, int64_t, void*,
                                          cudaStream_t);
template AdamWMultiTable adamw_multi_prepare<float>(const AdamWSegment*, int64_t, void*, size_t,
                                                   cudaStream_t);
template AdamWMultiTable adamw_multi_prepare<__nv_bfloat16>(const AdamWSegment*, int64_t, void*,
                                                           size_t, cudaStream_t);
template void adamw_update_multi<float>(const AdamWMultiTable&, const float*, const AdamWStep&,
                                        cudaStream_t);
template void adamw_update_multi<__nv_bfloat16>(const AdamWMultiTable&, const float*,
                                                const AdamWStep&, cudaStream_t);

}  // namespace frugal::cuda
