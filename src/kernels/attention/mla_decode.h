// Absorbed-MLA attention over a paged latent KV cache (spec §1.5), the attention of generation:
// every query row attends to positions [0, length) of its own sequence, all heads sharing one
// cache entry per position (like multi-query attention in the latent space).
//
// Per row r, head h, with L = lengths[r], entry_j = cache entry of position j of sequence
// row_sequence[r] (entry_dim = kv_lora + rope: [c_j ; k_pe_j]):
//   s_j     = softmax_scale * (q[r, h, :] . entry_j)         j < L   (q = [q_lat ; q_pe])
//   out[r, h, :] = sum_j softmax(s)_j * entry_j[0 : kv_lora]         (o_lat: the value is c_j)
//
// Layouts (row-major):
//   q     [rows, heads, entry_dim]
//   out   [rows, heads, kv_lora]
//   cache pool [num_pages, layers, page_size, entry_dim]; position j of sequence s, layer l is at
//         ((page_table[s * max_pages + j / page_size] * layers + l) * page_size + j % page_size)
//         * entry_dim
//   page_table [sequences, max_pages] int32, row_sequence [rows] int32, lengths [rows] int32
//   (1 <= lengths[r] <= max_pages * page_size).
// The CPU reference takes float everywhere; the CUDA version takes BF16 q, cache and out with
// FP32 scores, softmax and accumulation (kernels/attention/mla_decode_cuda.h).
#pragma once

#include <cstdint>

namespace frugal {

struct MlaDecodeShape {
  int64_t rows = 0;        // query rows (decode: one per sequence; prefill / verify: several)
  int64_t heads = 0;
  int64_t kv_lora = 0;     // value dim = first kv_lora elements of an entry
  int64_t rope = 0;        // entry_dim = kv_lora + rope
  int64_t layers = 0;      // layers in the pool
  int64_t layer = 0;       // the layer read
  int64_t page_size = 0;
  int64_t max_pages = 0;   // page_table row stride
  float softmax_scale = 1;

  int64_t entry_dim() const { return kv_lora + rope; }
};

namespace cpu {

void mla_decode_attention(float* out, const float* q, const float* cache,
                          const int32_t* page_table, const int32_t* row_sequence,
                          const int32_t* lengths, const MlaDecodeShape& shape);

}  // namespace cpu
}  // namespace frugal
