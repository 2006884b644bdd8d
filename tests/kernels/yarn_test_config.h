// DeepSeek-V3's YaRN RoPE settings (spec §1.5: factor 40, beta 32 / 1, mscale 1, original 4096
// positions) in a ModelConfig with the given rope head dim and mscale_all_dim, for the RoPE tests
// (an mscale_all_dim other than mscale makes the table carry an attention factor != 1).
#pragma once

#include <cstdint>

#include "model/config.h"

namespace frugal::testing {

inline ModelConfig v3_yarn_config(int64_t rope_dim, double mscale_all_dim) {
  ModelConfig cfg;
  cfg.qk_rope_head_dim = rope_dim;
  cfg.rope_scaling.type = "yarn";
  cfg.rope_scaling.factor = 40;
  cfg.rope_scaling.beta_fast = 32;
  cfg.rope_scaling.beta_slow = 1;
  cfg.rope_scaling.mscale = 1.0;
  cfg.rope_scaling.mscale_all_dim = mscale_all_dim;
  cfg.rope_scaling.original_max_position_embeddings = 4096;
  return cfg;
}

}  // namespace frugal::testing
