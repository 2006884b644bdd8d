// CUDA absorbed-MLA decode attention over the paged BF16 latent cache
// (kernels/attention/mla_decode_cuda.h; math and layouts in kernels/attention/mla_decode.h).
//
//   q [rows, heads, D] bf16, D = kv_lora + rope; out [rows, heads, kv_lora] bf16;
//   cache [num_pages, layers, page_size, D] bf16 through page_table [sequences, max_pages].
//
// Tensor-core path: heads a multiple of 16; (kv_lora, rope) in {(128, 64), (256, 64), (512, 64)}.
// Other shapes (entry_dim <= 1024) run a plain one-warp-per-head kernel (small test models).
// q and cache 16-byte aligned, out 4-byte aligned.
//
// Kernel 1 (one thread block per (head group, KV split, row); a head group is 32 heads = two
// 16-head mma m-tiles when heads % 32 == 0, else 16; 4 warps per 16-head tile): the group's
// query Q [heads of the group, D] sits in shared memory; the split's positions are walked in
// tiles of 64 cache entries gathered through the page table with 16-byte cp.async into a
// double-buffered swizzled tile K [64, D], read once for all heads of the group. Per tile, warp
// (head tile m, quarter w) computes S = Q_m K^T for positions 16w..16w+15 with mma.sync m16n8k16
// (bf16 in, fp32 out); the 4 warps of a head tile agree on the per-head running max and sum
// through shared memory (each keeps the same fp32 state), P = exp(S - max) goes to shared memory
// as bf16, and warp (m, w) accumulates O_m[:, w*kv_lora/4 ...] += P_m V with V = K[:, :kv_lora]
// (the same shared tile). Without a split the block writes O / sum as bf16; with splits it
// writes the normalized partial O (fp32) and its log2-sum-exp to the workspace.
// Kernel 2 merges the splits of each (row, head) in split order (deterministic).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/attention/mla_decode_cuda.h"
#include "kernels/attention/sm90_flash_common.cuh"

namespace frugal::cuda {
namespace {

using namespace flash::sm90;

constexpr int kQuarters = 4;   // warps per 16-head tile: position quarters of S, column quarters of O
constexpr int kHeadTile = 16;  // heads of one mma m-tile
constexpr int kTileN = 64;     // cache entries per pipeline stage
constexpr int kMinTilesPerSplit = 2;
constexpr float kLog2e = 1.4426950408889634f;

// A block covers kHeadTiles tiles of 16 heads (1 or 2), 4 warps per tile.
template <int kDim, int kHeadTiles>
constexpr int shared_bytes() {
  return kHeadTiles * kHeadTile * kDim * 2            // Q tile [heads of the block, D]
         + 2 * kTileN * kDim * 2                      // two K stages [64, D]
         + kHeadTiles * kHeadTile * kTileN * 2        // P tile (bf16) [heads of the block, 64]
         + 2 * kHeadTiles * kQuarters * kHeadTile * 4;  // per-warp row max and row sum
}

struct Params {
  __nv_bfloat16* out;        // [rows, heads, kv_lora] (no split)
  float* partial_out;        // [splits, rows, heads, kv_lora] (splits > 1)
  float* partial_lse;        // [splits, rows, heads], log2 domain of the scaled scores
  const __nv_bfloat16* q;
  const __nv_bfloat16* cache;
  const int32_t* page_table;
  const int32_t* row_sequence;
  const int32_t* lengths;
  int64_t rows, heads, layers, layer, page_size, max_pages;
  int64_t split_length;  // positions per split, a multiple of kTileN
  int splits, head_groups;
  float scale_log2;      // softmax_scale * log2(e)
};

// Issue the cp.async copies of the cache entries of positions tile_start.. tile_start+63 into a
// swizzled K tile; positions at or past `end` are zero-filled. Thread t copies rows
// t/8 + (kThreads/8) i and chunks t%8 + 8k, so each thread looks up a few pages per tile.
template <int kDim, int kThreads>
__device__ inline void load_entries(uint32_t tile, const Params& p, const int32_t* pages,
                                    int64_t tile_start, int64_t end) {
  constexpr int kChunks = kDim / 8;  // 16-byte chunks per entry, a multiple of 8
  constexpr int kRowsPerPass = kThreads / 8;
  static_assert(kTileN % kRowsPerPass == 0, "whole passes over the tile");
  const int row_in_pass = threadIdx.x / 8, chunk0 = threadIdx.x % 8;
  const int page_size = static_cast<int>(p.page_size);  // positions fit in int32 (checked)
#pragma unroll
  for (int i = 0; i < kTileN / kRowsPerPass; ++i) {
    const int row = row_in_pass + kRowsPerPass * i;
    const int64_t position = tile_start + row;
    const bool valid = position < end;
    const __nv_bfloat16* entry = p.cache;
    if (valid) {
      const int position32 = static_cast<int>(position);
      const int64_t page = pages[position32 / page_size];
      entry += ((page * p.layers + p.layer) * p.page_size + position32 % page_size) * kDim;
    }
#pragma unroll
    for (int k = 0; k < kChunks / 8; ++k) {
      const int chunk = chunk0 + 8 * k;
      cp_async_16(tile + tile_offset<kDim>(row, chunk * 8), entry + (valid ? chunk * 8 : 0), valid);
    }
  }
}

template <int kKvLora, int kRope, int kHeadTiles>
__global__ void __launch_bounds__(32 * kQuarters * kHeadTiles)
    mla_decode_kernel(const Params p) {
  constexpr int kDim = kKvLora + kRope;
  constexpr int kBlockHeads = kHeadTiles * kHeadTile;
  constexpr int kThreads = 32 * kQuarters * kHeadTiles;
  constexpr int kOutCols = kKvLora / kQuarters;  // output columns per warp
  constexpr int kOutTiles = kOutCols / 8;        // n8 tiles of O per warp
  static_assert(kOutCols % 16 == 0, "each warp needs whole 16-column V blocks");

  const int head_group = static_cast<int>(blockIdx.x % p.head_groups);
  const int split = static_cast<int>((blockIdx.x / p.head_groups) % p.splits);
  const int64_t row = static_cast<int64_t>(blockIdx.x) / (p.head_groups * p.splits);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int head_tile = warp / kQuarters, quarter = warp % kQuarters;
  const int group = lane >> 2, pair = lane & 3;  // fragment row g and column pair t
  const int64_t head0 = static_cast<int64_t>(head_group) * kBlockHeads;

  // Positions of this split, clamped to the page table's capacity; the last split takes any
  // remainder (so a max_length that is too small only costs speed).
  const int64_t capacity = p.max_pages * p.page_size;
  const int64_t length = min(static_cast<int64_t>(p.lengths[row]), capacity);
  const int64_t start = split * p.split_length;
  const int64_t end = split == p.splits - 1 ? length : min(length, start + p.split_length);

  if (start >= end) {  // nothing to attend to in this split
    if (p.splits > 1) {  // an empty partial: weight 0, the merge never reads its values
      if (threadIdx.x < kBlockHeads)
        p.partial_lse[(split * p.rows + row) * p.heads + head0 + threadIdx.x] = -INFINITY;
    } else {  // only reachable for a length of 0 (outside the contract): zeros, not garbage
      for (int index = threadIdx.x; index < kBlockHeads * kKvLora; index += kThreads)
        p.out[((row * p.heads) + head0 + index / kKvLora) * kKvLora + index % kKvLora] =
            __float2bfloat16(0.f);
    }
    return;
  }

  extern __shared__ __align__(128) unsigned char shared[];
  const uint32_t q_tile = shared_address(shared);
  const uint32_t k_tiles = q_tile + kBlockHeads * kDim * 2;
  const uint32_t p_tile = k_tiles + 2 * kTileN * kDim * 2;
  unsigned char* p_tile_pointer = shared + kBlockHeads * kDim * 2 + 2 * kTileN * kDim * 2;
  // [warps, 16] each: warp w's max / sum over its 16 positions of the heads of its tile.
  float* row_max_shared = reinterpret_cast<float*>(p_tile_pointer + kBlockHeads * kTileN * 2);
  float* row_sum_shared = row_max_shared + kHeadTiles * kQuarters * kHeadTile;
  const int tile_warp0 = head_tile * kQuarters;  // first warp of this head tile

  const int32_t* pages = p.page_table + static_cast<int64_t>(p.row_sequence[row]) * p.max_pages;
  load_tile<kBlockHeads, kDim, kThreads>(q_tile, p.q + (row * p.heads + head0) * kDim, kDim,
                                         kBlockHeads);
  load_entries<kDim, kThreads>(k_tiles, p, pages, start, end);
  cp_async_commit();

  float out_acc[kOutTiles][4] = {};
  // Running max (log2 units, scaled) and sum of the two heads this lane holds: g and g + 8 of
  // its head tile.
  float running_max[2] = {-INFINITY, -INFINITY}, running_sum[2] = {0.f, 0.f};

  const int tiles = static_cast<int>((end - start + kTileN - 1) / kTileN);
  for (int t = 0; t < tiles; ++t) {
    const int64_t tile_start = start + static_cast<int64_t>(t) * kTileN;
    if (t + 1 < tiles)
      load_entries<kDim, kThreads>(k_tiles + ((t + 1) & 1) * kTileN * kDim * 2, p, pages,
                                   tile_start + kTileN, end);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning tile t
    cp_async_wait<1>();
    __syncthreads();
    const uint32_t k_tile = k_tiles + (t & 1) * kTileN * kDim * 2;

    // S = Q K^T for this warp's heads and 16 positions: [16 heads, 16 positions] as two n8
    // tiles, even and odd k-steps in separate accumulators (two independent mma chains each).
    float scores[2][4] = {}, scores_odd[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
      uint32_t a[4], b[4];
      ldmatrix_x4(a, a_operand_address<kDim>(q_tile, head_tile * 16, kk * 16, lane));
      ldmatrix_x4(b, b_operand_address<kDim>(k_tile, quarter * 16, kk * 16, lane));
      if (kk % 2 == 0) {
        mma_16816(scores[0], a, b[0], b[1]);
        mma_16816(scores[1], a, b[2], b[3]);
      } else {
        mma_16816(scores_odd[0], a, b[0], b[1]);
        mma_16816(scores_odd[1], a, b[2], b[3]);
      }
    }
    // Scale to log2 units and mask positions past the split's end.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t position = tile_start + quarter * 16 + n * 8 + 2 * pair + (e & 1);
        const float sum = scores[n][e] + scores_odd[n][e];
        const float s = position < end ? sum * p.scale_log2 : -INFINITY;
        scores[n][e] = s;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s);
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
    }
    if (pair == 0) {
      row_max_shared[warp * kHeadTile + group] = tile_max[0];
      row_max_shared[warp * kHeadTile + group + 8] = tile_max[1];
    }
    __syncthreads();

    // The 4 warps of a head tile derive the same new max (same values, same order).
    float new_max[2], rescale[2], offset[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float m = running_max[h];
      for (int w = 0; w < kQuarters; ++w)
        m = fmaxf(m, row_max_shared[(tile_warp0 + w) * kHeadTile + group + 8 * h]);
      new_max[h] = m;
      offset[h] = m == -INFINITY ? 0.f : m;  // a head with nothing seen yet: exp2(-inf) = 0
      rescale[h] = fast_exp2(running_max[h] - offset[h]);
    }
    float partial_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const float p0 = fast_exp2(scores[n][0] - offset[0]), p1 = fast_exp2(scores[n][1] - offset[0]);
      const float p2 = fast_exp2(scores[n][2] - offset[1]), p3 = fast_exp2(scores[n][3] - offset[1]);
      partial_sum[0] += p0 + p1;
      partial_sum[1] += p2 + p3;
      const int col = quarter * 16 + n * 8 + 2 * pair;
      const int head_row = head_tile * 16 + group;
      *reinterpret_cast<uint32_t*>(p_tile_pointer + tile_offset<kTileN>(head_row, col & ~7) +
                                   (col & 7) * 2) = pack_bf16(p0, p1);
      *reinterpret_cast<uint32_t*>(p_tile_pointer + tile_offset<kTileN>(head_row + 8, col & ~7) +
                                   (col & 7) * 2) = pack_bf16(p2, p3);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      partial_sum[h] += __shfl_xor_sync(0xffffffffu, partial_sum[h], 1);
      partial_sum[h] += __shfl_xor_sync(0xffffffffu, partial_sum[h], 2);
    }
    if (pair == 0) {
      row_sum_shared[warp * kHeadTile + group] = partial_sum[0];
      row_sum_shared[warp * kHeadTile + group + 8] = partial_sum[1];
    }
    __syncthreads();

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_sum = 0.f;
      for (int w = 0; w < kQuarters; ++w)
        tile_sum += row_sum_shared[(tile_warp0 + w) * kHeadTile + group + 8 * h];
      running_sum[h] = running_sum[h] * rescale[h] + tile_sum;
      running_max[h] = new_max[h];
    }
#pragma unroll
    for (int d = 0; d < kOutTiles; ++d) {
      out_acc[d][0] *= rescale[0];
      out_acc[d][1] *= rescale[0];
      out_acc[d][2] *= rescale[1];
      out_acc[d][3] *= rescale[1];
    }
    // O[this tile's heads, warp's columns] += P V, V = the first kv_lora columns of the K tile.
#pragma unroll
    for (int kk = 0; kk < kTileN / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, a_operand_address<kTileN>(p_tile, head_tile * 16, kk * 16, lane));
#pragma unroll
      for (int dd = 0; dd < kOutCols / 16; ++dd) {
        uint32_t v[4];
        ldmatrix_x4_trans(v, b_operand_trans_address<kDim>(k_tile, kk * 16,
                                                            quarter * kOutCols + dd * 16, lane));
        mma_16816(out_acc[2 * dd], a, v[0], v[1]);
        mma_16816(out_acc[2 * dd + 1], a, v[2], v[3]);
      }
    }
    __syncthreads();  // the K stage and P tile are rewritten next iteration
  }
  cp_async_wait<0>();

  // Epilogue: lane holds heads g, g + 8 of its tile at columns quarter*kOutCols + d*8 + 2t, +1.
  const float inverse[2] = {running_sum[0] > 0.f ? 1.f / running_sum[0] : 0.f,
                            running_sum[1] > 0.f ? 1.f / running_sum[1] : 0.f};
#pragma unroll
  for (int d = 0; d < kOutTiles; ++d) {
    const int col = quarter * kOutCols + d * 8 + 2 * pair;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t head = head0 + head_tile * 16 + group + 8 * h;
      const float x = out_acc[d][2 * h] * inverse[h], y = out_acc[d][2 * h + 1] * inverse[h];
      if (p.splits == 1) {
        *reinterpret_cast<__nv_bfloat162*>(p.out + (row * p.heads + head) * kKvLora + col) =
            __floats2bfloat162_rn(x, y);
      } else {
        *reinterpret_cast<float2*>(p.partial_out +
                                   ((split * p.rows + row) * p.heads + head) * kKvLora + col) =
            make_float2(x, y);
      }
    }
  }
  if (p.splits > 1 && quarter == 0 && pair == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
      p.partial_lse[(split * p.rows + row) * p.heads + head0 + head_tile * 16 + group + 8 * h] =
          running_sum[h] > 0.f ? running_max[h] + __log2f(running_sum[h]) : -INFINITY;
  }
}

// out[r, h, :] = sum_s 2^(lse_s - max) partial_s / sum_s 2^(lse_s - max), splits in order.
// One block per (row, head).
__global__ void mla_decode_merge_kernel(__nv_bfloat16* out, const float* partial_out,
                                        const float* partial_lse, int64_t rows, int64_t heads,
                                        int64_t kv_lora, int splits) {
  const int64_t row_head = blockIdx.x;  // row * heads + head
  const int64_t stride = rows * heads;
  float max_lse = -INFINITY;
  for (int s = 0; s < splits; ++s) max_lse = fmaxf(max_lse, partial_lse[s * stride + row_head]);
  float total = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float lse = partial_lse[s * stride + row_head];
    total += lse == -INFINITY ? 0.f : exp2f(lse - max_lse);
  }
  const float inverse = total > 0.f ? 1.f / total : 0.f;
  for (int64_t c = threadIdx.x; c < kv_lora; c += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float lse = partial_lse[s * stride + row_head];
      if (lse == -INFINITY) continue;
      acc += exp2f(lse - max_lse) * partial_out[(s * stride + row_head) * kv_lora + c];
    }
    out[row_head * kv_lora + c] = __float2bfloat16(acc * inverse);
  }
}

// 16-head tiles per block: 2 (32 heads, the cache tile read once for both) when heads allow.
int head_tiles_for(const MlaDecodeShape& shape) { return shape.heads % 32 == 0 ? 2 : 1; }

int shared_bytes_for(const MlaDecodeShape& shape) {
  const bool two = head_tiles_for(shape) == 2;
  switch (shape.entry_dim()) {
    case 192: return two ? shared_bytes<192, 2>() : shared_bytes<192, 1>();
    case 320: return two ? shared_bytes<320, 2>() : shared_bytes<320, 1>();
    case 576: return two ? shared_bytes<576, 2>() : shared_bytes<576, 1>();
    default: return 0;
  }
}

// The tensor-core kernel's shapes; anything else runs the plain kernel below.
bool tensor_core_shape(const MlaDecodeShape& shape) {
  return shape.heads >= 16 && shape.heads % 16 == 0 && shape.rope == 64 &&
         (shape.kv_lora == 128 || shape.kv_lora == 256 || shape.kv_lora == 512);
}

// Plain kernel for the other shapes (small test models, unusual dims): one warp per (row, head),
// four heads per block; lanes split the entry's elements, the dot product is a warp reduction,
// the softmax is online in fp32, each lane accumulates its own kv_lora columns. No split-KV.
constexpr int kPlainWarps = 4;
constexpr int kPlainMaxPerLane = 32;  // entry_dim <= 32 * 32 = 1024

__global__ void mla_decode_plain_kernel(__nv_bfloat16* out, const __nv_bfloat16* q,
                                        const __nv_bfloat16* cache, const int32_t* page_table,
                                        const int32_t* row_sequence, const int32_t* lengths,
                                        MlaDecodeShape shape, float scale) {
  const int lane = threadIdx.x % 32;
  const int64_t head = static_cast<int64_t>(blockIdx.y) * kPlainWarps + threadIdx.x / 32;
  const int64_t row = blockIdx.x;
  if (head >= shape.heads) return;
  const int64_t dim = shape.kv_lora + shape.rope;
  const __nv_bfloat16* q_row = q + (row * shape.heads + head) * dim;
  float q_lane[kPlainMaxPerLane];
  float acc[kPlainMaxPerLane];
#pragma unroll
  for (int i = 0; i < kPlainMaxPerLane; ++i) {
    const int64_t c = lane + 32 * i;
    q_lane[i] = c < dim ? __bfloat162float(q_row[c]) : 0.f;
    acc[i] = 0.f;
  }
  const int32_t* pages = page_table + static_cast<int64_t>(row_sequence[row]) * shape.max_pages;
  const int64_t length = lengths[row];
  float running_max = -INFINITY, sum = 0.f;
  for (int64_t j = 0; j < length; ++j) {
    const int64_t page = pages[j / shape.page_size];
    const __nv_bfloat16* entry =
        cache + ((page * shape.layers + shape.layer) * shape.page_size + j % shape.page_size) * dim;
    float partial = 0.f;
#pragma unroll
    for (int i = 0; i < kPlainMaxPerLane; ++i) {
      const int64_t c = lane + 32 * i;
      if (c < dim) partial += q_lane[i] * __bfloat162float(entry[c]);
    }
    for (int offset = 16; offset > 0; offset /= 2)
      partial += __shfl_xor_sync(0xffffffffu, partial, offset);
    const float score = partial * scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = running_max == -INFINITY ? 0.f : __expf(running_max - new_max);
    const float weight = __expf(score - new_max);
    sum = sum * correction + weight;
#pragma unroll
    for (int i = 0; i < kPlainMaxPerLane; ++i) {
      const int64_t c = lane + 32 * i;
      if (c < shape.kv_lora) acc[i] = acc[i] * correction + weight * __bfloat162float(entry[c]);
    }
    running_max = new_max;
  }
  const float inverse = sum > 0.f ? 1.f / sum : 0.f;
  __nv_bfloat16* out_row = out + (row * shape.heads + head) * shape.kv_lora;
#pragma unroll
  for (int i = 0; i < kPlainMaxPerLane; ++i) {
    const int64_t c = lane + 32 * i;
    if (c < shape.kv_lora) out_row[c] = __float2bfloat16(acc[i] * inverse);
  }
}

void require_supported(const MlaDecodeShape& shape) {
  FRUGAL_CUDA_REQUIRE(shape.rows >= 0, "mla_decode_attention: negative row count");
  FRUGAL_CUDA_REQUIRE(shape.heads >= 1 && shape.kv_lora >= 1 && shape.rope >= 0,
                      "mla_decode_attention: heads and kv_lora must be positive, rope >= 0");
  FRUGAL_CUDA_REQUIRE(tensor_core_shape(shape) || shape.entry_dim() <= 32 * kPlainMaxPerLane,
                      "mla_decode_attention: entry dims above 1024 need heads % 16 == 0 and "
                      "(kv_lora, rope) in (128|256|512, 64)");
  FRUGAL_CUDA_REQUIRE(shape.layers >= 1 && shape.layer >= 0 && shape.layer < shape.layers,
                      "mla_decode_attention: layer outside the pool's layers");
  FRUGAL_CUDA_REQUIRE(shape.page_size >= 1 && shape.max_pages >= 1,
                      "mla_decode_attention: page_size and max_pages must be positive");
  FRUGAL_CUDA_REQUIRE(shape.page_size * shape.max_pages <= 0x7fffffff,
                      "mla_decode_attention: page table capacity beyond 2^31 positions");
}

// KV splits per row: enough blocks to cover the SMs about twice, at least kMinTilesPerSplit
// tiles per split. Depends on the current device's SM count (same answer for the workspace size
// and the launch).
struct SplitPlan {
  int splits = 1;
  int64_t split_length = 0;
};

SplitPlan plan_splits(const MlaDecodeShape& shape, int64_t max_length) {
  int device = 0, sm_count = 0;
  FRUGAL_CUDA_CHECK(cudaGetDevice(&device));
  FRUGAL_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  const int64_t smem = shared_bytes_for(shape);
  const int64_t blocks_per_sm = std::max<int64_t>(1, (227 * 1024) / (smem + 1024));
  const int64_t target_blocks = 2 * sm_count * blocks_per_sm;
  const int64_t base_blocks =
      std::max<int64_t>(1, shape.rows * (shape.heads / (kHeadTile * head_tiles_for(shape))));
  const int64_t tiles = std::max<int64_t>(1, (max_length + kTileN - 1) / kTileN);
  int64_t splits = (target_blocks + base_blocks - 1) / base_blocks;
  splits = std::clamp<int64_t>(splits, 1, std::max<int64_t>(1, tiles / kMinTilesPerSplit));
  splits = std::min<int64_t>(splits, 1024);
  const int64_t tiles_per_split = (tiles + splits - 1) / splits;
  SplitPlan plan;
  plan.split_length = tiles_per_split * kTileN;
  plan.splits = static_cast<int>((tiles + tiles_per_split - 1) / tiles_per_split);
  return plan;
}

template <int kKvLora, int kRope, int kHeadTiles>
void launch(const Params& params, int64_t blocks, cudaStream_t stream) {
  constexpr int kDim = kKvLora + kRope;
  constexpr int smem = shared_bytes<kDim, kHeadTiles>();
  static_assert(smem <= 227 * 1024, "shared memory of one block");
  auto kernel = mla_decode_kernel<kKvLora, kRope, kHeadTiles>;
  FRUGAL_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<static_cast<unsigned>(blocks), 32 * kQuarters * kHeadTiles, smem, stream>>>(params);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template <int kKvLora, int kRope>
void launch_for_heads(const Params& params, int head_tiles, int64_t blocks, cudaStream_t stream) {
  if (head_tiles == 2) launch<kKvLora, kRope, 2>(params, blocks, stream);
  else launch<kKvLora, kRope, 1>(params, blocks, stream);
}

}  // namespace

size_t mla_decode_workspace_bytes(const MlaDecodeShape& shape, int64_t max_length) {
  require_supported(shape);
  if (!tensor_core_shape(shape) || shape.rows == 0) return 0;
  const SplitPlan plan = plan_splits(shape, max_length);
  if (plan.splits <= 1) return 0;
  const int64_t partials = plan.splits * shape.rows * shape.heads;
  return static_cast<size_t>(partials * (shape.kv_lora + 1)) * sizeof(float);
}

void mla_decode_attention(__nv_bfloat16* out, const __nv_bfloat16* q, const __nv_bfloat16* cache,
                          const int32_t* page_table, const int32_t* row_sequence,
                          const int32_t* lengths, const MlaDecodeShape& shape,
                          int64_t max_length, void* workspace, size_t workspace_bytes,
                          cudaStream_t stream) {
  require_supported(shape);
  if (shape.rows == 0) return;
  FRUGAL_CUDA_REQUIRE(max_length >= 1, "mla_decode_attention: max_length must be at least 1");
  FRUGAL_CUDA_REQUIRE(out != nullptr && q != nullptr && cache != nullptr &&
                          page_table != nullptr && row_sequence != nullptr && lengths != nullptr,
                      "mla_decode_attention: null pointer argument");
  FRUGAL_CUDA_REQUIRE(reinterpret_cast<uintptr_t>(q) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(cache) % 16 == 0,
                      "mla_decode_attention: q and cache must be 16-byte aligned");
  FRUGAL_CUDA_REQUIRE(reinterpret_cast<uintptr_t>(out) % 4 == 0,
                      "mla_decode_attention: out must be 4-byte aligned");
  if (!tensor_core_shape(shape)) {
    const dim3 grid(static_cast<unsigned>(shape.rows),
                    static_cast<unsigned>((shape.heads + kPlainWarps - 1) / kPlainWarps));
    FRUGAL_CUDA_REQUIRE(shape.rows <= 0x7fffffff && grid.y <= 65535,
                        "mla_decode_attention: too many rows or heads for the plain kernel");
    mla_decode_plain_kernel<<<grid, 32 * kPlainWarps, 0, stream>>>(
        out, q, cache, page_table, row_sequence, lengths, shape, shape.softmax_scale);
    FRUGAL_CUDA_CHECK_LAUNCH();
    return;
  }
  const SplitPlan plan = plan_splits(shape, max_length);
  const size_t needed = mla_decode_workspace_bytes(shape, max_length);
  FRUGAL_CUDA_REQUIRE(workspace_bytes >= needed,
                      "mla_decode_attention: workspace smaller than mla_decode_workspace_bytes");
  FRUGAL_CUDA_REQUIRE(needed == 0 || (workspace != nullptr &&
                                      reinterpret_cast<uintptr_t>(workspace) % 16 == 0),
                      "mla_decode_attention: workspace missing or not 16-byte aligned");

  Params params{};
  params.out = out;
  params.q = q;
  params.cache = cache;
  params.page_table = page_table;
  params.row_sequence = row_sequence;
  params.lengths = lengths;
  params.rows = shape.rows;
  params.heads = shape.heads;
  params.layers = shape.layers;
  params.layer = shape.layer;
  params.page_size = shape.page_size;
  params.max_pages = shape.max_pages;
  params.split_length = plan.split_length;
  params.splits = plan.splits;
  const int head_tiles = head_tiles_for(shape);
  params.head_groups = static_cast<int>(shape.heads / (kHeadTile * head_tiles));
  params.scale_log2 = shape.softmax_scale * kLog2e;
  if (plan.splits > 1) {
    params.partial_out = static_cast<float*>(workspace);
    params.partial_lse = params.partial_out + plan.splits * shape.rows * shape.heads * shape.kv_lora;
  }
  const int64_t blocks = shape.rows * params.head_groups * plan.splits;
  FRUGAL_CUDA_REQUIRE(blocks <= 0x7fffffff, "mla_decode_attention: too many thread blocks");
  switch (shape.kv_lora) {
    case 128: launch_for_heads<128, 64>(params, head_tiles, blocks, stream); break;
    case 256: launch_for_heads<256, 64>(params, head_tiles, blocks, stream); break;
    default: launch_for_heads<512, 64>(params, head_tiles, blocks, stream); break;
  }
  if (plan.splits > 1) {
    mla_decode_merge_kernel<<<static_cast<unsigned>(shape.rows * shape.heads), 128, 0, stream>>>(
        out, params.partial_out, params.partial_lse, shape.rows, shape.heads, shape.kv_lora,
        plan.splits);
    FRUGAL_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace frugal::cuda
