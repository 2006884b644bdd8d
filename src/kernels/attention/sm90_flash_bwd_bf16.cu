// Causal flash attention backward, bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation) for
// qk_dim 192, v_dim 128. FlashAttention-2 structure without atomics: after delta_i = dout_i.out_i
// (launch_delta), two kernels that each recompute P = exp(scale q k^T - lse) block by block:
//
// dkdv: grid (batch*heads, key blocks of 64), 4 warps, warp w owns keys 16w..16w+15 of the block.
//   Loops over query blocks of 32 from the diagonal to the end (Q, dO, lse, delta double-buffered
//   with cp.async). Works in the transposed orientation so that every product keeps its operand
//   in registers:  S^T = K Q^T, dP^T = V dO^T (16 x 32 per warp), P^T = exp2(S^T c - lse log2 e),
//   dS^T = P^T (dP^T - delta); dV += P^T dO, dK += dS^T Q, with P^T and dS^T re-packed from the
//   accumulators as A fragments. dK is scaled once at the end.
// dq: grid (batch*heads, query blocks of 128), 8 warps of 16 query rows; loops over key blocks of
//   64 up to the diagonal (K, V double-buffered): S = Q K^T, dP = dO V^T, dS = P (dP - delta),
//   dQ += dS K.
// Each output element is accumulated by one thread in a fixed order: the results do not depend on
// scheduling (deterministic). The price is that S and dP are computed twice (once per kernel).
//
// Shapes: q, k, dq, dk [batch, seq, heads, 192]; v, dout, dv [batch, seq, heads, 128];
//         lse, delta [batch, heads, seq]. Pointers 16-byte aligned (checked by the caller).
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/attention/flash_attention_launch.h"
#include "kernels/attention/sm90_flash_common.cuh"

namespace frugal::cuda::flash {
namespace {

using namespace sm90;

constexpr float kLog2e = 1.4426950408889634f;

// ---- dK, dV ----------------------------------------------------------------------------------

constexpr int kDkdvKeys = 64;     // keys per block, 16 per warp
constexpr int kDkdvQueries = 32;  // queries per inner step
constexpr int kDkdvThreads = kDkdvKeys / 16 * 32;

template <int kQk, int kV>
struct DkdvTiles {
  static constexpr int k_bytes = kDkdvKeys * kQk * 2;
  static constexpr int v_bytes = kDkdvKeys * kV * 2;
  static constexpr int q_bytes = kDkdvQueries * kQk * 2;     // per buffer
  static constexpr int dout_bytes = kDkdvQueries * kV * 2;   // per buffer
  static constexpr int floats_bytes = kDkdvQueries * 4;      // lse or delta, per buffer
  static constexpr int k_offset = 0;
  static constexpr int v_offset = k_offset + k_bytes;
  static constexpr int q_offset = v_offset + v_bytes;            // 2 buffers
  static constexpr int dout_offset = q_offset + 2 * q_bytes;     // 2 buffers
  static constexpr int lse_offset = dout_offset + 2 * dout_bytes;  // 2 buffers
  static constexpr int delta_offset = lse_offset + 2 * floats_bytes;  // 2 buffers
  static constexpr int total_bytes = delta_offset + 2 * floats_bytes;
};

template <int kQk, int kV>
__global__ void __launch_bounds__(kDkdvThreads, 2)
    sm90_flash_dkdv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv,
                           const bf16* __restrict__ dout, const float* __restrict__ lse,
                           const float* __restrict__ delta, const bf16* __restrict__ q,
                           const bf16* __restrict__ k, const bf16* __restrict__ v, int seq,
                           int heads, float scale, float scale_log2) {
  using Tiles = DkdvTiles<kQk, kV>;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t base = shared_address(smem);
  const uint32_t k_tile = base + Tiles::k_offset;
  const uint32_t v_tile = base + Tiles::v_offset;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane >> 2, pair = lane & 3;
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / heads, h = bh % heads;
  const int key0 = blockIdx.y * kDkdvKeys;  // low key blocks (the most queries) launch first
  const int64_t qk_stride = static_cast<int64_t>(heads) * kQk;
  const int64_t v_stride = static_cast<int64_t>(heads) * kV;
  const bf16* q_bh = q + b * seq * qk_stride + h * kQk;
  const bf16* k_bh = k + b * seq * qk_stride + h * kQk;
  const bf16* v_bh = v + b * seq * v_stride + h * kV;
  const bf16* dout_bh = dout + b * seq * v_stride + h * kV;
  const float* lse_bh = lse + bh * seq;
  const float* delta_bh = delta + bh * seq;
  const int first_query_block = key0 / kDkdvQueries;
  const int last_query_block = (seq - 1) / kDkdvQueries;

  // Query block m's Q, dO, lse, delta into buffer `buffer` (one cp.async group, uncommitted).
  auto load_query_block = [&](int m, int buffer) {
    const int query0 = m * kDkdvQueries;
    load_tile<kDkdvQueries, kQk, kDkdvThreads>(base + Tiles::q_offset + buffer * Tiles::q_bytes,
                                               q_bh + query0 * qk_stride, qk_stride, seq - query0);
    load_tile<kDkdvQueries, kV, kDkdvThreads>(
        base + Tiles::dout_offset + buffer * Tiles::dout_bytes, dout_bh + query0 * v_stride,
        v_stride, seq - query0);
    load_floats<kDkdvQueries>(base + Tiles::lse_offset + buffer * Tiles::floats_bytes,
                              lse_bh + query0, seq - query0);
    load_floats<kDkdvQueries>(base + Tiles::delta_offset + buffer * Tiles::floats_bytes,
                              delta_bh + query0, seq - query0);
  };

  load_tile<kDkdvKeys, kQk, kDkdvThreads>(k_tile, k_bh + key0 * qk_stride, qk_stride, seq - key0);
  load_tile<kDkdvKeys, kV, kDkdvThreads>(v_tile, v_bh + key0 * v_stride, v_stride, seq - key0);
  load_query_block(first_query_block, 0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  float dk_acc[kQk / 8][4], dv_acc[kV / 8][4];  // [16 keys x dim] per warp
#pragma unroll
  for (int dt = 0; dt < kQk / 8; ++dt) dk_acc[dt][0] = dk_acc[dt][1] = dk_acc[dt][2] = dk_acc[dt][3] = 0.0f;
#pragma unroll
  for (int dt = 0; dt < kV / 8; ++dt) dv_acc[dt][0] = dv_acc[dt][1] = dv_acc[dt][2] = dv_acc[dt][3] = 0.0f;
  const int warp_key0 = key0 + warp * 16;
  const int row_key[2] = {warp_key0 + group, warp_key0 + group + 8};

  for (int m = first_query_block; m <= last_query_block; ++m) {
    const int buffer = (m - first_query_block) & 1;
    if (m < last_query_block) {
      load_query_block(m + 1, buffer ^ 1);
      cp_async_commit();
    }
    const int query0 = m * kDkdvQueries;
    if (query0 + kDkdvQueries - 1 >= warp_key0) {  // else every query here precedes every key
      const uint32_t q_tile = base + Tiles::q_offset + buffer * Tiles::q_bytes;
      const uint32_t dout_tile = base + Tiles::dout_offset + buffer * Tiles::dout_bytes;
      const float* lse_tile =
          reinterpret_cast<const float*>(smem + Tiles::lse_offset + buffer * Tiles::floats_bytes);
      const float* delta_tile = reinterpret_cast<const float*>(
          smem + Tiles::delta_offset + buffer * Tiles::floats_bytes);

      // S^T = K Q^T and dP^T = V dO^T   [16 keys x 32 queries] per warp
      float st[kDkdvQueries / 8][4], dpt[kDkdvQueries / 8][4];
#pragma unroll
      for (int nt = 0; nt < kDkdvQueries / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kQk / 16; ++kk) {
        uint32_t ka[4];
        ldmatrix_x4(ka, a_operand_address<kQk>(k_tile, warp * 16, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < kDkdvQueries / 16; ++nn) {
          uint32_t qb[4];
          ldmatrix_x4(qb, b_operand_address<kQk>(q_tile, nn * 16, kk * 16, lane));
          mma_16816(st[2 * nn], ka, qb[0], qb[1]);
          mma_16816(st[2 * nn + 1], ka, qb[2], qb[3]);
        }
      }
#pragma unroll
      for (int kk = 0; kk < kV / 16; ++kk) {
        uint32_t va[4];
        ldmatrix_x4(va, a_operand_address<kV>(v_tile, warp * 16, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < kDkdvQueries / 16; ++nn) {
          uint32_t db[4];
          ldmatrix_x4(db, b_operand_address<kV>(dout_tile, nn * 16, kk * 16, lane));
          mma_16816(dpt[2 * nn], va, db[0], db[1]);
          mma_16816(dpt[2 * nn + 1], va, db[2], db[3]);
        }
      }

      // P^T and dS^T; masked: queries before the key, and queries past the sequence.
      const bool need_mask = query0 < warp_key0 + 15 || query0 + kDkdvQueries > seq;
#pragma unroll
      for (int nt = 0; nt < kDkdvQueries / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int column = nt * 8 + 2 * pair + (e & 1);
          const int query = query0 + column;
          float p = fast_exp2(fmaf(st[nt][e], scale_log2, -lse_tile[column] * kLog2e));
          if (need_mask && (query < row_key[e >> 1] || query >= seq)) p = 0.0f;
          st[nt][e] = p;
          dpt[nt][e] = p * (dpt[nt][e] - delta_tile[column]);
        }

      // dV += P^T dO, dK += dS^T Q   (k = the 32 queries, two steps of 16)
#pragma unroll
      for (int kk = 0; kk < kDkdvQueries / 16; ++kk) {
        const uint32_t pa[4] = {
            pack_bf16(st[2 * kk][0], st[2 * kk][1]), pack_bf16(st[2 * kk][2], st[2 * kk][3]),
            pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]),
            pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3])};
        const uint32_t dsa[4] = {
            pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]), pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]),
            pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
            pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
        for (int dd = 0; dd < kV / 16; ++dd) {
          uint32_t db[4];
          ldmatrix_x4_trans(db, b_operand_trans_address<kV>(dout_tile, kk * 16, dd * 16, lane));
          mma_16816(dv_acc[2 * dd], pa, db[0], db[1]);
          mma_16816(dv_acc[2 * dd + 1], pa, db[2], db[3]);
        }
#pragma unroll
        for (int dd = 0; dd < kQk / 16; ++dd) {
          uint32_t qb[4];
          ldmatrix_x4_trans(qb, b_operand_trans_address<kQk>(q_tile, kk * 16, dd * 16, lane));
          mma_16816(dk_acc[2 * dd], dsa, qb[0], qb[1]);
          mma_16816(dk_acc[2 * dd + 1], dsa, qb[2], qb[3]);
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = row_key[r];
    if (key >= seq) continue;
    bf16* dk_row = dk + (b * seq + key) * qk_stride + h * kQk;
    bf16* dv_row = dv + (b * seq + key) * v_stride + h * kV;
#pragma unroll
    for (int dt = 0; dt < kQk / 8; ++dt)
      *reinterpret_cast<__nv_bfloat162*>(dk_row + dt * 8 + 2 * pair) =
          __floats2bfloat162_rn(dk_acc[dt][2 * r] * scale, dk_acc[dt][2 * r + 1] * scale);
#pragma unroll
    for (int dt = 0; dt < kV / 8; ++dt)
      *reinterpret_cast<__nv_bfloat162*>(dv_row + dt * 8 + 2 * pair) =
          __floats2bfloat162_rn(dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1]);
  }
}

// ---- dQ --------------------------------------------------------------------------------------

constexpr int kDqQueries = 128;  // query rows per block, 16 per warp
constexpr int kDqKeys = 64;      // keys per inner step
constexpr int kDqThreads = kDqQueries / 16 * 32;

template <int kQk, int kV>
struct DqTiles {
  static constexpr int q_bytes = kDqQueries * kQk * 2;
  static constexpr int dout_bytes = kDqQueries * kV * 2;
  static constexpr int k_bytes = kDqKeys * kQk * 2;  // per buffer
  static constexpr int v_bytes = kDqKeys * kV * 2;   // per buffer
  static constexpr int q_offset = 0;
  static constexpr int dout_offset = q_offset + q_bytes;
  static constexpr int k_offset = dout_offset + dout_bytes;  // 2 buffers
  static constexpr int v_offset = k_offset + 2 * k_bytes;    // 2 buffers
  static constexpr int total_bytes = v_offset + 2 * v_bytes;
};

template <int kQk, int kV>
__global__ void __launch_bounds__(kDqThreads, 1)
    sm90_flash_dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout,
                         const float* __restrict__ lse, const float* __restrict__ delta,
                         const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, int seq, int heads, float scale,
                         float scale_log2) {
  using Tiles = DqTiles<kQk, kV>;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t base = shared_address(smem);
  const uint32_t q_tile = base + Tiles::q_offset;
  const uint32_t dout_tile = base + Tiles::dout_offset;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane >> 2, pair = lane & 3;
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / heads, h = bh % heads;
  const int query0 = (gridDim.y - 1 - blockIdx.y) * kDqQueries;  // heaviest blocks first
  const int64_t qk_stride = static_cast<int64_t>(heads) * kQk;
  const int64_t v_stride = static_cast<int64_t>(heads) * kV;
  const bf16* q_bh = q + b * seq * qk_stride + h * kQk;
  const bf16* k_bh = k + b * seq * qk_stride + h * kQk;
  const bf16* v_bh = v + b * seq * v_stride + h * kV;
  const bf16* dout_bh = dout + b * seq * v_stride + h * kV;
  const int last_key_block = (min(query0 + kDqQueries, seq) - 1) / kDqKeys;

  auto load_key_block = [&](int n, int buffer) {
    const int key0 = n * kDqKeys;
    load_tile<kDqKeys, kQk, kDqThreads>(base + Tiles::k_offset + buffer * Tiles::k_bytes,
                                        k_bh + key0 * qk_stride, qk_stride, seq - key0);
    load_tile<kDqKeys, kV, kDqThreads>(base + Tiles::v_offset + buffer * Tiles::v_bytes,
                                       v_bh + key0 * v_stride, v_stride, seq - key0);
  };
  load_tile<kDqQueries, kQk, kDqThreads>(q_tile, q_bh + query0 * qk_stride, qk_stride,
                                         seq - query0);
  load_tile<kDqQueries, kV, kDqThreads>(dout_tile, dout_bh + query0 * v_stride, v_stride,
                                        seq - query0);
  load_key_block(0, 0);
  cp_async_commit();

  const int warp_query0 = query0 + warp * 16;
  const int row_query[2] = {warp_query0 + group, warp_query0 + group + 8};
  float row_lse_log2[2], row_delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool valid = row_query[r] < seq;
    row_lse_log2[r] = valid ? lse[bh * seq + row_query[r]] * kLog2e : 0.0f;
    row_delta[r] = valid ? delta[bh * seq + row_query[r]] : 0.0f;
  }
  float dq_acc[kQk / 8][4];  // [16 queries x qk] per warp
#pragma unroll
  for (int dt = 0; dt < kQk / 8; ++dt) dq_acc[dt][0] = dq_acc[dt][1] = dq_acc[dt][2] = dq_acc[dt][3] = 0.0f;
  cp_async_wait<0>();
  __syncthreads();

  for (int n = 0; n <= last_key_block; ++n) {
    const int buffer = n & 1;
    if (n < last_key_block) {
      load_key_block(n + 1, buffer ^ 1);
      cp_async_commit();
    }
    const int key0 = n * kDqKeys;
    if (key0 <= warp_query0 + 15) {  // else every key here comes after every row of this warp
      const uint32_t k_tile = base + Tiles::k_offset + buffer * Tiles::k_bytes;
      const uint32_t v_tile = base + Tiles::v_offset + buffer * Tiles::v_bytes;

      // S = Q K^T and dP = dO V^T   [16 queries x 64 keys] per warp
      float s[kDqKeys / 8][4], dp[kDqKeys / 8][4];
#pragma unroll
      for (int nt = 0; nt < kDqKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kQk / 16; ++kk) {
        uint32_t qa[4];
        ldmatrix_x4(qa, a_operand_address<kQk>(q_tile, warp * 16, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < kDqKeys / 16; ++nn) {
          uint32_t kb[4];
          ldmatrix_x4(kb, b_operand_address<kQk>(k_tile, nn * 16, kk * 16, lane));
          mma_16816(s[2 * nn], qa, kb[0], kb[1]);
          mma_16816(s[2 * nn + 1], qa, kb[2], kb[3]);
        }
      }
#pragma unroll
      for (int kk = 0; kk < kV / 16; ++kk) {
        uint32_t da[4];
        ldmatrix_x4(da, a_operand_address<kV>(dout_tile, warp * 16, kk * 16, lane));
#pragma unroll
        for (int nn = 0; nn < kDqKeys / 16; ++nn) {
          uint32_t vb[4];
          ldmatrix_x4(vb, b_operand_address<kV>(v_tile, nn * 16, kk * 16, lane));
          mma_16816(dp[2 * nn], da, vb[0], vb[1]);
          mma_16816(dp[2 * nn + 1], da, vb[2], vb[3]);
        }
      }

      // dS = P (dP - delta), P = exp2(S c - lse log2 e), masked past the diagonal.
      const bool need_mask = key0 + kDqKeys - 1 > warp_query0;
#pragma unroll
      for (int nt = 0; nt < kDqKeys / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + nt * 8 + 2 * pair + (e & 1);
          float p = fast_exp2(fmaf(s[nt][e], scale_log2, -row_lse_log2[e >> 1]));
          if (need_mask && key > row_query[e >> 1]) p = 0.0f;
          s[nt][e] = p * (dp[nt][e] - row_delta[e >> 1]);
        }

      // dQ += dS K   (k = the 64 keys, four steps of 16)
#pragma unroll
      for (int kk = 0; kk < kDqKeys / 16; ++kk) {
        const uint32_t dsa[4] = {
            pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
            pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
            pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dd = 0; dd < kQk / 16; ++dd) {
          uint32_t kb[4];
          ldmatrix_x4_trans(kb, b_operand_trans_address<kQk>(k_tile, kk * 16, dd * 16, lane));
          mma_16816(dq_acc[2 * dd], dsa, kb[0], kb[1]);
          mma_16816(dq_acc[2 * dd + 1], dsa, kb[2], kb[3]);
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_query[r];
    if (i >= seq) continue;
    bf16* dq_row = dq + (b * seq + i) * qk_stride + h * kQk;
#pragma unroll
    for (int dt = 0; dt < kQk / 8; ++dt)
      *reinterpret_cast<__nv_bfloat162*>(dq_row + dt * 8 + 2 * pair) =
          __floats2bfloat162_rn(dq_acc[dt][2 * r] * scale, dq_acc[dt][2 * r + 1] * scale);
  }
}

template <class Kernel>
void allow_shared_bytes(Kernel kernel, int bytes) {
  FRUGAL_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace

void sm90_bwd_bf16(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                   const float* delta, const bf16* q, const bf16* k, const bf16* v,
                   const AttentionShape& shape, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(shape.qk_dim == kSm90QkDim && shape.v_dim == kSm90VDim,
                      "flash attention (sm90): this kernel is built for qk_dim 192, v_dim 128");
  FRUGAL_CUDA_REQUIRE((shape.seq + kDkdvKeys - 1) / kDkdvKeys <= 65535,
                      "flash attention (sm90): sequence too long for the grid");
  FRUGAL_CUDA_REQUIRE(shape.batch * shape.heads <= 0x7FFFFFFF,
                      "flash attention (sm90): batch * heads too large for the grid");
  const int seq = static_cast<int>(shape.seq), heads = static_cast<int>(shape.heads);
  const float scale_log2 = shape.scale * kLog2e;
  const unsigned slices = static_cast<unsigned>(shape.batch * shape.heads);

  {
    using Tiles = DqTiles<kSm90QkDim, kSm90VDim>;
    auto kernel = sm90_flash_dq_kernel<kSm90QkDim, kSm90VDim>;
    allow_shared_bytes(kernel, Tiles::total_bytes);
    const dim3 grid(slices, static_cast<unsigned>((shape.seq + kDqQueries - 1) / kDqQueries));
    kernel<<<grid, kDqThreads, Tiles::total_bytes, stream>>>(dq, dout, lse, delta, q, k, v, seq,
                                                             heads, shape.scale, scale_log2);
    FRUGAL_CUDA_CHECK_LAUNCH();
  }
  {
    using Tiles = DkdvTiles<kSm90QkDim, kSm90VDim>;
    auto kernel = sm90_flash_dkdv_kernel<kSm90QkDim, kSm90VDim>;
    allow_shared_bytes(kernel, Tiles::total_bytes);
    const dim3 grid(slices, static_cast<unsigned>((shape.seq + kDkdvKeys - 1) / kDkdvKeys));
    kernel<<<grid, kDkdvThreads, Tiles::total_bytes, stream>>>(dk, dv, dout, lse, delta, q, k, v,
                                                               seq, heads, shape.scale,
                                                               scale_log2);
    FRUGAL_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace frugal::cuda::flash
