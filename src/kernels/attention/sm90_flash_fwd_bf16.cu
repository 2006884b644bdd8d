// Causal flash attention forward, bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation) for
// MLA's training dims qk_dim 192, v_dim 128. FlashAttention-2 structure:
//
//   grid (batch*heads, query blocks of 128), the heaviest query blocks (most keys) launched first;
//   block = 8 warps, warp w owns query rows 16w..16w+15 of the block, its Q fragments held in
//   registers for the whole kernel;
//   loop over key blocks of 64 from 0 up to the block's diagonal, K and V double-buffered in
//   shared memory (cp.async: block n+1 loads while block n computes);
//   per key block: S = Q K^T (16x64 per warp, fp32), causal mask on the diagonal blocks only,
//   online softmax in the log2 domain (running row max m of the raw scores, p = 2^(s*c - m*c)
//   with c = scale*log2(e), one FFMA + EX2 per score), O = O*correction + P V with P re-packed
//   from the accumulators to bf16 A fragments without leaving registers.
//   A warp skips key blocks that lie entirely after its last row.
// Epilogue: O / rowsum to bf16; lse = m*scale + ln(rowsum) (natural log, fp32).
//
// Shapes: q, k [batch, seq, heads, 192]; v, out [batch, seq, heads, 128]; lse [batch, heads, seq].
// Pointers 16-byte aligned (checked by the caller). Rows past seq are zero-filled on load and
// never stored.
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/attention/flash_attention_launch.h"
#include "kernels/attention/sm90_flash_common.cuh"

namespace frugal::cuda::flash {
namespace {

using namespace sm90;

constexpr int kQueries = 128;  // query rows per block
constexpr int kKeys = 64;      // keys per inner step
constexpr int kWarps = kQueries / 16;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;

template <int kQk, int kV>
struct FwdTiles {
  static constexpr int q_bytes = kQueries * kQk * 2;
  static constexpr int k_bytes = kKeys * kQk * 2;
  static constexpr int v_bytes = kKeys * kV * 2;
  static constexpr int total_bytes = q_bytes + 2 * (k_bytes + v_bytes);
};

template <int kQk, int kV>
__global__ void __launch_bounds__(kThreads, 1)
    sm90_flash_fwd_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                          const bf16* __restrict__ q, const bf16* __restrict__ k,
                          const bf16* __restrict__ v, int seq, int heads, float scale,
                          float scale_log2) {
  using Tiles = FwdTiles<kQk, kV>;
  static_assert(kQk % 64 == 0 && kV % 64 == 0, "head dims must be multiples of 64");
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t q_tile = shared_address(smem);
  const uint32_t k_tiles = q_tile + Tiles::q_bytes;        // 2 buffers
  const uint32_t v_tiles = k_tiles + 2 * Tiles::k_bytes;   // 2 buffers

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane >> 2, pair = lane & 3;  // fragment row g and column pair t
  const int64_t bh = blockIdx.x;
  const int64_t b = bh / heads, h = bh % heads;
  const int query0 = (gridDim.y - 1 - blockIdx.y) * kQueries;  // heaviest blocks first
  const int64_t qk_stride = static_cast<int64_t>(heads) * kQk;
  const int64_t v_stride = static_cast<int64_t>(heads) * kV;
  const bf16* q_bh = q + b * seq * qk_stride + h * kQk;
  const bf16* k_bh = k + b * seq * qk_stride + h * kQk;
  const bf16* v_bh = v + b * seq * v_stride + h * kV;
  const int last_key_block = (min(query0 + kQueries, seq) - 1) / kKeys;

  load_tile<kQueries, kQk, kThreads>(q_tile, q_bh + query0 * qk_stride, qk_stride, seq - query0);
  load_tile<kKeys, kQk, kThreads>(k_tiles, k_bh, qk_stride, seq);
  load_tile<kKeys, kV, kThreads>(v_tiles, v_bh, v_stride, seq);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // This warp's 16 query rows as A fragments, one per 16 columns of qk.
  uint32_t q_frag[kQk / 16][4];
#pragma unroll
  for (int kk = 0; kk < kQk / 16; ++kk)
    ldmatrix_x4(q_frag[kk], a_operand_address<kQk>(q_tile, warp * 16, kk * 16, lane));

  float o[kV / 8][4];  // [16 rows x kV] accumulator, 8 columns per tile
#pragma unroll
  for (int dt = 0; dt < kV / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // raw scores (q.k), rows g and g+8
  float row_sum[2] = {0.0f, 0.0f};            // this thread's columns only until the epilogue
  const int warp_query0 = query0 + warp * 16;
  const int row_query[2] = {warp_query0 + group, warp_query0 + group + 8};

  for (int n = 0; n <= last_key_block; ++n) {
    const int buffer = n & 1;
    if (n < last_key_block) {  // prefetch the next key block into the other buffer
      const int next_key0 = (n + 1) * kKeys;
      load_tile<kKeys, kQk, kThreads>(k_tiles + (buffer ^ 1) * Tiles::k_bytes,
                                      k_bh + next_key0 * qk_stride, qk_stride, seq - next_key0);
      load_tile<kKeys, kV, kThreads>(v_tiles + (buffer ^ 1) * Tiles::v_bytes,
                                     v_bh + next_key0 * v_stride, v_stride, seq - next_key0);
      cp_async_commit();
    }
    const int key0 = n * kKeys;
    if (key0 <= warp_query0 + 15) {  // else every key here comes after every row of this warp
      const uint32_t k_tile = k_tiles + buffer * Tiles::k_bytes;
      const uint32_t v_tile = v_tiles + buffer * Tiles::v_bytes;

      // S = Q K^T   [16 x kKeys] per warp
      float s[kKeys / 8][4];
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kQk / 16; ++kk) {
#pragma unroll
        for (int nn = 0; nn < kKeys / 16; ++nn) {
          uint32_t kf[4];
          ldmatrix_x4(kf, b_operand_address<kQk>(k_tile, nn * 16, kk * 16, lane));
          mma_16816(s[2 * nn], q_frag[kk], kf[0], kf[1]);
          mma_16816(s[2 * nn + 1], q_frag[kk], kf[2], kf[3]);
        }
      }
      if (key0 + kKeys - 1 > warp_query0) {  // the diagonal crosses this block: mask j > i
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = key0 + nt * 8 + 2 * pair + (e & 1);
            if (key > row_query[e >> 1]) s[nt][e] = -INFINITY;
          }
      }

      // Online softmax, rows g (r = 0) and g + 8 (r = 1).
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float block_max = row_max[r];
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; ++nt)
          block_max = fmaxf(block_max, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        block_max = fmaxf(block_max, __shfl_xor_sync(0xFFFFFFFFu, block_max, 1));
        block_max = fmaxf(block_max, __shfl_xor_sync(0xFFFFFFFFu, block_max, 2));
        // A row with no key yet (max -inf) keeps p = 0 and its zero sums; no inf - inf.
        const float base = block_max == -INFINITY ? 0.0f : block_max * scale_log2;
        const float correction = fast_exp2(row_max[r] * scale_log2 - base);
        row_max[r] = block_max;
        row_sum[r] *= correction;
#pragma unroll
        for (int dt = 0; dt < kV / 8; ++dt) {
          o[dt][2 * r] *= correction;
          o[dt][2 * r + 1] *= correction;
        }
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
          for (int e = 2 * r; e < 2 * r + 2; ++e) {
            const float p = fast_exp2(fmaf(s[nt][e], scale_log2, -base));
            s[nt][e] = p;
            row_sum[r] += p;
          }
      }

      // O += P V: P's accumulator pairs (keys 16kk..16kk+15) become one A fragment.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t pa[4] = {
            pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
            pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
            pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dd = 0; dd < kV / 16; ++dd) {
          uint32_t vf[4];
          ldmatrix_x4_trans(vf, b_operand_trans_address<kV>(v_tile, kk * 16, dd * 16, lane));
          mma_16816(o[2 * dd], pa, vf[0], vf[1]);
          mma_16816(o[2 * dd + 1], pa, vf[2], vf[3]);
        }
      }
    }
    cp_async_wait<0>();  // the next block has landed (this thread's copies) ...
    __syncthreads();     // ... everyone's, and nobody still reads the buffer it replaces next
  }

  // Epilogue: normalise, store bf16 pairs, and the natural-log lse of each row.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = row_sum[r];
    total += __shfl_xor_sync(0xFFFFFFFFu, total, 1);
    total += __shfl_xor_sync(0xFFFFFFFFu, total, 2);
    const int i = row_query[r];
    if (i < seq) {
      const float inv_total = 1.0f / total;
      bf16* out_row = out + (b * seq + i) * v_stride + h * kV;
#pragma unroll
      for (int dt = 0; dt < kV / 8; ++dt) {
        const __nv_bfloat162 value =
            __floats2bfloat162_rn(o[dt][2 * r] * inv_total, o[dt][2 * r + 1] * inv_total);
        *reinterpret_cast<__nv_bfloat162*>(out_row + dt * 8 + 2 * pair) = value;
      }
      if (pair == 0) lse[bh * seq + i] = row_max[r] * scale + logf(total);
    }
  }
}

}  // namespace

void sm90_fwd_bf16(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                   const AttentionShape& shape, cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(shape.qk_dim == kSm90QkDim && shape.v_dim == kSm90VDim,
                      "flash attention (sm90): this kernel is built for qk_dim 192, v_dim 128");
  using Tiles = FwdTiles<kSm90QkDim, kSm90VDim>;
  const int64_t query_blocks = (shape.seq + kQueries - 1) / kQueries;
  FRUGAL_CUDA_REQUIRE(query_blocks <= 65535, "flash attention (sm90): sequence too long for the grid");
  FRUGAL_CUDA_REQUIRE(shape.batch * shape.heads <= 0x7FFFFFFF,
                      "flash attention (sm90): batch * heads too large for the grid");
  auto kernel = sm90_flash_fwd_kernel<kSm90QkDim, kSm90VDim>;
  FRUGAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         Tiles::total_bytes));
  const dim3 grid(static_cast<unsigned>(shape.batch * shape.heads),
                  static_cast<unsigned>(query_blocks));
  kernel<<<grid, kThreads, Tiles::total_bytes, stream>>>(
      out, lse, q, k, v, static_cast<int>(shape.seq), static_cast<int>(shape.heads), shape.scale,
      shape.scale * kLog2e);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda::flash
