// CPU references of the MLA glue (see mla_glue.h for the computation and the rounding rules).
// Each fp32 operation is done in double and rounded to float: exact for products of two floats
// and correctly rounded for sums (double has more than 2 * 24 + 2 bits), so the results are the
// device's __fmul_rn / __fadd_rn / __fsub_rn whatever the host compiler contracts.
#include <vector>

#include "core/error.h"
#include "kernels/attention/mla_glue.h"

namespace frugal::cpu {
namespace {

float stored(float x, DType storage) {
  return storage == DType::BF16 ? round_to_bf16(x) : x;
}

float mul(float a, float b) {
  return static_cast<float>(static_cast<double>(a) * static_cast<double>(b));
}
float add(float a, float b) {
  return static_cast<float>(static_cast<double>(a) + static_cast<double>(b));
}
float sub(float a, float b) {
  return static_cast<float>(static_cast<double>(a) - static_cast<double>(b));
}

void check_storage(DType storage) {
  FRUGAL_CHECK(storage == DType::F32 || storage == DType::BF16,
               "mla glue: storage must be F32 or BF16, got {}", dtype_name(storage));
}

void check_dims(const MlaHeadDims& d, int64_t rows) {
  FRUGAL_CHECK(rows >= 0 && d.heads > 0 && d.nope >= 0 && d.rope > 0 && d.rope % 2 == 0 && d.v > 0,
               "mla glue: bad sizes (rows {}, heads {}, nope {}, rope {}, v {})", rows, d.heads,
               d.nope, d.rope, d.v);
}

void check_positions(const MlaRope& rope, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r)
    FRUGAL_CHECK(rope.positions[r] >= 0 && rope.positions[r] < rope.table_positions,
                 "mla glue: position {} of row {} is outside the table's {} positions",
                 rope.positions[r], r, rope.table_positions);
}

// One pair of row `row`'s rotated range: x0' = x0 c - x1 s, x1' = x0 s + x1 c, s = sign * sin.
void rotate_pair(float& x0, float& x1, const MlaRope& rope, int64_t rope_dim, int64_t row,
                 int64_t pair, bool backward) {
  const int64_t index = static_cast<int64_t>(rope.positions[row]) * (rope_dim / 2) + pair;
  const float c = rope.cos[index];
  const float s = backward ? -rope.sin[index] : rope.sin[index];
  const float r0 = sub(mul(x0, c), mul(x1, s));
  const float r1 = add(mul(x0, s), mul(x1, c));
  x0 = r0;
  x1 = r1;
}

}  // namespace

void rope_rotate_fp32_table(float* x, const MlaRope& rope, int64_t tokens, int64_t heads,
                            int64_t head_stride, int64_t rope_offset, int64_t rope_dim,
                            bool backward, DType storage) {
  check_storage(storage);
  FRUGAL_CHECK(rope_dim > 0 && rope_dim % 2 == 0 && rope_offset >= 0 &&
                   rope_offset + rope_dim <= head_stride && tokens >= 0 && heads >= 0,
               "rope_rotate_fp32_table: bad layout (rope {}, offset {}, head stride {})", rope_dim,
               rope_offset, head_stride);
  check_positions(rope, tokens);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      float* part = x + (t * heads + h) * head_stride + rope_offset;
      for (int64_t i = 0; i < rope_dim / 2; ++i) {
        rotate_pair(part[2 * i], part[2 * i + 1], rope, rope_dim, t, i, backward);
        part[2 * i] = stored(part[2 * i], storage);
        part[2 * i + 1] = stored(part[2 * i + 1], storage);
      }
    }
}

void mla_split_kv(float* k, float* v, const float* kv_b, const float* k_pe, int64_t k_pe_ld,
                  const MlaRope& rope, int64_t rows, const MlaHeadDims& d, DType storage) {
  check_storage(storage);
  check_dims(d, rows);
  FRUGAL_CHECK(rows <= 1 || k_pe_ld >= d.rope, "mla_split_kv: k_pe row stride {} < rope {}",
               k_pe_ld, d.rope);
  check_positions(rope, rows);
  const int64_t qk = d.nope + d.rope, kv_b_head = d.nope + d.v;
  std::vector<float> rotated(static_cast<size_t>(d.rope));  // [rope]
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d.rope; ++j) rotated[j] = k_pe[r * k_pe_ld + j];
    rope_rotate_fp32_table(rotated.data(),
                           MlaRope{rope.cos, rope.sin, rope.table_positions, rope.positions + r}, 1,
                           1, d.rope, 0, d.rope, false, storage);
    for (int64_t h = 0; h < d.heads; ++h) {
      const float* src = kv_b + (r * d.heads + h) * kv_b_head;
      float* k_head = k + (r * d.heads + h) * qk;
      float* v_head = v + (r * d.heads + h) * d.v;
      for (int64_t j = 0; j < d.nope; ++j) k_head[j] = src[j];
      for (int64_t j = 0; j < d.rope; ++j) k_head[d.nope + j] = rotated[j];
      for (int64_t j = 0; j < d.v; ++j) v_head[j] = src[d.nope + j];
    }
  }
}

void mla_merge_kv_grad(float* d_kv_b, float* d_k_pe, int64_t d_k_pe_ld, const float* dk,
                       const float* dv, const MlaRope& rope, int64_t rows, const MlaHeadDims& d,
                       DType storage) {
  check_storage(storage);
  check_dims(d, rows);
  FRUGAL_CHECK(rows <= 1 || d_k_pe_ld >= d.rope,
               "mla_merge_kv_grad: d_k_pe row stride {} < rope {}", d_k_pe_ld, d.rope);
  check_positions(rope, rows);
  const int64_t qk = d.nope + d.rope, kv_b_head = d.nope + d.v;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < d.heads; ++h) {
      float* out = d_kv_b + (r * d.heads + h) * kv_b_head;
      const float* dk_head = dk + (r * d.heads + h) * qk;
      const float* dv_head = dv + (r * d.heads + h) * d.v;
      for (int64_t j = 0; j < d.nope; ++j) out[j] = dk_head[j];
      for (int64_t j = 0; j < d.v; ++j) out[d.nope + j] = dv_head[j];
    }
    float* row_out = d_k_pe + r * d_k_pe_ld;
    for (int64_t j = 0; j < d.rope; ++j) {
      float sum = 0.0f;  // heads in order, fp32
      for (int64_t h = 0; h < d.heads; ++h) sum = add(sum, dk[(r * d.heads + h) * qk + d.nope + j]);
      row_out[j] = stored(sum, storage);
    }
    rope_rotate_fp32_table(row_out,
                           MlaRope{rope.cos, rope.sin, rope.table_positions, rope.positions + r}, 1,
                           1, d.rope, 0, d.rope, true, storage);
  }
}

}  // namespace frugal::cpu
