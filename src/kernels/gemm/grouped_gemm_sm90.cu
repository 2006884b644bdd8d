// Grouped BF16 GEMMs of an MoE layer on Hopper tensor cores (see grouped_gemm_sm90.h for the
// contract). One persistent kernel per call, templated on the operation:
//   nt (Fprop)  y[rows,N]  = x[rows,K] · W_g^T     A = x tile (K-major), B = W_g rows (K-major)
//   nn (Dgrad)  dx[rows,K] = dy[rows,N] · W_g      A = dy tile (K-major), B = W_g (N-major: MN)
//   tn (Wgrad)  dW_g[N,K] (+)= dy_g^T · x_g        A = dy_g^T (MN-major), B = x_g (MN-major)
// Cooperative schedule: CTA tile 128 x kBN (kBN = 256 when the output width allows, else
// 128), K-step 64, a 4 (kBN 256) or 6 (kBN 128) stage shared-memory ring filled by TMA (128-byte
// swizzle, one box row = 64 bf16 = 128 bytes). 384 threads: warpgroup 0 is the producer (one
// thread issues TMA, registers given back with setmaxnreg), warpgroups 1 and 2 are consumers, each
// owning 64 rows of the tile (wgmma m64nNk16, fp32 accumulators in registers) and keeping one
// wgmma batch in flight. bf16 outputs are stored 16 bytes per lane after a transpose within each
// lane quad (direct 4-byte stores were measured 10-25% slower at these shapes); fp32 dW with
// float2 read-add-writes. (Clusters of two CTAs sharing B through TMA multicast, ping-pong
// warpgroups and 128-wide tiles everywhere were measured no faster on an H200 at bench-1b's
// shapes.)
// nt, nn defer each tile's epilogue: once its last batch completes, the accumulators are rounded
// to bf16 pairs in kBN / 4 registers (the same roundings as an immediate store, so the same bits)
// and the next tile's first batch is issued into the freed accumulators; the quad transposes and
// stores of the previous tile run while that batch is in flight (the CTA's last tile stores after
// its loop). With 6-16 reduction steps per tile the tensor cores would otherwise idle through a
// large share of each tile. tn keeps its per-tile fp32 epilogue (long reductions, and 128 fp32
// accumulators have no room for a second copy).
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
// Per-device launch facts (SM count, each kernel's dynamic shared memory attribute, sm_90 support)
// are cached per device ordinal, so a process may use several GPUs.
#include "kernels/gemm/grouped_gemm_sm90.h"

#include <cuda.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/cuda_check.h"
#include "kernels/gemm/grouped_gemm_sm90.cuh"
#include "kernels/gemm/sm90_host.h"

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
};

template <int kBN>
struct Config {
  static constexpr int kStages = kBN == 256 ? 4 : 6;
  static constexpr int kABytes = kBM * kBK * 2;
  static constexpr int kBBytes = kBN * kBK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kTileBytes = kStages * kStageBytes;
  static constexpr int kSharedBytes =
      1024 + kTileBytes + 2 * kStages * 8 + sm90::kScheduleBytes<kMaxGroups>;
};

// Shared scheduling state of one CTA (after the tile ring and the barriers).
using sm90::Schedule;  // tile_prefix: the nt and nn row tiles

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

// Tile index t -> tile (false past the last tile).
template <Op kOp, int kBN>
__device__ __forceinline__ bool decode_tile(int t, const Params& p, const Schedule& s, Tile& tile) {
  const int column_tiles = gemm_columns<kOp>(p) / kBN;
  if constexpr (kOp == Op::TN) {
    const int row_tiles = p.n / kBM;
    const int per_group = row_tiles * column_tiles;
    const int g = t / per_group;
    if (g >= p.groups) return false;
    const int rem = t - g * per_group;
    tile.group = g;
    tile.m0 = (rem / column_tiles) * kBM;
    tile.n0 = (rem % column_tiles) * kBN;
    tile.row0 = s.row_begin[g];
    tile.row_end = s.row_end[g];
    tile.steps = (tile.row_end - tile.row0 + kBK - 1) / kBK;
  } else {
    const int slot = t / column_tiles;
    if (slot >= s.tile_prefix[p.groups]) return false;
    const int lo = sm90::group_of_slot(s.tile_prefix, p.groups, slot);
    tile.group = lo;
    tile.m0 = 0;
    tile.n0 = (t - slot * column_tiles) * kBN;
    tile.row0 = s.row_begin[lo] + (slot - s.tile_prefix[lo]) * kBM;
    tile.row_end = s.row_end[lo];
    tile.steps = (kOp == Op::NT ? p.k : p.n) / kBK;
  }
  return true;
}

// One stage of the tile: its A and B boxes, completing on `bar`.
template <Op kOp, int kBN>
__device__ __forceinline__ void issue_loads(const CUtensorMap* map_a, const CUtensorMap* map_b,
                                            const Params& p, const Tile& tile, int step,
                                            uint32_t a_dst, uint32_t b_dst, uint32_t bar) {
  const int red = step * kBK;
  if constexpr (kOp == Op::NT) {
    sm90::tma_load_2d(a_dst, map_a, bar, red, tile.row0);
    sm90::tma_load_2d(b_dst, map_b, bar, red, tile.group * p.n + tile.n0);  // box: kBN rows
  } else if constexpr (kOp == Op::NN) {
    sm90::tma_load_2d(a_dst, map_a, bar, red, tile.row0);
#pragma unroll
    for (int j = 0; j < kBN / 64; ++j)
      sm90::tma_load_2d(b_dst + j * kBoxBytes, map_b, bar, tile.n0 + j * 64,
                        tile.group * p.n + red);
  } else {
    const int row = tile.row0 + red;
#pragma unroll
    for (int j = 0; j < kBM / 64; ++j)
      sm90::tma_load_2d(a_dst + j * kBoxBytes, map_a, bar, tile.m0 + j * 64, row);
#pragma unroll
    for (int j = 0; j < kBN / 64; ++j)
      sm90::tma_load_2d(b_dst + j * kBoxBytes, map_b, bar, tile.n0 + j * 64, row);
  }
}

template <int kBN, int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_tile(float* acc, uint64_t desc_a, uint64_t desc_b) {
  if constexpr (kBN == 256)
    sm90::wgmma_m64n256k16<kTransA, kTransB>(acc, desc_a, desc_b);
  else
    sm90::wgmma_m64n128k16<kTransA, kTransB>(acc, desc_a, desc_b);
}

// A consumed stage goes back to the producer (one arrival per consumer warp).
__device__ __forceinline__ void release_stage(uint64_t* empty) {
  sm90::mbarrier_arrive(sm90::smem_address(empty));
}

// The consumer warpgroups' loop over tiles (see the kernel): both work on every tile, warpgroup
// w (1 or 2) on rows [64 (w - 1), 64 w) of it. nt, nn: a tile's epilogue is deferred. After its
// last wgmma batch completes, its accumulators are rounded to bf16 pairs (`packed`), which frees
// them for the next tile; the stores of those pairs (quad transpose, 16-byte stores) run after the
// next tile's first batch is issued, while it is in flight, and the last tile's after the loop.
// Between a batch's commit and its wait only `packed` is touched, never acc (ptxas would
// serialize every wgmma otherwise). tn stores its fp32 dW at the end of each tile.
template <Op kOp, int kBN>
__device__ __forceinline__ void consume(const Params& p, const Schedule& s, uint8_t* tiles,
                                        uint64_t* full, uint64_t* empty, int first_tile,
                                        int tile_stride) {
  using C = Config<kBN>;
  constexpr int kStages = C::kStages;
  constexpr bool kDeferred = kOp != Op::TN;  // bf16 outputs: the deferred epilogue
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warpgroup = threadIdx.x / 128;
  sm90::setmaxnreg_inc<kConsumerRegs>();
  const int half = warpgroup - 1;  // this warpgroup's m64 half of the tile
  const int warp_row = half * 64 + (warp % 4) * 16;  // this warp's first row in the tile
  constexpr int kZeroThreads = 256;  // both consumer warpgroups
  const int zero_thread = threadIdx.x - 128;
  constexpr int kTransA = kOp == Op::TN ? 1 : 0;
  constexpr int kTransB = kOp == Op::NT ? 0 : 1;
  int position = 0;  // index of the next reduction step in the ring
  float acc[kBN / 2];
  // nt, nn: the bf16 pairs of tile `stored`, whose stores have not run yet (store_pending).
  uint32_t packed[kDeferred ? kBN / 4 : 1];
  Tile tile, stored{};
  bool store_pending = false;
  // The deferred epilogue of `stored` (nt, nn): warp q of the warpgroup holds rows
  // 16 q .. 16 q + 15 of its m64 half.
  auto store_stored = [&] {
    if constexpr (kDeferred) {
      sm90::store_bf16_packed_rows<kBN>(packed, static_cast<__nv_bfloat16*>(p.out),
                                        gemm_columns<kOp>(p), stored.row0 + warp_row,
                                        stored.row_end, stored.n0, lane);
    }
  };
  for (int t = first_tile; decode_tile<kOp, kBN>(t, p, s, tile); t += tile_stride) {
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.0f;
    int previous_stage = -1;
    for (int step = 0; step < tile.steps; ++step, ++position) {
      const int stage = position % kStages;
      const uint32_t phase = (position / kStages) & 1;
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
          sm90::named_barrier_sync(1, kZeroThreads);
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
        // MN-major A: box `half` holds these 64 rows (64 token lines); K-major A: 128-byte rows,
        // this half's 64 start at 8 KB * half.
        const uint64_t desc_a =
            kTransA ? sm90::make_descriptor(a_base + half * kBoxBytes + kk * 2048, kBoxBytes, 1024)
                    : sm90::make_descriptor(a_base + half * 64 * 128 + kk * 32, 16, 1024);
        wgmma_tile<kBN, kTransA, kTransB>(acc, desc_a, desc_b);
      }
      sm90::wgmma_commit();
      if constexpr (kDeferred) {
        // While the tile's first batch runs: the previous tile's stores (nt, nn: steps >= 2).
        if (step == 0 && store_pending) {
          store_stored();
          store_pending = false;
        }
      }
      // Keep this step's batch in flight; the previous one is done: release its stage.
      sm90::wgmma_wait<1>();
      if (previous_stage >= 0 && lane == 0) release_stage(&empty[previous_stage]);
      previous_stage = stage;
    }
    sm90::wgmma_wait<0>();
    if (previous_stage >= 0 && lane == 0) release_stage(&empty[previous_stage]);

    if constexpr (kDeferred) {
      // Round now (acc is reused by the next tile); store during the next tile's first batch.
      // The fences keep the rounding after the wait and before the next tile's wgmma.
      sm90::fence_registers<kBN / 2>(acc);
      sm90::pack_bf16_pairs<kBN>(acc, packed);
      sm90::fence_registers<kBN / 4>(packed);
      stored = tile;
      store_pending = true;
    } else {
      // ---- Epilogue: warp q of the warpgroup holds rows 16 q .. 16 q + 15 of its m64 half.
      if (tile.steps == 0 && p.accumulate) continue;  // empty group: dW_g stays as it was
      float* dw = static_cast<float*>(p.out) + static_cast<int64_t>(tile.group) * p.n * p.k;
      sm90::store_f32_rows<kBN>(acc, dw, p.k, tile.m0 + warp_row, tile.n0, p.accumulate, lane);
    }
  }
  if (store_pending) store_stored();  // the last tile (nt, nn)
}

template <Op kOp, int kBN>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ CUtensorMap map_a,
                        const __grid_constant__ CUtensorMap map_b, const Params p) {
  using C = Config<kBN>;
  constexpr int kStages = C::kStages;
  const int first_tile = blockIdx.x;  // persistent: tiles first_tile, + tile_stride, ...
  const int tile_stride = gridDim.x;
  extern __shared__ uint8_t shared_raw[];
  uint8_t* shared = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~static_cast<uintptr_t>(1023));
  uint8_t* tiles = shared;
  // Full: the TMA thread's arrive.expect_tx; empty: one arrival per consumer warp. Group rows
  // clamped to [0, max_rows], and (nt, nn) the row-tile prefix.
  Schedule s;
  const sm90::RingBarriers bars = sm90::setup_ring<kMaxGroups>(
      shared + C::kTileBytes, kStages, 1, 8, p.offsets, p.groups, p.max_rows, 1, kBM, s);
  uint64_t* full = bars.full;
  uint64_t* empty = bars.empty;

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    // ---- Producer: one thread issues the TMA loads into the ring of kStages that both consumer
    // warpgroups read.
    sm90::setmaxnreg_dec<kProducerRegs>();
    if (warp == 0 && lane == 0) {
      sm90::prefetch_tensor_map(&map_a);
      sm90::prefetch_tensor_map(&map_b);
      int stage = 0;
      uint32_t phase = 0;
      Tile tile;
      for (int t = first_tile; decode_tile<kOp, kBN>(t, p, s, tile); t += tile_stride) {
        for (int step = 0; step < tile.steps; ++step) {
          sm90::mbarrier_wait(sm90::smem_address(&empty[stage]), phase ^ 1);
          const uint32_t bar = sm90::smem_address(&full[stage]);
          sm90::mbarrier_arrive_expect_tx(bar, C::kStageBytes);
          const uint32_t a_dst = sm90::smem_address(tiles + stage * C::kStageBytes);
          issue_loads<kOp, kBN>(&map_a, &map_b, p, tile, step, a_dst, a_dst + C::kABytes, bar);
          if (++stage == kStages) { stage = 0; phase ^= 1; }
        }
      }
    }
  } else {
    consume<kOp, kBN>(p, s, tiles, full, empty, first_tile, tile_stride);
  }
}

// ---- Host side

// Row-major bf16 matrix [outer, inner] read in boxes of [box_outer, 64] with the 128-byte swizzle;
// reads past the matrix give zeros.
CUtensorMap make_tensor_map(const void* base, int64_t inner, int64_t outer, int box_outer) {
  return sm90_host::make_tensor_map(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, base, inner, outer, 64,
                                    box_outer, "grouped_gemm_sm90");
}

// Launches a persistent grid: one CTA per SM, or fewer when there are fewer tiles. The kernel's
// dynamic shared memory limit is raised once per device (a function attribute is per device;
// threads racing on the first launch both set the same value, which is harmless).
template <Op kOp, int kBN>
void launch(const CUtensorMap& map_a, const CUtensorMap& map_b, const Params& p, int64_t tiles,
            cudaStream_t stream) {
  using C = Config<kBN>;
  auto* kernel = grouped_gemm_kernel<kOp, kBN>;
  const int device = sm90_host::current_device("grouped_gemm_sm90");
  static sm90_host::OncePerDevice shared_bytes_raised;
  shared_bytes_raised(device, [&](int) {
    FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           C::kSharedBytes));
  });
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>(sm90_host::sm_count(device), tiles));
  kernel<<<static_cast<unsigned>(blocks), kThreads, C::kSharedBytes, stream>>>(map_a, map_b, p);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

// Launches the kernel for an output `columns` wide: 128 x 256 tiles when columns is a multiple of
// 256, else 128 x 128. make_b(kBN) gives B's tensor map (nt: its box height is the tile width).
// units: row-tile slots (nt, nn) or dW row tiles (tn), per output column tile.
template <Op kOp, class MakeB>
void dispatch(const CUtensorMap& map_a, MakeB make_b, const Params& p, int64_t units,
              int64_t columns, cudaStream_t stream) {
  if (columns % 256 == 0)
    launch<kOp, 256>(map_a, make_b(256), p, units * (columns / 256), stream);
  else
    launch<kOp, 128>(map_a, make_b(128), p, units * (columns / 128), stream);
}

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
  using sm90_host::aligned16;
  FRUGAL_CUDA_REQUIRE(aligned16(a) && aligned16(b) && aligned16(out),
                      "grouped_gemm_sm90: operands must be 16-byte aligned");
}

Params make_params(int64_t groups, const int64_t* offsets, int64_t max_rows, int64_t n,
                   int64_t k, void* out, bool accumulate) {
  return Params{offsets, static_cast<int>(groups), static_cast<int>(max_rows), static_cast<int>(n),
                static_cast<int>(k), out, accumulate};
}

}  // namespace

bool grouped_gemm_sm90_supported(int64_t n, int64_t k) {
  return sm90_host::current_device_is_sm90() && n > 0 && k > 0 && n % 128 == 0 && k % 128 == 0 &&
         n * k < (int64_t{1} << 31);
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
  dispatch<Op::NT>(
      map_a, [&](int box) { return make_tensor_map(w, k, groups * n, box); }, p, slots, n, stream);
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
  dispatch<Op::NN>(map_a, [&](int) { return map_b; }, p, slots, k, stream);
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
  dispatch<Op::TN>(map_a, [&](int) { return map_b; }, p, groups * (n / kBM), k, stream);
}

}  // namespace frugal::cuda
