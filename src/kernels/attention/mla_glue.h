// Data movement around MLA's attention core (spec §1.4, model/gpu/gpu_mla.h), fused:
//
//   split_kv (forward): from kv_b [rows, heads, nope + v] (kv_b_proj's output) and the un-rotated
//     shared rope key k_pe [rows, rope] (row stride k_pe_ld: kv_a's last rope columns)
//       k [rows, heads, nope + rope] = [ kv_b[r, h, :nope] ; RoPE_fwd(k_pe[r]) ]
//       v [rows, heads, v]           =   kv_b[r, h, nope:]
//   merge_kv_grad (backward): from dk [rows, heads, nope + rope] and dv [rows, heads, v]
//       d_kv_b [rows, heads, nope + v] = [ dk[r, h, :nope] ; dv[r, h] ]
//       d_k_pe [rows, rope] (row stride d_k_pe_ld) = RoPE_bwd( round_T( sum_h dk[r, h, nope:] ) )
//     with the heads summed in order in fp32 and the sum rounded to the storage type before the
//     rotation (as a head sum into a separate [rows, rope] tensor, then rope_bwd on it, would).
//
// RoPE pairs are interleaved (rope.h); the table is the device's fp32 cos/sin
// [table_positions, rope/2] (RopeTable's doubles rounded to float), and each rotation rounds its
// products and sums to fp32 separately (no fused multiply-add), then stores in the storage type:
// the bits of cuda::rope_fwd / rope_bwd.
//
// The CPU references below hold values as float; storage BF16 rounds every stored result to bf16
// (inputs must already be bf16 values), storage F32 keeps fp32. They define the CUDA kernels of
// mla_glue_cuda.h bit for bit.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace frugal {

// Per-head sizes of MLA's attention inputs.
struct MlaHeadDims {
  int64_t heads = 0;
  int64_t nope = 0;  // qk_nope_head_dim (may be 0)
  int64_t rope = 0;  // qk_rope_head_dim (positive, even)
  int64_t v = 0;     // v_head_dim
};

// The fp32 RoPE table and the position of every row.
struct MlaRope {
  const float* cos = nullptr;  // [table_positions, rope/2]
  const float* sin = nullptr;
  int64_t table_positions = 0;         // rows of the table (checked on the CPU only)
  const int32_t* positions = nullptr;  // [rows]
};

namespace cpu {

// x [tokens, heads, head_stride]: elements [rope_offset, rope_offset + rope_dim) of each head
// rotated in place with the device rounding (fp32 products and sums, then the storage type).
void rope_rotate_fp32_table(float* x, const MlaRope& rope, int64_t tokens, int64_t heads,
                            int64_t head_stride, int64_t rope_offset, int64_t rope_dim,
                            bool backward, DType storage);

void mla_split_kv(float* k, float* v, const float* kv_b, const float* k_pe, int64_t k_pe_ld,
                  const MlaRope& rope, int64_t rows, const MlaHeadDims& dims, DType storage);

// Writes only columns [0, rope) of each d_k_pe row.
void mla_merge_kv_grad(float* d_kv_b, float* d_k_pe, int64_t d_k_pe_ld, const float* dk,
                       const float* dv, const MlaRope& rope, int64_t rows, const MlaHeadDims& dims,
                       DType storage);

}  // namespace cpu
}  // namespace frugal
