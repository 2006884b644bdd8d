// CPU reference of absorbed-MLA decode attention over a paged latent cache
// (kernels/attention/mla_decode.h): per row and head, scores against every cached entry of the
// row's sequence, a max-subtracted softmax and the probability-weighted sum of the entries' first
// kv_lora elements. Float inputs and outputs, double accumulation.
//   q [rows, heads, kv_lora + rope], out [rows, heads, kv_lora],
//   cache [num_pages, layers, page_size, kv_lora + rope] addressed through page_table.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/attention/mla_decode.h"

namespace frugal::cpu {

void mla_decode_attention(float* out, const float* q, const float* cache,
                          const int32_t* page_table, const int32_t* row_sequence,
                          const int32_t* lengths, const MlaDecodeShape& shape) {
  FRUGAL_CHECK(shape.rows >= 0 && shape.heads >= 1 && shape.kv_lora >= 1 && shape.rope >= 0,
               "mla_decode_attention: bad shape rows {} heads {} kv_lora {} rope {}", shape.rows,
               shape.heads, shape.kv_lora, shape.rope);
  FRUGAL_CHECK(shape.layers >= 1 && shape.layer >= 0 && shape.layer < shape.layers,
               "mla_decode_attention: layer {} outside the pool's {} layers", shape.layer,
               shape.layers);
  FRUGAL_CHECK(shape.page_size >= 1 && shape.max_pages >= 1,
               "mla_decode_attention: bad page_size {} or max_pages {}", shape.page_size,
               shape.max_pages);
  const int64_t entry_dim = shape.entry_dim(), kv_lora = shape.kv_lora, heads = shape.heads;
  const int64_t capacity = shape.max_pages * shape.page_size;
  for (int64_t r = 0; r < shape.rows; ++r)
    FRUGAL_CHECK(lengths[r] >= 1 && lengths[r] <= capacity && row_sequence[r] >= 0,
                 "mla_decode_attention: row {} has length {} (allowed 1..{}) or sequence {}", r,
                 lengths[r], capacity, row_sequence[r]);

  std::vector<double> scores;
  std::vector<double> acc(static_cast<size_t>(kv_lora));
  for (int64_t r = 0; r < shape.rows; ++r) {
    const int64_t length = lengths[r];
    const int32_t* pages = page_table + static_cast<int64_t>(row_sequence[r]) * shape.max_pages;
    // The row's entries in position order.
    std::vector<const float*> entries(static_cast<size_t>(length));
    for (int64_t j = 0; j < length; ++j) {
      const int64_t page = pages[j / shape.page_size];
      FRUGAL_CHECK(page >= 0, "mla_decode_attention: row {} position {} on page {}", r, j, page);
      entries[j] = cache + ((page * shape.layers + shape.layer) * shape.page_size +
                            j % shape.page_size) * entry_dim;
    }
    scores.assign(static_cast<size_t>(length), 0.0);
    for (int64_t h = 0; h < heads; ++h) {
      const float* q_head = q + (r * heads + h) * entry_dim;  // [entry_dim]
      double max_score = -INFINITY;
      for (int64_t j = 0; j < length; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < entry_dim; ++c)
          dot += static_cast<double>(q_head[c]) * entries[j][c];
        scores[j] = dot * shape.softmax_scale;
        max_score = std::max(max_score, scores[j]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < length; ++j) {
        const double p = std::exp(scores[j] - max_score);
        sum += p;
        for (int64_t c = 0; c < kv_lora; ++c) acc[c] += p * entries[j][c];
      }
      float* out_head = out + (r * heads + h) * kv_lora;  // [kv_lora]
      for (int64_t c = 0; c < kv_lora; ++c) out_head[c] = static_cast<float>(acc[c] / sum);
    }
  }
}

}  // namespace frugal::cpu
