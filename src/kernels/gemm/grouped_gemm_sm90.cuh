// Device primitives of the grouped Hopper GEMMs (grouped_gemm_sm90.cu): mbarriers, TMA tile loads
// (cp.async.bulk.tensor), wgmma shared-memory descriptors (128-byte swizzle) and the
// wgmma.mma_async m64n128k16 / m64n256k16 calls (BF16 in, FP32 accumulate), register-count
// hand-off between warpgroups (setmaxnreg), group scheduling, and the epilogue stores of a wgmma
// fragment (fp32; bf16 at once, or rounded into packed pairs first and stored later, for a
// deferred epilogue). Only for sm_90a device code.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace frugal::cuda::sm90 {

__device__ __forceinline__ uint32_t smem_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// ---- mbarriers (one per pipeline stage and direction)

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Returns once the phase with parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// ---- TMA: a 2-D box of a tensor map into shared memory, completing on `bar`

__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int32_t inner, int32_t outer) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(inner), "r"(outer)
      : "memory");
}
__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Generic-proxy writes to shared memory (zero fill) made visible to wgmma / TMA (async proxy).
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Named barrier over `threads` threads (ids 1.. are ours; 0 is __syncthreads).
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- Register hand-off

template <uint32_t kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <uint32_t kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---- wgmma

// Shared-memory matrix descriptor with the 128-byte swizzle (tiles written by TMA with
// CU_TENSOR_MAP_SWIZZLE_128B into 1024-byte aligned buffers). Byte offsets:
//   K-major:  lbo unused (1), sbo = 1024 (next 8 rows of 128 bytes)
//   MN-major: lbo = distance to the next 64 MN elements, sbo = 1024 (next 8 K rows)
__device__ __forceinline__ uint64_t make_descriptor(uint32_t address, uint32_t lbo_bytes,
                                                    uint32_t sbo_bytes) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((address & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>((lbo_bytes & 0x3FFFF) >> 4) << 16;
  desc |= static_cast<uint64_t>((sbo_bytes & 0x3FFFF) >> 4) << 32;
  desc |= uint64_t{1} << 62;  // 128-byte swizzle
  return desc;
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// d[64] (+)= A(desc) * B(desc), m64n128k16; trans_a/trans_b: MN-major operands.
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16(float* d, uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %68, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, %66, %67;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "n"(kTransA), "n"(kTransB), "r"(1));
}

// d[128] (+)= A(desc) * B(desc), m64n256k16; trans_a/trans_b: MN-major operands.
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n256k16(float* d, uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %132, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, p, 1, 1, %130, %131;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "n"(kTransA), "n"(kTransB), "r"(1));
}

// ---- Group scheduling from the device offsets

// Run by one whole warp: each group's rows [row_begin[g], row_end[g]), the offsets clamped to
// [0, rows_limit] and rounded down to multiples of `row_align` (a power of two; 1 keeps them), and
// tile_prefix[g] = the row tiles of `tile_rows` rows in groups 0..g-1 (tile_prefix[groups] all).
__device__ __forceinline__ void load_group_rows(const int64_t* offsets, int groups, int rows_limit,
                                                int row_align, int tile_rows, int* row_begin,
                                                int* row_end, int* tile_prefix, int lane) {
  const int64_t mask = ~static_cast<int64_t>(row_align - 1);
  int carry = 0;
  for (int base = 0; base < groups; base += 32) {
    const int g = base + lane;
    int count = 0;
    if (g < groups) {
      const int64_t b64 = min(max(offsets[g], int64_t{0}), int64_t{rows_limit}) & mask;
      const int64_t e64 = min(max(offsets[g + 1], b64), int64_t{rows_limit}) & mask;
      row_begin[g] = static_cast<int>(b64);
      row_end[g] = static_cast<int>(e64);
      count = static_cast<int>((e64 - b64 + tile_rows - 1) / tile_rows);
    }
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int other = __shfl_up_sync(0xffffffffu, count, d);
      if (lane >= d) count += other;
    }
    if (g < groups) tile_prefix[g + 1] = carry + count;
    carry += __shfl_sync(0xffffffffu, count, 31);
  }
  if (lane == 0) tile_prefix[0] = 0;
}

// Shared memory after a kernel's operand ring: the ring's full and empty mbarriers, then the
// group schedule (tile_prefix [kMaxGroups + 1], row_begin and row_end [kMaxGroups]).
template <int kMaxGroups>
constexpr int kScheduleBytes = (kMaxGroups + 1 + 2 * kMaxGroups) * 4;

struct Schedule {
  int* tile_prefix;  // [groups + 1] (the row-tiled ops)
  int* row_begin;    // [groups]
  int* row_end;      // [groups]
};

struct RingBarriers {
  uint64_t* full;   // [stages]: the stage's operands have landed
  uint64_t* empty;  // [stages]: the consumers are done with the stage
};

// Lays out the barriers and the schedule at `at` (8-byte aligned), initializes the barriers
// (thread 0: full with `full_arrivals`, empty with `empty_arrivals` each), loads the group rows
// (warp 0, see load_group_rows) and synchronizes the block. Every thread must call it.
template <int kMaxGroups>
__device__ __forceinline__ RingBarriers setup_ring(uint8_t* at, int stages, uint32_t full_arrivals,
                                                   uint32_t empty_arrivals,
                                                   const int64_t* offsets, int groups,
                                                   int rows_limit, int row_align, int tile_rows,
                                                   Schedule& s) {
  RingBarriers bars;
  bars.full = reinterpret_cast<uint64_t*>(at);
  bars.empty = bars.full + stages;
  s.tile_prefix = reinterpret_cast<int*>(bars.empty + stages);
  s.row_begin = s.tile_prefix + kMaxGroups + 1;
  s.row_end = s.row_begin + kMaxGroups;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int i = 0; i < stages; ++i) {
      mbarrier_init(smem_address(&bars.full[i]), full_arrivals);
      mbarrier_init(smem_address(&bars.empty[i]), empty_arrivals);
    }
    fence_barrier_init();
  }
  if (warp == 0)
    load_group_rows(offsets, groups, rows_limit, row_align, tile_rows, s.row_begin, s.row_end,
                    s.tile_prefix, lane);
  __syncthreads();
  return bars;
}

// The group of row-tile slot `slot`: the largest g with tile_prefix[g] <= slot (empty groups,
// whose prefix repeats, are skipped).
__device__ __forceinline__ int group_of_slot(const int* tile_prefix, int groups, int slot) {
  int lo = 0, hi = groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_prefix[mid] <= slot) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// ---- Epilogues

// Writes one warp's 16 rows of an m64nN fp32 wgmma accumulator fragment (n8 block j holds columns
// 8 j + 2 (lane % 4) (+1) of rows lane / 4 and lane / 4 + 8) into fp32 `out` (row-major, leading
// dimension ld), the warp's first row at `row0` and first column at `n0`, or adds them to what is
// there (accumulate).
template <int kN>
__device__ __forceinline__ void store_f32_rows(const float* acc, float* out, int64_t ld, int row0,
                                               int n0, bool accumulate, int lane) {
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float* row = out + static_cast<int64_t>(row0 + lane / 4 + 8 * e) * ld + n0 + (lane % 4) * 2;
#pragma unroll
    for (int q = 0; q < kN / 8; ++q) {
      float2 value = make_float2(acc[4 * q + 2 * e], acc[4 * q + 2 * e + 1]);
      float2* target = reinterpret_cast<float2*>(row + 8 * q);
      if (accumulate) {
        const float2 old = *target;
        value.x += old.x;
        value.y += old.y;
      }
      *target = value;
    }
  }
}

// ---- bf16 epilogue

// An m64nN fp32 wgmma accumulator fragment (n8 block j holds columns 8 j + 2 (lane % 4) (+1) of
// rows lane / 4 and lane / 4 + 8: acc[4 j + 2 e] and acc[4 j + 2 e + 1] for row lane / 4 + 8 e)
// as bf16 pairs: pair 2 j + e = (acc[4 j + 2 e], acc[4 j + 2 e + 1]), i.e. pair i rounds
// acc[2 i] and acc[2 i + 1].
__device__ __forceinline__ uint32_t bf16_pair(const float* acc, int i) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(acc[2 * i], acc[2 * i + 1]);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// Stores one warp's 16 rows of a fragment into bf16 `out` (row-major, leading dimension ld), the
// warp's first row at `row0` and first column at `n0`, `pair(i)` giving bf16 pair i (see
// bf16_pair): lane c of each quad gathers n8 block 4 q + c from the quad's four lanes (each holds
// 2 columns of every block) and writes those 8 columns with one 16-byte store. Rows at or past
// `row_end` are not written.
template <int kN, class PairOf>
__device__ __forceinline__ void store_bf16_quads(PairOf pair, __nv_bfloat16* out, int64_t ld,
                                                 int row0, int row_end, int n0, int lane) {
  const int c = lane % 4;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = row0 + lane / 4 + 8 * e;
    __nv_bfloat16* row = out + static_cast<int64_t>(r) * ld + n0;
#pragma unroll
    for (int q = 0; q < kN / 32; ++q) {
      uint32_t v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] = pair(2 * (4 * q + i) + e);
      auto pick = [&](int i) { return i == 0 ? v[0] : i == 1 ? v[1] : i == 2 ? v[2] : v[3]; };
      // Lane c receives from lane c ^ d its value for block 4 q + c.
      const uint32_t from1 = __shfl_xor_sync(0xffffffffu, pick(c ^ 1), 1);
      const uint32_t from2 = __shfl_xor_sync(0xffffffffu, pick(c ^ 2), 2);
      const uint32_t from3 = __shfl_xor_sync(0xffffffffu, pick(c ^ 3), 3);
      auto from = [&](int source) {  // the value lane `source` holds for block 4 q + c
        const int d = source ^ c;
        return d == 0 ? pick(c) : d == 1 ? from1 : d == 2 ? from2 : from3;
      };
      if (r < row_end)
        *reinterpret_cast<uint4*>(row + 8 * (4 * q + c)) =
            make_uint4(from(0), from(1), from(2), from(3));
    }
  }
}

// One warp's 16 rows of an m64nN fp32 accumulator fragment, rounded to bf16 as they are stored.
template <int kN>
__device__ __forceinline__ void store_bf16_rows(const float* acc, __nv_bfloat16* out, int64_t ld,
                                                int row0, int row_end, int n0, int lane) {
  store_bf16_quads<kN>([&](int i) { return bf16_pair(acc, i); }, out, ld, row0, row_end, n0,
                       lane);
}

// The same in two steps, so that acc is free (for the next tile's wgmma) before the stores:
// round the fragment into packed[kN / 4] (packed[i] = bf16_pair(acc, i)), later store it.
template <int kN>
__device__ __forceinline__ void pack_bf16_pairs(const float* acc, uint32_t* packed) {
#pragma unroll
  for (int i = 0; i < kN / 4; ++i) packed[i] = bf16_pair(acc, i);
}
template <int kN>
__device__ __forceinline__ void store_bf16_packed_rows(const uint32_t* packed, __nv_bfloat16* out,
                                                       int64_t ld, int row0, int row_end, int n0,
                                                       int lane) {
  store_bf16_quads<kN>([&](int i) { return packed[i]; }, out, ld, row0, row_end, n0, lane);
}

// Pins registers for the compiler: values computed before this point stay computed before it
// (an empty asm that reads and writes each; no instruction is emitted).
template <int kCount>
__device__ __forceinline__ void fence_registers(uint32_t* values) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+r"(values[i])::"memory");
}
template <int kCount>
__device__ __forceinline__ void fence_registers(float* values) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(values[i])::"memory");
}

}  // namespace frugal::cuda::sm90
