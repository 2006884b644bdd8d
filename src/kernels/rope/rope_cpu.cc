// RoPE / YaRN table builder and the CPU reference rotation (see rope.h for the formulas).
#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "kernels/rope/rope.h"

namespace frugal {
namespace {

bool is_yarn(const ModelConfig& cfg) {
  const std::string& type = cfg.rope_scaling.type;
  FRUGAL_CHECK(type == "none" || type == "yarn",
               "model.rope_scaling.type: unsupported value '{}' (expected \"yarn\" or none)", type);
  return type == "yarn";
}

void check_rope_dim(const ModelConfig& cfg) {
  FRUGAL_CHECK(cfg.qk_rope_head_dim > 0 && cfg.qk_rope_head_dim % 2 == 0,
               "model.qk_rope_head_dim: must be a positive even number, got {}",
               cfg.qk_rope_head_dim);
  FRUGAL_CHECK(cfg.rope_theta > 1.0, "model.rope_theta: must be > 1, got {}", cfg.rope_theta);
}

// Dimension whose wavelength makes `rotations` full turns over the original context length.
double correction_dim(double rotations, double rope_dim, double theta, double original_length) {
  return rope_dim * std::log(original_length / (rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(theta));
}

}  // namespace

YarnRange yarn_correction_range(const ModelConfig& cfg) {
  check_rope_dim(cfg);
  FRUGAL_CHECK(is_yarn(cfg), "yarn_correction_range: model.rope_scaling.type is '{}', not yarn",
               cfg.rope_scaling.type);
  const RopeScaling& rs = cfg.rope_scaling;
  FRUGAL_CHECK(rs.original_max_position_embeddings > 0,
               "model.rope_scaling.original_max_position_embeddings: must be > 0, got {}",
               rs.original_max_position_embeddings);
  FRUGAL_CHECK(rs.beta_fast > 0 && rs.beta_slow > 0,
               "model.rope_scaling.beta_fast/beta_slow: must be > 0, got {} / {}", rs.beta_fast,
               rs.beta_slow);
  const double dim = static_cast<double>(cfg.qk_rope_head_dim);
  const double length = static_cast<double>(rs.original_max_position_embeddings);
  YarnRange range;
  range.low = std::floor(correction_dim(rs.beta_fast, dim, cfg.rope_theta, length));
  range.high = std::ceil(correction_dim(rs.beta_slow, dim, cfg.rope_theta, length));
  range.low = std::max(range.low, 0.0);
  range.high = std::min(range.high, dim - 1.0);  // transformers clamps to dim-1, not dim/2-1
  return range;
}

std::vector<double> rope_inv_freq(const ModelConfig& cfg) {
  check_rope_dim(cfg);
  const int64_t pairs = cfg.qk_rope_head_dim / 2;
  const double dim = static_cast<double>(cfg.qk_rope_head_dim);
  std::vector<double> inv_freq(static_cast<size_t>(pairs));
  for (int64_t i = 0; i < pairs; ++i)
    inv_freq[i] = std::pow(cfg.rope_theta, -2.0 * static_cast<double>(i) / dim);
  if (!is_yarn(cfg)) return inv_freq;

  const double factor = cfg.rope_scaling.factor;
  FRUGAL_CHECK(factor > 0, "model.rope_scaling.factor: must be > 0, got {}", factor);
  YarnRange range = yarn_correction_range(cfg);
  if (range.low == range.high) range.high += 0.001;  // transformers' guard against 0/0
  for (int64_t i = 0; i < pairs; ++i) {
    double ramp = (static_cast<double>(i) - range.low) / (range.high - range.low);
    ramp = std::clamp(ramp, 0.0, 1.0);
    // ramp = 1: interpolated (freq / s); ramp = 0: extrapolated (freq kept).
    inv_freq[i] = inv_freq[i] / factor * ramp + inv_freq[i] * (1.0 - ramp);
  }
  return inv_freq;
}

double rope_attention_factor(const ModelConfig& cfg) {
  if (!is_yarn(cfg)) return 1.0;
  const RopeScaling& rs = cfg.rope_scaling;
  if (rs.mscale != 0.0 && rs.mscale_all_dim != 0.0)
    return ModelConfig::yarn_mscale(rs.factor, rs.mscale) /
           ModelConfig::yarn_mscale(rs.factor, rs.mscale_all_dim);
  return ModelConfig::yarn_mscale(rs.factor, 1.0);
}

RopeTable make_rope_table(const ModelConfig& cfg, int64_t positions) {
  FRUGAL_CHECK(positions >= 0, "make_rope_table: negative number of positions {}", positions);
  RopeTable table;
  table.rope_dim = cfg.qk_rope_head_dim;
  table.positions = positions;
  table.inv_freq = rope_inv_freq(cfg);
  table.attention_factor = rope_attention_factor(cfg);
  const int64_t pairs = table.rope_dim / 2;
  table.cos.resize(static_cast<size_t>(positions * pairs));
  table.sin.resize(static_cast<size_t>(positions * pairs));
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < pairs; ++i) {
      double angle = static_cast<double>(p) * table.inv_freq[i];
      table.cos[p * pairs + i] = std::cos(angle) * table.attention_factor;
      table.sin[p * pairs + i] = std::sin(angle) * table.attention_factor;
    }
  }
  return table;
}

namespace cpu {
namespace {

void check_rope_args(const RopeTable& table, const int32_t* positions, int64_t tokens,
                     int64_t head_stride, int64_t rope_offset) {
  FRUGAL_CHECK(rope_offset >= 0 && rope_offset + table.rope_dim <= head_stride,
               "rope: rotated range [{}, {}) does not fit in a head of {} elements", rope_offset,
               rope_offset + table.rope_dim, head_stride);
  for (int64_t t = 0; t < tokens; ++t)
    FRUGAL_CHECK(positions[t] >= 0 && positions[t] < table.positions,
                 "rope: position {} of token {} is outside the table's {} positions", positions[t],
                 t, table.positions);
}

// sign = +1: forward rotation by +angle; sign = -1: the transpose (rotation by -angle).
template <class T>
void rotate(T* x, const RopeTable& table, const int32_t* positions, int64_t tokens, int64_t heads,
            int64_t head_stride, int64_t rope_offset, double sign) {
  check_rope_args(table, positions, tokens, head_stride, rope_offset);
  const int64_t pairs = table.rope_dim / 2;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const double* cos_row = table.cos.data() + static_cast<int64_t>(positions[t]) * pairs;
    const double* sin_row = table.sin.data() + static_cast<int64_t>(positions[t]) * pairs;
    for (int64_t h = 0; h < heads; ++h) {
      T* part = x + (t * heads + h) * head_stride + rope_offset;  // [pairs, 2]
      for (int64_t i = 0; i < pairs; ++i) {
        const T c = static_cast<T>(cos_row[i]);
        const T s = static_cast<T>(sign * sin_row[i]);
        const T x0 = part[2 * i], x1 = part[2 * i + 1];
        part[2 * i] = x0 * c - x1 * s;
        part[2 * i + 1] = x0 * s + x1 * c;
      }
    }
  }
}

}  // namespace

template <class T>
void rope_fwd(T* x, const RopeTable& table, const int32_t* positions, int64_t tokens, int64_t heads,
              int64_t head_stride, int64_t rope_offset) {
  rotate(x, table, positions, tokens, heads, head_stride, rope_offset, 1.0);
}

template <class T>
void rope_bwd(T* grad, const RopeTable& table, const int32_t* positions, int64_t tokens,
              int64_t heads, int64_t head_stride, int64_t rope_offset) {
  rotate(grad, table, positions, tokens, heads, head_stride, rope_offset, -1.0);
}

#define INSTANTIATE(T)                                                                       \
  template void rope_fwd<T>(T*, const RopeTable&, const int32_t*, int64_t, int64_t, int64_t, \
                            int64_t);                                                        \
  template void rope_bwd<T>(T*, const RopeTable&, const int32_t*, int64_t, int64_t, int64_t, \
                            int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace cpu
}  // namespace frugal
