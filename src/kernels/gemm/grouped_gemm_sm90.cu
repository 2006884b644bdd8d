// Grouped BF16 GEMMs of an MoE layer on Hopper tensor cores (see grouped_gemm_sm90.h for the
// contract). One persistent kernel per call, templated on the operation:
//   nt (Fprop)  y[rows,N]  = x[rows,K] · W_g^T     A = x tile (K-major), B = W_g rows (K-major)
//   nn (Dgrad)  dx[rows,K] = dy[rows,N] · W_g      A = dy tile (K-major), B = W_g (N-major: MN)
//   tn (Wgrad)  dW_g[N,K] (+)= dy_g^T · x_g        A = dy_g^T (MN-major), B = x_g (MN-major)
// Default (cooperative) schedule: CTA tile 128 x kBN (kBN = 256 when the output width allows, else
// 128), K-step 64, a 4 (kBN 256) or 6 (kBN 128) stage shared-memory ring filled by TMA (128-byte
// swizzle, one box row = 64 bf16 = 128 bytes). 384 threads: warpgroup 0 is the producer (one
// thread issues TMA, registers given back with setmaxnreg), warpgroups 1 and 2 are consumers, each
// owning 64 rows of the tile (wgmma m64nNk16, fp32 accumulators in registers) and keeping one
// wgmma batch in flight. bf16 outputs are stored 16 bytes per lane after a transpose within each
// lane quad (the direct 4-byte stores cost ~10-25% at these shapes); fp32 dW with float2
// read-add-writes. Other schedules, selectable for measurements only (FRUGAL_GROUPED_GEMM_SCHEDULE,
// see schedule()): multicast (clusters of two sharing B), pingpong, narrow; all pass the same test.
//
// Scheduling reads the device offsets only: each CTA loads them into shared memory, clamps them
// to [0, max_rows], and (nt, nn) forms the prefix of per-group row tiles ceil(rows_g / 128).
// Persistent CTAs walk tile indices t = blockIdx.x, + gridDim.x, ...:
//   nt, nn: t -> (row-tile slot, output column tile); the slot maps to (group, tile in group) by a
//           binary search of the prefix. A tile starts at offsets[g] + 128 i; rows of the box past
//           the group's end belong to the next group (or are TMA's zeros past max_rows): they are
//           computed but never stored.
//   tn:     t -> (group, N tile of 128, K tile of kBN); the reduction runs over the group's rows
//           from offsets[g] in steps of 64; in the last, partial step the consumers zero the box
//           lines (token rows) past the group's end in both operands before the wgmma reads them.
// Deterministic: every output element is written by one CTA with a fixed reduction order.
// Per-kernel launch facts (dynamic shared memory attribute, resident clusters) are cached for the
// first device a kernel runs on.
#include "kernels/gemm/grouped_gemm_sm90.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/cuda_check.h"
#include "kernels/gemm/grouped_gemm_sm90.cuh"

namespace frugal::cuda {
namespace {

enum class Op { NT, NN, TN };

constexpr int kMaxGroups = 256;
constexpr int kBM = 128;        // tile rows (two consumer warpgroups of 64)
constexpr int kBK = 64;         // reduction step: one 128-byte swizzle row of bf16
constexpr int kBoxBytes = 64 * 64 * 2;  // a 64 x 64 bf16 box: 8 KB
constexpr int kThreads = 384;
constexpr int kProducerRegs = 40;
constexpr int kConsumerRegs = 232;

struct Params {
  const int64_t* offsets;
  int groups;
  int max_rows;
  int n;  // the weight's [N, K]
  int k;
  void* out;
  bool accumulate;
  bool quad_epilogue;  // bf16 outputs: 16-byte stores after a transpose within each lane quad
};

template <int kBN>
struct Config {
  static constexpr int kStages = kBN == 256 ? 4 : 6;
  static constexpr int kABytes = kBM * kBK * 2;
  static constexpr int kBBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kTileBytes = kStages * kStageBytes;
  static constexpr int kSharedBytes =
      1024 + kTileBytes + 2 * kStages * 8 + (kMaxGroups + 1 + 2 * kMaxGroups) * 4;
};

// Shared scheduling state of one CTA (after the tile ring and the barriers).
struct Schedule {
  int* tile_prefix;  // [groups + 1] (nt, nn)
  int* row_begin;    // [groups]
  int* row_end;      // [groups]
};

struct Tile {
  int group;
  int row0;     // first row of the box (nt, nn) / of the group (tn)
  int row_end;  // the group's end row (exclusive)
  int m0;       // tn: first dW row (N index)
  int n0;       // first output column
  int steps;    // reduction steps of 64
};

// Output width of the GEMM (columns of y, dx or dW).
template <Op kOp>
__device__ __forceinline__ int gemm_columns(const Params& p) {
  return kOp == Op::NT ? p.n : p.k;
}

// Tile index t -> tile. With kPair == 2 (clusters of two CTAs sharing B), t names a pair of tiles
// with the same group and B columns, and `rank` picks this CTA's member: row tiles 2 i and 2 i + 1
// of the group (nt, nn; the second may lie past the group's end: computed, never stored) or dW
// row tiles 2 i and 2 i + 1 (tn).
template <Op kOp, int kBN, int kPair>
__device__ __forceinline__ bool decode_tile(int t, const Params& p, const Schedule& s, int rank,
                                            Tile& tile) {
  const int column_tiles = gemm_columns<kOp>(p) / kBN;
  if constexpr (kOp == Op::TN) {
    const int row_tiles = p.n / kBM / kPair;
    const int per_group = row_tiles * column_tiles;
    const int g = t / per_group;
    if (g >= p.groups) return false;
    const int rem = t - g * per_group;
    tile.group = g;
    tile.m0 = ((rem / column_tiles) * kPair + rank) * kBM;
    tile.n0 = (rem % column_tiles) * kBN;
    tile.row0 = s.row_begin[g];
    tile.row_end = s.row_end[g];
    tile.steps = (tile.row_end - tile.row0 + kBK - 1) / kBK;
  } else {
    const int slot = t / column_tiles;
    if (slot >= s.tile_prefix[p.groups]) return false;
    // Largest g with tile_prefix[g] <= slot (skips empty groups, whose prefix repeats).
    int lo = 0, hi = p.groups - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (s.tile_prefix[mid] <= slot) lo = mid; else hi = mid - 1;
    }
    tile.group = lo;
    tile.m0 = 0;
    tile.n0 = (t - slot * column_tiles) * kBN;
    tile.row0 = s.row_begin[lo] + ((slot - s.tile_prefix[lo]) * kPair + rank) * kBM;
    tile.row_end = s.row_end[lo];
    tile.steps = (kOp == Op::NT ? p.k : p.n) / kBK;
  }
  return true;
}

// A box load of B: plain, or (kPair == 2) multicast to both CTAs of the cluster.
template <int kPair>
__device__ __forceinline__ void load_b(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                       int inner, int outer) {
  if constexpr (kPair == 2)
    sm90::tma_load_2d_multicast(dst, map, bar, inner, outer, 0x3);
  else
    sm90::tma_load_2d(dst, map, bar, inner, outer);
}

// One stage: this CTA's A, and B (with kPair == 2, CTA `rank` loads half of B's boxes (nt: half
// of the rows) and multicasts them to both CTAs).
template <Op kOp, int kBN, int kPair>
__device__ __forceinline__ void issue_loads(const CUtensorMap* map_a, const CUtensorMap* map_b,
                                            const Params& p, const Tile& tile, int step, int rank,
                                            uint32_t a_dst, uint32_t b_dst, uint32_t bar) {
  const int red = step * kBK;
  if constexpr (kOp == Op::NT) {
    sm90::tma_load_2d(a_dst, map_a, bar, red, tile.row0);
    constexpr int kRows = kBN / kPair;  // B rows per box (the map's box height)
    load_b<kPair>(b_dst + rank * kRows * 128, map_b, bar, red,
                  tile.group * p.n + tile.n0 + rank * kRows);
  } else if constexpr (kOp == Op::NN) {
    sm90::tma_load_2d(a_dst, map_a, bar, red, tile.row0);
#pragma unroll
    for (int j = rank; j < kBN / 64; j += kPair)
      load_b<kPair>(b_dst + j * kBoxBytes, map_b, bar, tile.n0 + j * 64, tile.group * p.n + red);
  } else {
    const int row = tile.row0 + red;
#pragma unroll
    for (int j = 0; j < kBM / 64; ++j)
      sm90::tma_load_2d(a_dst + j * kBoxBytes, map_a, bar, tile.m0 + j * 64, row);
#pragma unroll
    for (int j = rank; j < kBN / 64; j += kPair)
      load_b<kPair>(b_dst + j * kBoxBytes, map_b, bar, tile.n0 + j * 64, row);
  }
}

template <int kBN, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_tile(float* acc, uint64_t desc_a, uint64_t desc_b) {
  if constexpr (kBN == 256)
    sm90::wgmma_m64n256k16<kTransA, kTransB>(acc, desc_a, desc_b);
  else
    sm90::wgmma_m64n128k16<kTransA, kTransB>(acc, desc_a, desc_b);
}

// A consumed stage goes back to this CTA's producer and (clusters) to the partner's, whose
// multicast also writes into it.
template <int kPair>
__device__ __forceinline__ void release_stage(uint64_t* empty) {
  const uint32_t bar = sm90::smem_address(empty);
  if constexpr (kPair == 2) {
    sm90::mbarrier_arrive_cluster(sm90::map_to_rank(bar, 0));
    sm90::mbarrier_arrive_cluster(sm90::map_to_rank(bar, 1));
  } else {
    sm90::mbarrier_arrive(bar);
  }
}

// The consumer warpgroups' loop over tiles (see the kernel).
template <Op kOp, int kBN, bool kPingPong, int kPair>
__device__ __forceinline__ void consume(const Params& p, const Schedule& s, uint8_t* tiles,
                                        uint64_t* full, uint64_t* empty, int first_tile,
                                        int tile_stride, int rank) {
  using C = Config<kBN>;
  constexpr int kStages = C::kStages;
  constexpr int kRings = kPingPong ? 2 : 1;
  constexpr int kRingStages = kStages / kRings;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warpgroup = threadIdx.x / 128;
  // ---- Consumers. Cooperative: both warpgroups work on every tile, warpgroup w on rows
  // [64 w, 64 w + 64). Ping-pong: warpgroup w takes every other tile of this CTA (j % 2 == w) and
  // all its 128 rows, so one warpgroup's epilogue overlaps the other's main loop.
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int w = warpgroup - 1;
  constexpr int kHalves = kPingPong ? 2 : 1;  // m64 halves of the tile computed by one warpgroup
  constexpr int kZeroThreads = kPingPong ? 128 : 256;
  const int zero_thread = kPingPong ? threadIdx.x % 128 : threadIdx.x - 128;
  const int first_half = kPingPong ? 0 : w;  // index of this warpgroup's first m64 half
  constexpr int kTransA = kOp == Op::TN ? 1 : 0;
  constexpr int kTransB = kOp == Op::NT ? 0 : 1;
  const int ring_base = kPingPong ? w * kRingStages : 0;
  int position = 0;  // index of the next reduction step in this warpgroup's ring
  float acc[kHalves][kBN / 2];
  Tile tile;
  int j = 0;
  for (int t = first_tile; decode_tile<kOp, kBN, kPair>(t, p, s, rank, tile);
       t += tile_stride, ++j) {
    if (kPingPong && (j & 1) != w) continue;  // the other warpgroup's tile
#pragma unroll
    for (int h = 0; h < kHalves; ++h)
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) acc[h][i] = 0.0f;
    int previous_stage = -1;
    for (int step = 0; step < tile.steps; ++step, ++position) {
      const int stage = ring_base + position % kRingStages;
      const uint32_t phase = (position / kRingStages) & 1;
      sm90::mbarrier_wait(sm90::smem_address(&full[stage]), phase);
      uint8_t* stage_base = tiles + stage * C::kStageBytes;
      if constexpr (kOp == Op::TN) {
        const int valid = tile.row_end - (tile.row0 + step * kBK);
        if (valid < kBK) {
          // Zero the token rows past the group's end: box lines [valid, 64) of every box.
          constexpr int kBoxes = (kBM + kBN) / 64;
          const int chunks_per_box = (kBK - valid) * 8;
          for (int i = zero_thread; i < kBoxes * chunks_per_box; i += kZeroThreads) {
            const int box = i / chunks_per_box;
            const int rem = i - box * chunks_per_box;
            uint4* line = reinterpret_cast<uint4*>(stage_base + box * kBoxBytes +
                                                   (valid + rem / 8) * 128);
            line[rem % 8] = make_uint4(0, 0, 0, 0);
          }
          sm90::fence_proxy_async_shared();
          sm90::named_barrier_sync(kPingPong ? 1 + w : 1, kZeroThreads);
        }
      }
      const uint32_t a_base = sm90::smem_address(stage_base);
      const uint32_t b_base = a_base + C::kABytes;
      sm90::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        const uint64_t desc_b = kTransB
                                    ? sm90::make_descriptor(b_base + kk * 2048, kBoxBytes, 1024)
                                    : sm90::make_descriptor(b_base + kk * 32, 16, 1024);
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          const int half = first_half + h;
          // MN-major A: box `half` holds these 64 rows (64 token lines); K-major A: 128-byte
          // rows, this half's 64 start at 8 KB * half.
          const uint64_t desc_a =
              kTransA ? sm90::make_descriptor(a_base + half * kBoxBytes + kk * 2048, kBoxBytes, 1024)
                      : sm90::make_descriptor(a_base + half * 64 * 128 + kk * 32, 16, 1024);
          wgmma_tile<kBN, kTransA, kTransB>(acc[h], desc_a, desc_b);
        }
      }
      sm90::wgmma_commit();
      // Keep this step's batch in flight; the previous one is done: release its stage.
      sm90::wgmma_wait<1>();
      if (previous_stage >= 0 && lane == 0) release_stage<kPair>(&empty[previous_stage]);
      previous_stage = stage;
    }
    sm90::wgmma_wait<0>();
    if (previous_stage >= 0 && lane == 0) release_stage<kPair>(&empty[previous_stage]);

    // ---- Epilogue: accumulator fragment (wgmma m64nN f32): warp q of the warpgroup holds rows
    // 16 q + lane/4 (+8) of its m64 half; n8 block j holds columns 8 j + 2 (lane % 4) (+1).
    const int column = tile.n0 + (lane % 4) * 2;
    if constexpr (kOp == Op::TN) {
      if (tile.steps == 0 && p.accumulate) continue;  // empty group: dW_g stays as it was
      const int ld = p.k;
      float* dw = static_cast<float*>(p.out) + static_cast<int64_t>(tile.group) * p.n * p.k;
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        const int row_in_tile = (first_half + h) * 64 + (warp % 4) * 16 + lane / 4;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float* row = dw + static_cast<int64_t>(tile.m0 + row_in_tile + 8 * e) * ld + column;
#pragma unroll
          for (int q = 0; q < kBN / 8; ++q) {
            float2 value = make_float2(acc[h][4 * q + 2 * e], acc[h][4 * q + 2 * e + 1]);
            float2* target = reinterpret_cast<float2*>(row + 8 * q);
            if (p.accumulate) {
              const float2 old = *target;
              value.x += old.x;
              value.y += old.y;
            }
            *target = value;
          }
        }
      }
    } else {
      const int ld = gemm_columns<kOp>(p);
      __nv_bfloat16* out = static_cast<__nv_bfloat16*>(p.out);
      if (p.quad_epilogue) {
        // Lane c of a quad gathers n8 block 4 q + c of its row from the quad's four lanes (each
        // holds 2 columns of every block) and stores those 8 columns with one 16-byte store.
        const int c = lane % 4;
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          const int row_in_tile = (first_half + h) * 64 + (warp % 4) * 16 + lane / 4;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int r = tile.row0 + row_in_tile + 8 * e;
            __nv_bfloat16* row = out + static_cast<int64_t>(r) * ld + tile.n0;
#pragma unroll
            for (int q = 0; q < kBN / 32; ++q) {
              uint32_t v[4];
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                const int b = 4 * (4 * q + i) + 2 * e;
                const __nv_bfloat162 pair = __floats2bfloat162_rn(acc[h][b], acc[h][b + 1]);
                v[i] = *reinterpret_cast<const uint32_t*>(&pair);
              }
              auto pick = [&](int i) {
                return i == 0 ? v[0] : i == 1 ? v[1] : i == 2 ? v[2] : v[3];
              };
              const uint32_t from1 = __shfl_xor_sync(0xffffffffu, pick(c ^ 1), 1);
              const uint32_t from2 = __shfl_xor_sync(0xffffffffu, pick(c ^ 2), 2);
              const uint32_t from3 = __shfl_xor_sync(0xffffffffu, pick(c ^ 3), 3);
              auto slot = [&](int source) {  // the value lane `source` holds for block 4 q + c
                const int k = source ^ c;
                return k == 0 ? pick(c) : k == 1 ? from1 : k == 2 ? from2 : from3;
              };
              if (r < tile.row_end)
                *reinterpret_cast<uint4*>(row + 8 * (4 * q + c)) =
                    make_uint4(slot(0), slot(1), slot(2), slot(3));
            }
          }
        }
        continue;
      }
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        const int row_in_tile = (first_half + h) * 64 + (warp % 4) * 16 + lane / 4;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int r = tile.row0 + row_in_tile + 8 * e;
          if (r >= tile.row_end) continue;
          __nv_bfloat16* row = out + static_cast<int64_t>(r) * ld + column;
#pragma unroll
          for (int q = 0; q < kBN / 8; ++q)
            *reinterpret_cast<__nv_bfloat162*>(row + 8 * q) =
                __floats2bfloat162_rn(acc[h][4 * q + 2 * e], acc[h][4 * q + 2 * e + 1]);
        }
      }
    }
  }
}

template <Op kOp, int kBN, bool kPingPong, int kPair>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ CUtensorMap map_a,
                        const __grid_constant__ CUtensorMap map_b, const Params p) {
  using C = Config<kBN>;
  constexpr int kStages = C::kStages;
  constexpr int kRings = kPingPong ? 2 : 1;
  constexpr int kRingStages = kStages / kRings;
  static_assert(kPair == 1 || !kPingPong, "clusters only with the cooperative schedule");
  const int rank = kPair == 2 ? static_cast<int>(sm90::cluster_rank()) : 0;
  const int first_tile = kPair == 2 ? blockIdx.x / 2 : blockIdx.x;
  const int tile_stride = kPair == 2 ? gridDim.x / 2 : gridDim.x;
  extern __shared__ uint8_t shared_raw[];
  uint8_t* shared = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~static_cast<uintptr_t>(1023));
  uint8_t* tiles = shared;
  uint64_t* full = reinterpret_cast<uint64_t*>(shared + C::kTileBytes);
  uint64_t* empty = full + kStages;
  Schedule s;
  s.tile_prefix = reinterpret_cast<int*>(empty + kStages);
  s.row_begin = s.tile_prefix + kMaxGroups + 1;
  s.row_end = s.row_begin + kMaxGroups;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      sm90::mbarrier_init(sm90::smem_address(&full[i]), 1);
      // One arrival per consuming warp: both warpgroups (cooperative) or the tile's owner; with
      // clusters also the partner's 8 warps (its B half lands in this CTA's stage too).
      sm90::mbarrier_init(sm90::smem_address(&empty[i]), kPingPong ? 4 : 8 * kPair);
    }
    sm90::fence_barrier_init();
  }
  if (warp == 0) {
    // Group rows clamped to [0, max_rows] and (nt, nn) the prefix of row tiles per group.
    int carry = 0;
    for (int base = 0; base < p.groups; base += 32) {
      const int g = base + lane;
      int count = 0;
      if (g < p.groups) {
        const int64_t b64 = min(max(p.offsets[g], int64_t{0}), int64_t{p.max_rows});
        const int64_t e64 = min(max(p.offsets[g + 1], b64), int64_t{p.max_rows});
        s.row_begin[g] = static_cast<int>(b64);
        s.row_end[g] = static_cast<int>(e64);
        count = static_cast<int>(((e64 - b64 + kBM - 1) / kBM + kPair - 1) / kPair);
      }
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const int other = __shfl_up_sync(0xffffffffu, count, d);
        if (lane >= d) count += other;
      }
      if (g < p.groups) s.tile_prefix[g + 1] = carry + count;
      carry += __shfl_sync(0xffffffffu, count, 31);
    }
    if (lane == 0) s.tile_prefix[0] = 0;
  }
  __syncthreads();
  if constexpr (kPair == 2) sm90::cluster_sync();  // the partner's barriers are initialized

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // ---- Producer: one thread per ring issues its TMA loads. Cooperative: one ring of kStages
    // for both consumer warpgroups. Ping-pong: ring r (kStages / 2 stages) feeds warpgroup r,
    // which takes every other tile (so no consumer ever waits more than one phase ahead).
    sm90::setmaxnreg_dec<kProducerRegs>();
    if (lane == 0 && warp < kRings) {
      const int ring = warp;
      if (ring == 0) {
        sm90::prefetch_tensor_map(&map_a);
        sm90::prefetch_tensor_map(&map_b);
      }
      int stage = 0;
      uint32_t phase = 0;
      Tile tile;
      int j = 0;
      for (int t = first_tile; decode_tile<kOp, kBN, kPair>(t, p, s, rank, tile);
           t += tile_stride, ++j) {
        if (kPingPong && (j & 1) != ring) continue;
        for (int step = 0; step < tile.steps; ++step) {
          const int index = ring * kRingStages + stage;
          sm90::mbarrier_wait(sm90::smem_address(&empty[index]), phase ^ 1);
          const uint32_t bar = sm90::smem_address(&full[index]);
          sm90::mbarrier_arrive_expect_tx(bar, C::kStageBytes);
          const uint32_t a_dst = sm90::smem_address(tiles + index * C::kStageBytes);
          issue_loads<kOp, kBN, kPair>(&map_a, &map_b, p, tile, step, rank, a_dst,
                                       a_dst + C::kABytes, bar);
          if (++stage == kRingStages) { stage = 0; phase ^= 1; }
        }
      }
    }
  } else {
    consume<kOp, kBN, kPingPong, kPair>(p, s, tiles, full, empty, first_tile, tile_stride, rank);
  }
  // No CTA of a cluster leaves while its partner may still multicast into it or arrive on its
  // barriers.
  if constexpr (kPair == 2) sm90::cluster_sync();
}

// ---- Host side

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FRUGAL_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000,
                                                       cudaEnableDefault, &found));
    FRUGAL_CUDA_REQUIRE(found == cudaDriverEntryPointSuccess && function != nullptr,
                        "grouped_gemm_sm90: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function);
  }();
  return encode;
}

// Row-major bf16 matrix [outer, inner] read in boxes of [box_outer, 64] with the 128-byte swizzle;
// reads past the matrix give zeros.
CUtensorMap make_tensor_map(const void* base, int64_t inner, int64_t outer, int box_outer) {
  CUtensorMap map;
  std::memset(&map, 0, sizeof map);
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(inner) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_outer)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult result = tensor_map_encoder()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box,
      element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FRUGAL_CUDA_REQUIRE(result == CUDA_SUCCESS, "grouped_gemm_sm90: cuTensorMapEncodeTiled failed");
  return map;
}

int current_sm_count() {
  static int counts[64] = {};
  int device = 0;
  FRUGAL_CUDA_CHECK(cudaGetDevice(&device));
  FRUGAL_CUDA_REQUIRE(device >= 0 && device < 64, "grouped_gemm_sm90: device index out of range");
  if (counts[device] == 0) {
    int count = 0;
    FRUGAL_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device] = count;
  }
  return counts[device];
}

// Launches a persistent grid: one CTA per SM (clusters of two: as many pairs as can be resident
// at once, from cudaOccupancyMaxActiveClusters, so that no cluster waits for a second wave), or
// fewer when there are fewer tiles. `units`: tiles (kPair == 1) or tile pairs (kPair == 2).
template <Op kOp, int kBN, bool kPingPong, int kPair>
void launch(const CUtensorMap& map_a, const CUtensorMap& map_b, const Params& p, int64_t units,
            cudaStream_t stream) {
  using C = Config<kBN>;
  auto* kernel = grouped_gemm_kernel<kOp, kBN, kPingPong, kPair>;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = kPair;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = C::kSharedBytes;
  config.stream = stream;
  config.attrs = &cluster;
  config.numAttrs = 1;
  static int64_t resident_units = 0;  // per kernel, for the first device it runs on
  if (resident_units == 0) {
    FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           C::kSharedBytes));
    int clusters = current_sm_count() / kPair;
    if (kPair > 1) {
      cudaLaunchConfig_t query = config;
      query.gridDim = dim3(static_cast<unsigned>(clusters * kPair));
      FRUGAL_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &query));
      FRUGAL_CUDA_REQUIRE(clusters > 0, "grouped_gemm_sm90: no cluster of two CTAs fits");
    }
    resident_units = clusters;
  }
  const int64_t blocks = kPair * std::max<int64_t>(1, std::min<int64_t>(resident_units, units));
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  FRUGAL_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, map_a, map_b, p));
  FRUGAL_CUDA_CHECK_LAUNCH();
}

// Tile schedule. Default: cooperative 128 x 256 tiles (128 x 128 where the width is not a multiple
// of 256), both consumer warpgroups on every tile. FRUGAL_GROUPED_GEMM_SCHEDULE selects the others,
// for measurements: multicast (the cooperative tiles in clusters of two CTAs sharing B through
// TMA multicast: pairs of row tiles of one group; tn: pairs of dW row tiles, when n % 256 == 0;
// slower on an H200 at bench-1b's shapes) or pingpong (128 x 128 tiles, one warpgroup per tile,
// one ring per warpgroup) or narrow (the cooperative schedule with 128 x 128 tiles, 6 stages).
enum class TileSchedule { Multicast, Cooperative, PingPong, Narrow };
TileSchedule schedule() {
  static const TileSchedule chosen = [] {
    const char* value = std::getenv("FRUGAL_GROUPED_GEMM_SCHEDULE");
    if (value != nullptr && std::strcmp(value, "multicast") == 0) return TileSchedule::Multicast;
    if (value != nullptr && std::strcmp(value, "pingpong") == 0) return TileSchedule::PingPong;
    if (value != nullptr && std::strcmp(value, "narrow") == 0) return TileSchedule::Narrow;
    return TileSchedule::Cooperative;
  }();
  return chosen;
}

// Launches the chosen schedule for an output `columns` wide. `make_b(box_outer)` gives B's map
// (nt: its box height is B's rows per CTA). units: row-tile slots (nt, nn; `pair_units` for pairs)
// or dW row tiles (tn), per output column tile; pairs need pair_units > 0.
template <Op kOp, class MakeB>
void dispatch(const CUtensorMap& map_a, MakeB make_b, const Params& p, int64_t units,
              int64_t pair_units, int64_t columns, cudaStream_t stream) {
  const TileSchedule chosen = schedule();
  if (chosen == TileSchedule::PingPong) {
    launch<kOp, 128, true, 1>(map_a, make_b(128), p, units * (columns / 128), stream);
  } else if (chosen == TileSchedule::Multicast && pair_units > 0) {
    if (columns % 256 == 0)
      launch<kOp, 256, false, 2>(map_a, make_b(128), p, pair_units * (columns / 256), stream);
    else
      launch<kOp, 128, false, 2>(map_a, make_b(64), p, pair_units * (columns / 128), stream);
  } else if (columns % 256 == 0 && chosen != TileSchedule::Narrow) {
    launch<kOp, 256, false, 1>(map_a, make_b(256), p, units * (columns / 256), stream);
  } else {
    launch<kOp, 128, false, 1>(map_a, make_b(128), p, units * (columns / 128), stream);
  }
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

void check_arguments(const char* what, int64_t groups, const int64_t* offsets, int64_t max_rows,
                     int64_t n, int64_t k, const void* a, const void* b, const void* out) {
  (void)what;
  FRUGAL_CUDA_REQUIRE(groups >= 0 && groups <= kMaxGroups,
                      "grouped_gemm_sm90: groups must be in [0, 256]");
  FRUGAL_CUDA_REQUIRE(offsets != nullptr, "grouped_gemm_sm90: device_offsets is null");
  FRUGAL_CUDA_REQUIRE(max_rows >= 0 && max_rows < (int64_t{1} << 31),
                      "grouped_gemm_sm90: max_rows must be in [0, 2^31)");
  FRUGAL_CUDA_REQUIRE(n > 0 && k > 0 && n % 128 == 0 && k % 128 == 0,
                      "grouped_gemm_sm90: n and k must be positive multiples of 128");
  FRUGAL_CUDA_REQUIRE(groups * n * k < (int64_t{1} << 40), "grouped_gemm_sm90: weights too large");
  FRUGAL_CUDA_REQUIRE(groups * n < (int64_t{1} << 31), "grouped_gemm_sm90: groups * n too large");
  FRUGAL_CUDA_REQUIRE(aligned16(a) && aligned16(b) && aligned16(out),
                      "grouped_gemm_sm90: operands must be 16-byte aligned");
}

Params make_params(int64_t groups, const int64_t* offsets, int64_t max_rows, int64_t n,
                   int64_t k, void* out, bool accumulate) {
  static const bool quad = [] {
    const char* value = std::getenv("FRUGAL_GROUPED_GEMM_EPILOGUE");
    return !(value != nullptr && std::strcmp(value, "direct") == 0);
  }();
  return Params{offsets, static_cast<int>(groups), static_cast<int>(max_rows), static_cast<int>(n),
                static_cast<int>(k), out, accumulate, quad};
}

}  // namespace

bool grouped_gemm_sm90_supported(int64_t n, int64_t k) {
  static const bool sm90 = [] {
    int device = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return false;
    return prop.major == 9 && prop.minor == 0;
  }();
  return sm90 && n > 0 && k > 0 && n % 128 == 0 && k % 128 == 0 && n * k < (int64_t{1} << 31);
}

bool grouped_gemm_sm90_enabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("FRUGAL_GROUPED_GEMM");
    return !(value != nullptr && std::strcmp(value, "cublas") == 0);
  }();
  return enabled;
}

void grouped_gemm_sm90_nt(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                          int64_t n, int64_t k, const __nv_bfloat16* x, const __nv_bfloat16* w,
                          __nv_bfloat16* y, cudaStream_t stream) {
  check_arguments("nt", groups, device_offsets, max_rows, n, k, x, w, y);
  if (groups == 0 || max_rows == 0) return;
  const Params p = make_params(groups, device_offsets, max_rows, n, k, y, false);
  const int64_t slots = (max_rows + kBM - 1) / kBM + groups;
  const CUtensorMap map_a = make_tensor_map(x, k, max_rows, kBM);
  const int64_t pair_slots = (max_rows + 2 * kBM - 1) / (2 * kBM) + groups;
  dispatch<Op::NT>(
      map_a, [&](int box) { return make_tensor_map(w, k, groups * n, box); }, p, slots,
      pair_slots, n, stream);
}

void grouped_gemm_sm90_nn(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                          int64_t n, int64_t k, const __nv_bfloat16* dy, const __nv_bfloat16* w,
                          __nv_bfloat16* dx, cudaStream_t stream) {
  check_arguments("nn", groups, device_offsets, max_rows, n, k, dy, w, dx);
  if (groups == 0 || max_rows == 0) return;
  const Params p = make_params(groups, device_offsets, max_rows, n, k, dx, false);
  const int64_t slots = (max_rows + kBM - 1) / kBM + groups;
  const CUtensorMap map_a = make_tensor_map(dy, n, max_rows, kBM);
  const CUtensorMap map_b = make_tensor_map(w, k, groups * n, 64);
  const int64_t pair_slots = (max_rows + 2 * kBM - 1) / (2 * kBM) + groups;
  dispatch<Op::NN>(map_a, [&](int) { return map_b; }, p, slots, pair_slots, k, stream);
}

void grouped_gemm_sm90_tn(int64_t groups, const int64_t* device_offsets, int64_t max_rows,
                          int64_t n, int64_t k, const __nv_bfloat16* dy, const __nv_bfloat16* x,
                          float* dw, bool accumulate, cudaStream_t stream) {
  check_arguments("tn", groups, device_offsets, max_rows, n, k, dy, x, dw);
  if (groups == 0) return;
  if (max_rows == 0) {  // every group is empty
    if (!accumulate)
      FRUGAL_CUDA_CHECK(cudaMemsetAsync(dw, 0, sizeof(float) * groups * n * k, stream));
    return;
  }
  const Params p = make_params(groups, device_offsets, max_rows, n, k, dw, accumulate);
  const CUtensorMap map_a = make_tensor_map(dy, n, max_rows, 64);
  const CUtensorMap map_b = make_tensor_map(x, k, max_rows, 64);
  const int64_t pair_tiles = n % (2 * kBM) == 0 ? groups * (n / (2 * kBM)) : 0;
  dispatch<Op::TN>(map_a, [&](int) { return map_b; }, p, groups * (n / kBM), pair_tiles, k,
                   stream);
}

}  // namespace frugal::cuda
