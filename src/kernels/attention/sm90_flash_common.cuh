// Device helpers shared by the bf16 tensor-core flash attention kernels (sm90_flash_fwd_bf16.cu,
// sm90_flash_bwd_bf16.cu): asynchronous global->shared copies, ldmatrix, mma.sync m16n8k16 (bf16
// in, fp32 accumulate) and the swizzled shared-memory tile layout they read.
//
// Tile layout: a tile of R rows x D bf16 (D a multiple of 64) is stored row-major, each row cut
// into 16-byte chunks of 8 elements; chunk c of row r is stored at chunk position c ^ (r & 7).
// The 8 row addresses of one ldmatrix 8x8 matrix (8 consecutive rows, same chunk) then fall in
// 8 different bank groups, so ldmatrix and the 16-byte cp.async stores are conflict-free.
//
// Fragment layouts of mma.m16n8k16 (PTX ISA), lane = 4 * g + t (g = lane / 4, t = lane % 4):
//   A (16x16, row-major) a0: (g, 2t..2t+1)  a1: (g+8, 2t..)  a2: (g, 2t+8..)  a3: (g+8, 2t+8..)
//   B (16x8, k x n)      b0: (k 2t..2t+1, n g)  b1: (k 2t+8..2t+9, n g)
//   C (16x8 fp32)        c0,c1: (g, 2t..2t+1)  c2,c3: (g+8, 2t..2t+1)
// so an accumulator pair of 8-column tiles re-packs into one A fragment without data movement.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace frugal::cuda::flash::sm90 {

using bf16 = __nv_bfloat16;

__device__ inline uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// 16 bytes global -> shared, bypassing L1; `valid` false writes 16 zero bytes and reads nothing.
__device__ inline void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
// 4 bytes global -> shared; `valid` false writes zeros.
__device__ inline void cp_async_4(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 bf16 matrices; lanes 8m..8m+7 give the row addresses of matrix m, and register m of
// lane l receives row l/4, elements 2(l%4), 2(l%4)+1 of matrix m (transposed with .trans).
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// d += a * b for one 16x8x16 tile.
__device__ inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit, subnormal results flushed to zero (exp2f adds a rescale for
// them; probabilities below 2^-126 do not matter in bf16). 2^-inf = 0.
__device__ inline float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats as a bf16 pair (round to nearest even); `low` goes to the lower 16 bits, the
// element with the smaller column index in a fragment.
__device__ inline uint32_t pack_bf16(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// Byte offset of element (row, col) in a swizzled tile of kDim columns; col a multiple of 8.
template <int kDim>
__device__ inline uint32_t tile_offset(int row, int col) {
  static_assert(kDim % 64 == 0, "swizzled tiles need rows of a multiple of 64 elements");
  return static_cast<uint32_t>((row * kDim + (((col >> 3) ^ (row & 7)) << 3)) * 2);
}

// Lane addresses for ldmatrix_x4 over a 16x16 block at (row0, col0) of a swizzled tile:
//  a_operand: registers 0..3 = A fragment a0..a3 of rows row0..+15, cols col0..+15.
//  b_operand (rows are n, cols are k, e.g. K for S = Q K^T): registers 0, 1 = b0, b1 of the
//    8-row n-tile at row0, registers 2, 3 = b0, b1 of the n-tile at row0 + 8.
//  b_operand_trans (rows are k, cols are n, e.g. V for O = P V; use ldmatrix_x4_trans):
//    registers 0, 1 = b0, b1 of the n-tile at col0, registers 2, 3 = those of col0 + 8.
template <int kDim>
__device__ inline uint32_t a_operand_address(uint32_t tile, int row0, int col0, int lane) {
  return tile + tile_offset<kDim>(row0 + (lane & 7) + ((lane >> 3) & 1) * 8, col0 + (lane >> 4) * 8);
}
template <int kDim>
__device__ inline uint32_t b_operand_address(uint32_t tile, int row0, int col0, int lane) {
  return tile + tile_offset<kDim>(row0 + (lane & 7) + (lane >> 4) * 8, col0 + ((lane >> 3) & 1) * 8);
}
template <int kDim>
__device__ inline uint32_t b_operand_trans_address(uint32_t tile, int row0, int col0, int lane) {
  return tile + tile_offset<kDim>(row0 + (lane & 7) + ((lane >> 3) & 1) * 8, col0 + (lane >> 4) * 8);
}

// Asynchronously copy rows first..first+kRows-1 (kDim bf16 each, `row_stride` elements apart in
// global memory, rows from `valid_rows` on zero-filled) into a swizzled shared tile. All
// kThreads threads of the block call it; the caller commits the group. valid_rows >= 1.
template <int kRows, int kDim, int kThreads>
__device__ inline void load_tile(uint32_t tile, const bf16* src, int64_t row_stride,
                                 int valid_rows) {
  constexpr int kChunks = kDim / 8;
#pragma unroll
  for (int index = threadIdx.x; index < kRows * kChunks; index += kThreads) {
    const int row = index / kChunks, chunk = index % kChunks;
    const bool valid = row < valid_rows;
    const bf16* from = src + (valid ? row : 0) * row_stride + chunk * 8;
    cp_async_16(tile + tile_offset<kDim>(row, chunk * 8), from, valid);
  }
}

// kCount floats (lse or delta of one query tile) into shared memory, zeros past valid_count.
template <int kCount>
__device__ inline void load_floats(uint32_t dst, const float* src, int valid_count) {
  for (int index = threadIdx.x; index < kCount; index += blockDim.x)
    cp_async_4(dst + index * 4, src + (index < valid_count ? index : 0), index < valid_count);
}

}  // namespace frugal::cuda::flash::sm90
