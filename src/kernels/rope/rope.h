// Rotary position embedding (RoPE) with optional YaRN frequency correction, as MLA uses it
// (spec §1.4): only the last qk_rope_head_dim dims of each query head, and the shared k_pe.
//
// Frequencies, pair i in [0, rope_dim/2):
//   base  freq_i = theta^(-2i/rope_dim)
//   YaRN  freq_i' = freq_i/s * ramp_i + freq_i * (1 - ramp_i),
//         ramp_i = clamp((i - low) / (high - low), 0, 1),
//         low  = max(floor(corr_dim(beta_fast)), 0),
//         high = min(ceil(corr_dim(beta_slow)), rope_dim - 1), high += 0.001 when low == high,
//         corr_dim(r) = rope_dim * ln(L0 / (2 pi r)) / (2 ln theta),
//         L0 = rope_scaling.original_max_position_embeddings
//         (transformers' _compute_yarn_parameters; s = rope_scaling.factor).
//   cos/sin of the table are multiplied by the YaRN attention factor (rope_attention_factor below).
//
// Application, INTERLEAVED pairing (2i, 2i+1) as DeepSeek's released code, angle = pos * freq_i:
//   x0' = x0 cos - x1 sin,   x1' = x0 sin + x1 cos          (rope_fwd, in place)
//   g0' = g0 cos + g1 sin,   g1' = -g0 sin + g1 cos         (rope_bwd: the transpose, in place)
// Tensors are x[tokens, heads, head_stride]; elements [rope_offset, rope_offset + rope_dim) of each
// head are rotated, the others are left alone. The table is in double; rotation runs in T.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace frugal {

struct RopeTable {
  int64_t rope_dim = 0;
  int64_t positions = 0;          // rows of the table: positions 0 .. positions-1
  double attention_factor = 1.0;  // already folded into cos and sin
  std::vector<double> inv_freq;   // [rope_dim/2]
  std::vector<double> cos, sin;   // [positions, rope_dim/2]
};

// The YaRN correction range (low, high) as transformers computes it (floored/ceiled and clamped,
// before the +0.001 of an empty range). Throws when the config's rope_scaling is not YaRN.
struct YarnRange {
  double low = 0, high = 0;
};
YarnRange yarn_correction_range(const ModelConfig& cfg);

// inv_freq[i], i in [0, qk_rope_head_dim/2), YaRN-blended when rope_scaling.type is "yarn".
std::vector<double> rope_inv_freq(const ModelConfig& cfg);

// The factor on cos/sin (transformers' `attention_factor`): 1 without YaRN. Under YaRN:
//   mscale(s, mscale) / mscale(s, mscale_all_dim)   when both are nonzero (1 in DeepSeek's),
//   mscale(s, 1) = 0.1 ln s + 1                     otherwise (transformers' generic YaRN),
// with mscale(s, m) = ModelConfig::yarn_mscale. (A config "attention_factor" key, which
// transformers would take as is, has no field in RopeScaling.)
double rope_attention_factor(const ModelConfig& cfg);

// Table for positions 0 .. positions-1. Throws frugal::Error on an odd or empty rope dim or an
// unknown rope_scaling.type.
RopeTable make_rope_table(const ModelConfig& cfg, int64_t positions);

namespace cpu {

// x[tokens, heads, head_stride] rotated in place; positions[tokens] index the table's rows.
template <class T>
void rope_fwd(T* x, const RopeTable& table, const int32_t* positions, int64_t tokens, int64_t heads,
              int64_t head_stride, int64_t rope_offset);
// The transposed rotation, applied in place to a gradient of the same layout.
template <class T>
void rope_bwd(T* grad, const RopeTable& table, const int32_t* positions, int64_t tokens,
              int64_t heads, int64_t head_stride, int64_t rope_offset);

}  // namespace cpu
}  // namespace frugal
