// Grouped FP8 GEMMs of an MoE layer on Hopper tensor cores (see grouped_gemm_fp8_sm90.h for the
// contract and the operand / scale layouts). One persistent kernel per call, templated on:
//   nt     y[rows,N] = A[rows,K] · B_g[N,K]^T      tile: 128 rows of A x 128 rows of B_g (N)
//   wgrad  dW_g[N,K] (+)= dyT_g · xT_g^T           tile: 128 rows of dyT_g (N) x 128 of xT_g (K)
// Both operands are K-major (the reduction contiguous), as FP8 wgmma needs. CTA tile 128 x 128,
// reduction step 128 (one 128-byte swizzle row of E4M3 = one scale block), a 6-stage ring of
// 16 KB + 16 KB in shared memory. 384 threads: warpgroup 0 produces, warpgroups 1 and 2 consume,
// each owning 64 rows of the tile (4 wgmma m64n128k32 per step).
//   nt loads with TMA (128-byte swizzle; one thread): A boxes at rows offsets[g] + 128 i, B_g
//     boxes at rows g*N + n0, and with one bulk copy the step's 128 A scales (contiguous in the
//     [K/128][rows_g] layout) into the stage, all completing on the stage's full barrier. The
//     consumers read B's one scale per step with __ldg one step ahead (a small tensor, L2-hot).
//   wgrad: group g's operands have a row pitch of rows_g, which no single tensor map describes,
//     so all 128 producer threads copy the tiles with 16-byte cp.async into the 128-byte-swizzled
//     layout (chunk c of tile row r at r*128 + 16*(c ^ r%8), what TMA's SWIZZLE_128B writes), plus
//     the step's 128 + 128 scales. A stage is published kCopyLag steps later: cp.async.wait_group,
//     fence.proxy.async (generic-proxy writes made visible to wgmma) and an mbarrier arrival by
//     each of the 128 producer threads.
// The consumers keep their per-step instructions few (they are issue-latency bound: one warp of
// each warpgroup per scheduler): the stage index and phase advance by counters, and a stage's
// wgmma descriptors are the stage-0 ones plus the stage's offset in 16-byte units.
// Promotion (spec §4): each step's four wgmma accumulate into a temporary fragment (the first one
// with scale-d 0, which zeroes it); after wgmma.wait the consumer adds tmp * scale into the FP32
// accumulators: nt scale = a_scale(row, step) * b_scale(n block, step); wgrad scale =
// dyT_scale(row block step, m) * xT_scale(step, n) per element (outer product).
// Scheduling from the device offsets only: each CTA loads them into shared memory, clamps them to
// [0, floor(max_rows / 128) * 128] and (nt) forms the prefix of row tiles per group. Tiles
// t = blockIdx.x, + gridDim.x, ...: nt t -> (row-tile slot, N tile), the slot mapped to (group,
// tile) by a binary search; wgrad t -> (group, N tile, K tile), reducing over the group's rows.
// Offsets are multiples of 128, so a tile never straddles two groups; every output element is
// written by one CTA with a fixed order: deterministic.
#include "kernels/gemm/grouped_gemm_fp8_sm90.h"

#include <cuda.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/cuda_check.h"
#include "kernels/gemm/grouped_gemm_fp8_sm90.cuh"
#include "kernels/gemm/grouped_gemm_sm90.cuh"
#include "kernels/gemm/sm90_host.h"

namespace frugal::cuda {
namespace {

enum class Fp8Op { NT, Wgrad };

constexpr int kMaxGroups = 256;
constexpr int kTile = 128;                    // tile rows, tile columns and reduction step
constexpr int kTileBytes = kTile * kTile;     // one 128 x 128 E4M3 operand tile: 16 KB
constexpr int kStages = 6;
constexpr int kStageBytes = 2 * kTileBytes;   // A tile, then B tile
constexpr int kRingBytes = kStages * kStageBytes;
constexpr int kStageScales = 2 * kTile;       // wgrad: 128 dyT scales (rows m), 128 xT scales (n);
                                              // nt: the 128 A scales of the tile's rows
constexpr int kThreads = 384;
constexpr int kProducerThreads = 128;
constexpr int kConsumerWarps = 8;
constexpr int kProducerRegs = 88;            // wgrad address arithmetic spills below
constexpr int kConsumerRegs = 208;            // 128 * 88 + 256 * 208 = 64512 = 384 * 168
constexpr int kCopyLag = 2;                   // wgrad: steps between a copy and its publication
static_assert(kCopyLag < kStages, "the producer must publish a stage before it needs it again");
constexpr int kSharedBytes = 1024 + kRingBytes + kStages * kStageScales * 4 + 2 * kStages * 8 +
                             sm90::kScheduleBytes<kMaxGroups>;

struct Params {
  const int64_t* offsets;
  int groups;
  int rows_limit;  // floor(max_rows / 128) * 128: offsets are clamped to it
  int n;
  int k;
  const uint8_t* a;  // wgrad: dyT (cp.async source); nt: unused (TMA)
  const float* a_scales;
  const uint8_t* b;  // wgrad: xT; nt: unused
  const float* b_scales;
  void* out;
  bool accumulate;
};

using sm90::Schedule;  // tile_prefix: the nt row tiles

struct Tile {
  int group;
  int row0;   // nt: first row of the A box; wgrad: the group's first row
  int rows;   // the group's rows
  int m0;     // wgrad: first dW row (N index)
  int n0;     // first output column (nt: N index; wgrad: K index)
  int steps;  // reduction steps of 128
};

template <Fp8Op kOp>
__device__ __forceinline__ bool decode_tile(int t, const Params& p, const Schedule& s,
                                            Tile& tile) {
  if constexpr (kOp == Fp8Op::Wgrad) {
    const int k_tiles = p.k / kTile;
    const int per_group = (p.n / kTile) * k_tiles;
    const int g = t / per_group;
    if (g >= p.groups) return false;
    const int rem = t - g * per_group;
    tile.group = g;
    tile.m0 = (rem / k_tiles) * kTile;
    tile.n0 = (rem % k_tiles) * kTile;
    tile.row0 = s.row_begin[g];
    tile.rows = s.row_end[g] - s.row_begin[g];
    tile.steps = tile.rows / kTile;
  } else {
    const int column_tiles = p.n / kTile;
    const int slot = t / column_tiles;
    if (slot >= s.tile_prefix[p.groups]) return false;
    const int lo = sm90::group_of_slot(s.tile_prefix, p.groups, slot);
    tile.group = lo;
    tile.m0 = 0;
    tile.n0 = (t - slot * column_tiles) * kTile;
    tile.row0 = s.row_begin[lo] + (slot - s.tile_prefix[lo]) * kTile;
    tile.rows = s.row_end[lo] - s.row_begin[lo];
    tile.steps = p.k / kTile;
  }
  return true;
}

// wgrad producer: all 128 threads copy step `step` of `tile` into stage `stage` (tiles and scales)
// and commit one cp.async group.
__device__ __forceinline__ void copy_wgrad_stage(const Params& p, const Tile& tile, int step,
                                                 uint32_t a_dst, uint32_t b_dst,
                                                 uint32_t scales_dst, int thread) {
  // dyT_g [N, rows_g] at dyT + row0 * N: rows m0.. ; xT_g [K, rows_g] at xT + row0 * K: rows n0..
  const int64_t pitch = tile.rows;
  const uint8_t* a_src =
      p.a + static_cast<int64_t>(tile.row0) * p.n + tile.m0 * pitch + step * kTile;
  const uint8_t* b_src =
      p.b + static_cast<int64_t>(tile.row0) * p.k + tile.n0 * pitch + step * kTile;
#pragma unroll
  for (int j = 0; j < kTile * 8 / kProducerThreads; ++j) {
    const int chunk = thread + j * kProducerThreads;  // 8 chunks of 16 bytes per tile row
    const int r = chunk >> 3, c = chunk & 7;
    const uint32_t offset = r * 128 + ((c ^ (r & 7)) << 4);
    sm90::cp_async_16(a_dst + offset, a_src + r * pitch + c * 16);
    sm90::cp_async_16(b_dst + offset, b_src + r * pitch + c * 16);
  }
  // Scales of row block (row0 / 128 + step): dyT [..][N] from m0, xT [..][K] from n0.
  if (thread < 64) {
    const int64_t block = tile.row0 / kTile + step;
    const float* src = thread < 32 ? p.a_scales + block * p.n + tile.m0 + thread * 4
                                   : p.b_scales + block * p.k + tile.n0 + (thread - 32) * 4;
    sm90::cp_async_16(scales_dst + thread * 16, src);
  }
  sm90::cp_async_commit();
}

// The epilogue of `tile`: this warp's 16 rows (from row_in_tile - lane / 4) of the accumulators,
// bf16 rows of y (nt) or fp32 rows of dW_g (wgrad: added to it when p.accumulate; an empty group
// then leaves dW_g as it was, else it is zeroed).
template <Fp8Op kOp>
__device__ __forceinline__ void store_tile(const float* acc, const Params& p, const Schedule& s,
                                           const Tile& tile, int row_in_tile, int lane) {
  if constexpr (kOp == Fp8Op::Wgrad) {
    if (tile.steps == 0 && p.accumulate) return;
    float* dw = static_cast<float*>(p.out) + static_cast<int64_t>(tile.group) * p.n * p.k;
    sm90::store_f32_rows<kTile>(acc, dw, p.k, tile.m0 + row_in_tile - lane / 4, tile.n0,
                                p.accumulate, lane);
  } else {
    sm90::store_bf16_rows<kTile>(acc, static_cast<__nv_bfloat16*>(p.out), p.n,
                                 tile.row0 + row_in_tile - lane / 4, s.row_end[tile.group],
                                 tile.n0, lane);
  }
}

// nt: B's scales of `tile`'s block row n0/128, one per reduction step.
__device__ __forceinline__ const float* b_scales_of(const Params& p, const Tile& tile) {
  return p.b_scales +
         (static_cast<int64_t>(tile.group) * (p.n / kTile) + tile.n0 / kTile) * (p.k / kTile);
}

// The consumer warpgroups' loop over tiles (see the kernel). A tile's epilogue is deferred into
// the first step of the next tile: it runs while that step's wgmma do (they write tmp, not acc),
// together with the decoding of the tile after, so the tensor cores do not idle through it.
template <Fp8Op kOp>
__device__ __forceinline__ void consume(const Params& p, const Schedule& s, uint8_t* ring,
                                        const float* stage_scales, uint64_t* full, uint64_t* empty,
                                        int first_tile, int tile_stride) {
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int w = threadIdx.x / 128 - 1;  // this warpgroup's 64 rows of the tile: [64 w, 64 w + 64)
  const int row_in_tile = w * 64 + (warp % 4) * 16 + lane / 4;  // and + 8
  const int quad_column = (lane % 4) * 2;
  float acc[64];
  float tmp[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = tmp[i] = 0.0f;
  // Descriptors of stage 0 (k32 slice 0): stage s adds s * kStageBytes / 16, slice kk adds 2 kk
  // (shared addresses stay below 256 KB, so the 14-bit address field never carries).
  const uint32_t ring_address = sm90::smem_address(ring);
  const uint64_t desc_a0 = sm90::make_descriptor(ring_address + w * 64 * 128, 16, 1024);
  const uint64_t desc_b0 = sm90::make_descriptor(ring_address + kTileBytes, 16, 1024);
  int stage = 0;        // ring stage of the next reduction step
  uint32_t phase = 0;   // and the parity of its full barrier
  Tile tile, next, stored;
  bool store_pending = false;  // acc holds `stored`, whose epilogue has not run yet
  int t = first_tile;
  bool have = decode_tile<kOp>(t, p, s, tile);
  // nt: B's scale of the current tile's next step (loaded one step ahead).
  float next_b = 0.0f;
  if constexpr (kOp == Fp8Op::NT) {
    if (have) next_b = __ldg(b_scales_of(p, tile));
  }
  while (have) {
    if (tile.steps == 0) {  // wgrad: an empty group, no reduction step
      if (store_pending) store_tile<kOp>(acc, p, s, stored, row_in_tile, lane);
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
      store_tile<kOp>(acc, p, s, tile, row_in_tile, lane);
      store_pending = false;
      t += tile_stride;
      have = decode_tile<kOp>(t, p, s, tile);
      if constexpr (kOp == Fp8Op::NT) {
        if (have) next_b = __ldg(b_scales_of(p, tile));
      }
      continue;
    }
    bool have_next = false;
    float next_tile_b = 0.0f;
    for (int step = 0; step < tile.steps; ++step) {
      float b_scale = 0.0f;
      if constexpr (kOp == Fp8Op::NT) {
        b_scale = next_b;
        if (step + 1 < tile.steps) next_b = __ldg(b_scales_of(p, tile) + step + 1);
      }
      sm90::mbarrier_wait(sm90::smem_address(&full[stage]), phase);
      // K-major, 128-byte rows: k32 slice kk starts 32 bytes in; this warpgroup's 64 A rows
      // start 8 KB * w in (in desc_a0).
      const uint64_t stage_units = static_cast<uint64_t>(stage * (kStageBytes >> 4));
      sm90::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kTile / 32; ++kk) {
        sm90::wgmma_m64n128k32_e4m3(tmp, desc_a0 + stage_units + 2 * kk,
                                    desc_b0 + stage_units + 2 * kk, kk > 0 ? 1 : 0);
      }
      sm90::wgmma_commit();
      if (step == 0) {  // while the wgmma run: the previous tile's epilogue, the next tile
        if (store_pending) store_tile<kOp>(acc, p, s, stored, row_in_tile, lane);
        store_pending = false;
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
        have_next = decode_tile<kOp>(t + tile_stride, p, s, next);
        if constexpr (kOp == Fp8Op::NT) {
          if (have_next) next_tile_b = __ldg(b_scales_of(p, next));
        }
      }
      const float* scales = stage_scales + stage * kStageScales;
      float scale0 = 0.0f, scale1 = 0.0f;
      if constexpr (kOp == Fp8Op::NT) {  // read while the wgmma run
        scale0 = scales[row_in_tile] * b_scale;
        scale1 = scales[row_in_tile + 8] * b_scale;
      }
      sm90::wgmma_wait<0>();
      // Promotion: acc += tmp * scale.
      if constexpr (kOp == Fp8Op::NT) {
#pragma unroll
        for (int q = 0; q < 16; ++q) {
          acc[4 * q + 0] = fmaf(tmp[4 * q + 0], scale0, acc[4 * q + 0]);
          acc[4 * q + 1] = fmaf(tmp[4 * q + 1], scale0, acc[4 * q + 1]);
          acc[4 * q + 2] = fmaf(tmp[4 * q + 2], scale1, acc[4 * q + 2]);
          acc[4 * q + 3] = fmaf(tmp[4 * q + 3], scale1, acc[4 * q + 3]);
        }
      } else {
        const float row0_scale = scales[row_in_tile];
        const float row1_scale = scales[row_in_tile + 8];
#pragma unroll
        for (int q = 0; q < 16; ++q) {
          const float2 column_scale =
              *reinterpret_cast<const float2*>(scales + kTile + 8 * q + quad_column);
          acc[4 * q + 0] = fmaf(tmp[4 * q + 0], row0_scale * column_scale.x, acc[4 * q + 0]);
          acc[4 * q + 1] = fmaf(tmp[4 * q + 1], row0_scale * column_scale.y, acc[4 * q + 1]);
          acc[4 * q + 2] = fmaf(tmp[4 * q + 2], row1_scale * column_scale.x, acc[4 * q + 2]);
          acc[4 * q + 3] = fmaf(tmp[4 * q + 3], row1_scale * column_scale.y, acc[4 * q + 3]);
        }
      }
      // The stage (tiles and scales) is no longer read by this warp.
      __syncwarp();
      if (lane == 0) sm90::mbarrier_arrive(sm90::smem_address(&empty[stage]));
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    stored = tile;
    store_pending = true;
    t += tile_stride;
    tile = next;
    have = have_next;
    next_b = next_tile_b;
  }
  if (store_pending) store_tile<kOp>(acc, p, s, stored, row_in_tile, lane);
}

template <Fp8Op kOp>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_fp8_kernel(const __grid_constant__ CUtensorMap map_a,
                            const __grid_constant__ CUtensorMap map_b, const Params p) {
  extern __shared__ uint8_t shared_raw[];
  uint8_t* ring = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~static_cast<uintptr_t>(1023));
  float* stage_scales = reinterpret_cast<float*>(ring + kRingBytes);  // [kStages][256] (wgrad)
  // Full: nt the TMA thread's arrive.expect_tx, wgrad every producer thread after its copies.
  // Group rows clamped to [0, rows_limit] and rounded down to whole tiles (offsets that break the
  // contract, not multiples of 128, give wrong results but never misaligned or out-of-range
  // accesses), and (nt) the row-tile prefix.
  Schedule s;
  const sm90::RingBarriers bars = sm90::setup_ring<kMaxGroups>(
      reinterpret_cast<uint8_t*>(stage_scales + kStages * kStageScales), kStages,
      kOp == Fp8Op::NT ? 1 : kProducerThreads, kConsumerWarps, p.offsets, p.groups, p.rows_limit,
      kTile, kTile, s);
  uint64_t* full = bars.full;
  uint64_t* empty = bars.empty;

  const int first_tile = blockIdx.x;
  const int tile_stride = gridDim.x;
  if (threadIdx.x < kProducerThreads) {
    sm90::setmaxnreg_dec<kProducerRegs>();
    Tile tile;
    if constexpr (kOp == Fp8Op::NT) {
      // ---- One thread issues the TMA loads of A and B_g, one stage per reduction step.
      if (threadIdx.x == 0) {
        sm90::prefetch_tensor_map(&map_a);
        sm90::prefetch_tensor_map(&map_b);
        int stage = 0;
        uint32_t phase = 0;
        for (int t = first_tile; decode_tile<kOp>(t, p, s, tile); t += tile_stride) {
          // A's scales: [K/128][rows_g] from the group's first row; this tile's 128 rows.
          const int group_begin = s.row_begin[tile.group];
          const float* a_scales = p.a_scales +
                                  static_cast<int64_t>(group_begin) * (p.k / kTile) +
                                  (tile.row0 - group_begin);
          for (int step = 0; step < tile.steps; ++step) {
            sm90::mbarrier_wait(sm90::smem_address(&empty[stage]), phase ^ 1);
            const uint32_t bar = sm90::smem_address(&full[stage]);
            sm90::mbarrier_arrive_expect_tx(bar, kStageBytes + kTile * 4);
            const uint32_t a_dst = sm90::smem_address(ring + stage * kStageBytes);
            sm90::tma_load_2d(a_dst, &map_a, bar, step * kTile, tile.row0);
            sm90::tma_load_2d(a_dst + kTileBytes, &map_b, bar, step * kTile,
                              tile.group * p.n + tile.n0);
            sm90::bulk_copy_to_shared(sm90::smem_address(stage_scales + stage * kStageScales),
                                      a_scales + static_cast<int64_t>(step) * tile.rows,
                                      kTile * 4, bar);
            if (++stage == kStages) {
              stage = 0;
              phase ^= 1;
            }
          }
        }
      }
    } else {
      // ---- All 128 threads copy with cp.async; stage `position` is published after the copies
      // of position + kCopyLag are issued (or at the end).
      const int thread = threadIdx.x;
      int position = 0;
      for (int t = first_tile; decode_tile<kOp>(t, p, s, tile); t += tile_stride) {
        for (int step = 0; step < tile.steps; ++step, ++position) {
          const int stage = position % kStages;
          const uint32_t phase = (position / kStages) & 1;
          sm90::mbarrier_wait(sm90::smem_address(&empty[stage]), phase ^ 1);
          const uint32_t a_dst = sm90::smem_address(ring + stage * kStageBytes);
          copy_wgrad_stage(p, tile, step, a_dst, a_dst + kTileBytes,
                           sm90::smem_address(stage_scales + stage * kStageScales), thread);
          if (position >= kCopyLag) {
            sm90::cp_async_wait<kCopyLag>();  // the copies of position - kCopyLag have landed
            sm90::fence_proxy_async_shared();
            sm90::mbarrier_arrive(sm90::smem_address(&full[(position - kCopyLag) % kStages]));
          }
        }
      }
      sm90::cp_async_wait<0>();
      sm90::fence_proxy_async_shared();
      for (int q = max(0, position - kCopyLag); q < position; ++q)
        sm90::mbarrier_arrive(sm90::smem_address(&full[q % kStages]));
    }
  } else {
    consume<kOp>(p, s, ring, stage_scales, full, empty, first_tile, tile_stride);
  }
}

// ---- Host side

// Row-major E4M3 matrix [outer, inner] read in 128 x 128 boxes with the 128-byte swizzle.
CUtensorMap make_tensor_map(const void* base, int64_t inner, int64_t outer) {
  return sm90_host::make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, base, inner, outer, kTile,
                                    kTile, "grouped_gemm_fp8_sm90");
}

// A persistent grid of one CTA per SM, or one per tile when there are fewer tiles.
template <Fp8Op kOp>
void launch(const CUtensorMap& map_a, const CUtensorMap& map_b, const Params& p, int64_t tiles,
            cudaStream_t stream) {
  auto* kernel = grouped_gemm_fp8_kernel<kOp>;
  const int device = sm90_host::current_device("grouped_gemm_fp8_sm90");
  static sm90_host::OncePerDevice shared_bytes_raised;
  shared_bytes_raised(device, [&](int) {
    FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           kSharedBytes));
  });
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>(sm90_host::sm_count(device), tiles));
  kernel<<<static_cast<unsigned>(blocks), kThreads, kSharedBytes, stream>>>(map_a, map_b, p);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void check_arguments(int64_t groups, const int64_t* offsets, int64_t max_rows, int64_t n,
                     int64_t k, const void* a, const float* a_scales, const void* b,
                     const float* b_scales, const void* out) {
  FRUGAL_CUDA_REQUIRE(groups >= 0 && groups <= kMaxGroups,
                      "grouped_gemm_fp8_sm90: groups must be in [0, 256]");
  FRUGAL_CUDA_REQUIRE(offsets != nullptr, "grouped_gemm_fp8_sm90: device_offsets is null");
  FRUGAL_CUDA_REQUIRE(max_rows >= 0 && max_rows < (int64_t{1} << 31),
                      "grouped_gemm_fp8_sm90: max_rows must be in [0, 2^31)");
  FRUGAL_CUDA_REQUIRE(n > 0 && k > 0 && n % 128 == 0 && k % 128 == 0,
                      "grouped_gemm_fp8_sm90: n and k must be positive multiples of 128");
  FRUGAL_CUDA_REQUIRE(n < (int64_t{1} << 20) && k < (int64_t{1} << 20),
                      "grouped_gemm_fp8_sm90: n and k must be below 2^20");
  FRUGAL_CUDA_REQUIRE(groups * n < (int64_t{1} << 31) && max_rows * (k / 128) < (int64_t{1} << 31),
                      "grouped_gemm_fp8_sm90: groups * n or the scale count too large");
  FRUGAL_CUDA_REQUIRE(a != nullptr && b != nullptr && a_scales != nullptr && b_scales != nullptr &&
                          out != nullptr,
                      "grouped_gemm_fp8_sm90: an operand, scale or output pointer is null");
  using sm90_host::aligned16;
  FRUGAL_CUDA_REQUIRE(aligned16(a) && aligned16(b) && aligned16(a_scales) &&
                          aligned16(b_scales) && aligned16(out),
                      "grouped_gemm_fp8_sm90: operands, scales and output must be 16-byte aligned");
}

Params make_params(int64_t groups, const int64_t* offsets, int64_t max_rows, int64_t n,
                   int64_t k, const uint8_t* a, const float* a_scales, const uint8_t* b,
                   const float* b_scales, void* out, bool accumulate) {
  return Params{offsets,  static_cast<int>(groups), static_cast<int>(max_rows / kTile * kTile),
                static_cast<int>(n), static_cast<int>(k), a, a_scales, b, b_scales, out,
                accumulate};
}

}  // namespace

bool grouped_gemm_fp8_sm90_supported(int64_t n, int64_t k) {
  return sm90_host::current_device_is_sm90() && n > 0 && k > 0 && n % 128 == 0 && k % 128 == 0 &&
         n < (int64_t{1} << 20) && k < (int64_t{1} << 20);
}

bool grouped_gemm_fp8_sm90_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("FRUGAL_GROUPED_GEMM_FP8");
    return !(value != nullptr && std::strcmp(value, "cublas") == 0);
  }();
  return enabled;
}

void grouped_gemm_fp8_sm90_nt(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                              int64_t n, int64_t k, const uint8_t* a, const float* a_scales,
                              const uint8_t* b, const float* b_scales, __nv_bfloat16* y,
                              cudaStream_t stream) {
  check_arguments(groups, device_offsets, max_rows, n, k, a, a_scales, b, b_scales, y);
  const int64_t row_tiles = max_rows / kTile;  // offsets[groups] <= max_rows, a multiple of 128
  if (groups == 0 || row_tiles == 0) return;
  const Params p =
      make_params(groups, device_offsets, max_rows, n, k, a, a_scales, b, b_scales, y, false);
  const CUtensorMap map_a = make_tensor_map(a, k, max_rows);
  const CUtensorMap map_b = make_tensor_map(b, k, groups * n);
  launch<Fp8Op::NT>(map_a, map_b, p, row_tiles * (n / kTile), stream);
}

void grouped_gemm_fp8_sm90_wgrad(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                                 int64_t n, int64_t k, const uint8_t* dyT,
                                 const float* dyT_scales, const uint8_t* xT,
                                 const float* xT_scales, float* dw, bool accumulate,
                                 cudaStream_t stream) {
  check_arguments(groups, device_offsets, max_rows, n, k, dyT, dyT_scales, xT, xT_scales, dw);
  if (groups == 0) return;
  if (max_rows < kTile) {  // every group is empty
    if (!accumulate)
      FRUGAL_CUDA_CHECK(cudaMemsetAsync(dw, 0, sizeof(float) * groups * n * k, stream));
    return;
  }
  const Params p = make_params(groups, device_offsets, max_rows, n, k, dyT, dyT_scales, xT,
                               xT_scales, dw, accumulate);
  CUtensorMap unused;  // wgrad copies with cp.async
  std::memset(&unused, 0, sizeof unused);
  launch<Fp8Op::Wgrad>(unused, unused, p, groups * (n / kTile) * (k / kTile), stream);
}

}  // namespace frugal::cuda
