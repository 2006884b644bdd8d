// RoPE / YaRN: the V3 numbers of spec §1.4, the attention-factor rule, the interleaved pairing and
// its equivalence with transformers' half-split layout, rotation and transpose properties.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/error.h"
#include "gradcheck.h"
#include "kernels/rope/rope.h"

namespace frugal {
namespace {

using testing::fill_normal;

ModelConfig v3_config() {
  ModelConfig cfg;  // defaults are V3's sizes
  cfg.rope_scaling.type = "yarn";
  cfg.rope_scaling.factor = 40;
  cfg.rope_scaling.beta_fast = 32;
  cfg.rope_scaling.beta_slow = 1;
  cfg.rope_scaling.mscale = 1.0;
  cfg.rope_scaling.mscale_all_dim = 1.0;
  cfg.rope_scaling.original_max_position_embeddings = 4096;
  return cfg;
}

double base_freq(int64_t i, int64_t dim, double theta) {
  return std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
}

TEST(Rope, V3YarnCorrectionRangeAndFrequencies) {
  ModelConfig cfg = v3_config();
  YarnRange range = yarn_correction_range(cfg);
  EXPECT_EQ(range.low, 10.0);
  EXPECT_EQ(range.high, 23.0);
  std::vector<double> f = rope_inv_freq(cfg);
  ASSERT_EQ(f.size(), 32u);
  for (int64_t i = 0; i < 32; ++i) {
    double base = base_freq(i, 64, 10000.0);
    if (i <= 10) {
      EXPECT_NEAR(f[i], base, 1e-15 * base) << "pair " << i << " must keep its frequency";
    } else if (i >= 23) {
      EXPECT_NEAR(f[i], base / 40, 1e-15 * base) << "pair " << i << " must be divided by 40";
    } else {
      double ramp = (static_cast<double>(i) - 10.0) / 13.0;
      EXPECT_NEAR(f[i], base / 40 * ramp + base * (1 - ramp), 1e-15 * base) << "pair " << i;
      EXPECT_LT(f[i], base);
      EXPECT_GT(f[i], base / 40);
    }
  }
  // DeepSeek's configs: mscale = mscale_all_dim, so cos/sin are not scaled.
  EXPECT_DOUBLE_EQ(rope_attention_factor(cfg), 1.0);
  EXPECT_NEAR(cfg.softmax_scale(), 0.1352338, 5e-8);
  EXPECT_NEAR(ModelConfig::yarn_mscale(40, 1.0), 1.368888, 1e-6);
}

TEST(Rope, PlainRopeUsesBaseFrequenciesAndNoFactor) {
  ModelConfig cfg;
  cfg.qk_rope_head_dim = 16;
  cfg.rope_theta = 500.0;
  std::vector<double> f = rope_inv_freq(cfg);
  ASSERT_EQ(f.size(), 8u);
  for (int64_t i = 0; i < 8; ++i) EXPECT_DOUBLE_EQ(f[i], base_freq(i, 16, 500.0));
  EXPECT_EQ(rope_attention_factor(cfg), 1.0);
  EXPECT_DOUBLE_EQ(cfg.softmax_scale(), 1.0 / std::sqrt(128.0 + 16.0));
  EXPECT_THROW(yarn_correction_range(cfg), Error);
}

TEST(Rope, YarnAttentionFactorFollowsTransformers) {
  ModelConfig cfg = v3_config();
  // V2-Lite: mscale = mscale_all_dim = 0.707 -> ratio 1.
  cfg.rope_scaling.mscale = 0.707;
  cfg.rope_scaling.mscale_all_dim = 0.707;
  EXPECT_DOUBLE_EQ(rope_attention_factor(cfg), 1.0);
  // Both given and different: the ratio.
  cfg.rope_scaling.mscale = 1.0;
  cfg.rope_scaling.mscale_all_dim = 0.707;
  double ratio = (0.1 * std::log(40.0) + 1) / (0.1 * 0.707 * std::log(40.0) + 1);
  EXPECT_NEAR(rope_attention_factor(cfg), ratio, 1e-15);
  // mscale_all_dim absent (0): transformers' generic YaRN factor 0.1 ln s + 1, whatever mscale is.
  cfg.rope_scaling.mscale = 0.5;
  cfg.rope_scaling.mscale_all_dim = 0.0;
  EXPECT_NEAR(rope_attention_factor(cfg), 0.1 * std::log(40.0) + 1, 1e-15);
  // factor <= 1: mscale is 1 whatever m is.
  cfg.rope_scaling.factor = 1.0;
  EXPECT_DOUBLE_EQ(rope_attention_factor(cfg), 1.0);
  // The table carries the factor on cos and sin.
  cfg.rope_scaling.factor = 40;
  cfg.qk_rope_head_dim = 8;
  RopeTable table = make_rope_table(cfg, 7);
  const double af = 0.1 * std::log(40.0) + 1;
  EXPECT_NEAR(table.attention_factor, af, 1e-15);
  for (int64_t p = 0; p < 7; ++p)
    for (int64_t i = 0; i < 4; ++i) {
      double angle = static_cast<double>(p) * table.inv_freq[i];
      EXPECT_NEAR(table.cos[p * 4 + i], af * std::cos(angle), 1e-14);
      EXPECT_NEAR(table.sin[p * 4 + i], af * std::sin(angle), 1e-14);
    }
}

TEST(Rope, EmptyCorrectionRangeUsesTheSingularityGuard) {
  // original length 1: both correction dims are in (-1, 0], so low = high = 0 and transformers
  // sets high = 0.001: pair 0 keeps its frequency, every other pair is divided by the factor.
  ModelConfig cfg = v3_config();
  cfg.qk_rope_head_dim = 8;
  cfg.rope_scaling.factor = 4;
  cfg.rope_scaling.original_max_position_embeddings = 1;
  YarnRange range = yarn_correction_range(cfg);
  EXPECT_EQ(range.low, 0.0);
  EXPECT_EQ(range.high, 0.0);
  std::vector<double> f = rope_inv_freq(cfg);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  for (int64_t i = 1; i < 4; ++i) EXPECT_NEAR(f[i], base_freq(i, 8, 10000.0) / 4, 1e-18);
}

TEST(Rope, RejectsBadConfigsAndPositions) {
  ModelConfig cfg;
  cfg.qk_rope_head_dim = 7;
  EXPECT_THROW(make_rope_table(cfg, 4), Error);
  cfg.qk_rope_head_dim = 8;
  cfg.rope_scaling.type = "dynamic";
  EXPECT_THROW(make_rope_table(cfg, 4), Error);
  cfg.rope_scaling.type = "none";
  RopeTable table = make_rope_table(cfg, 4);
  std::vector<double> x(8);
  int32_t too_far = 4;
  EXPECT_THROW(cpu::rope_fwd(x.data(), table, &too_far, 1, 1, 8, 0), Error);
  int32_t ok = 3;
  EXPECT_THROW(cpu::rope_fwd(x.data(), table, &ok, 1, 1, 8, 1), Error);  // does not fit
}

// Small YaRN config with a nontrivial ramp and an attention factor != 1.
ModelConfig small_yarn_config(double mscale_all_dim) {
  ModelConfig cfg = v3_config();
  cfg.qk_rope_head_dim = 8;
  cfg.rope_theta = 100.0;
  cfg.rope_scaling.factor = 4;
  cfg.rope_scaling.original_max_position_embeddings = 64;
  cfg.rope_scaling.mscale_all_dim = mscale_all_dim;
  return cfg;
}

TEST(Rope, InterleavedPairingRotatesOnlyTheRopePart) {
  ModelConfig cfg = small_yarn_config(1.0);
  const int64_t tokens = 3, heads = 2, stride = 11, offset = 2, pairs = 4;
  RopeTable table = make_rope_table(cfg, 20);
  std::vector<int32_t> pos = {0, 7, 19};
  std::vector<double> x(tokens * heads * stride), y;
  fill_normal(x, 11);
  y = x;
  cpu::rope_fwd(y.data(), table, pos.data(), tokens, heads, stride, offset);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      const double* xi = x.data() + (t * heads + h) * stride;
      const double* yi = y.data() + (t * heads + h) * stride;
      double norm_x = 0, norm_y = 0;
      for (int64_t d = 0; d < stride; ++d) {
        if (d < offset || d >= offset + 8) {
          EXPECT_EQ(yi[d], xi[d]) << "element " << d;
        }
      }
      for (int64_t i = 0; i < pairs; ++i) {
        double angle = pos[t] * table.inv_freq[i];
        double x0 = xi[offset + 2 * i], x1 = xi[offset + 2 * i + 1];
        EXPECT_NEAR(yi[offset + 2 * i], x0 * std::cos(angle) - x1 * std::sin(angle), 1e-14);
        EXPECT_NEAR(yi[offset + 2 * i + 1], x0 * std::sin(angle) + x1 * std::cos(angle), 1e-14);
        norm_x += x0 * x0 + x1 * x1;
        norm_y += yi[offset + 2 * i] * yi[offset + 2 * i] +
                  yi[offset + 2 * i + 1] * yi[offset + 2 * i + 1];
      }
      EXPECT_NEAR(norm_y, norm_x, 1e-12 * norm_x) << "a rotation preserves the norm";
    }
}

TEST(Rope, BackwardIsTheExactTranspose) {
  for (double mscale_all_dim : {1.0, 0.707}) {  // attention factor 1, then != 1
    ModelConfig cfg = small_yarn_config(mscale_all_dim);
    const int64_t tokens = 5, heads = 3, stride = 12, offset = 4;
    RopeTable table = make_rope_table(cfg, 40);
    std::vector<int32_t> pos = {0, 3, 17, 39, 3};
    std::vector<double> x(tokens * heads * stride), g(x.size());
    fill_normal(x, 21);
    fill_normal(g, 22);
    std::vector<double> rx = x, rg = g;
    cpu::rope_fwd(rx.data(), table, pos.data(), tokens, heads, stride, offset);
    cpu::rope_bwd(rg.data(), table, pos.data(), tokens, heads, stride, offset);
    double lhs = 0, rhs = 0;  // <R x, g> = <x, R^T g>
    for (size_t i = 0; i < x.size(); ++i) {
      lhs += rx[i] * g[i];
      rhs += x[i] * rg[i];
    }
    EXPECT_NEAR(lhs, rhs, 1e-12 * std::fabs(lhs)) << "mscale_all_dim " << mscale_all_dim;
    if (mscale_all_dim == 1.0) {  // pure rotation: bwd undoes fwd
      cpu::rope_bwd(rx.data(), table, pos.data(), tokens, heads, stride, offset);
      for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(rx[i], x[i], 1e-13);
    }
  }
}

TEST(Rope, MatchesHalfSplitLayoutAfterTransformersPermutation) {
  // transformers (rope_interleave=True) permutes each rope part: p[j] = x[2j], p[d/2+j] = x[2j+1],
  // then applies p*cos(cat(f,f)) + rotate_half(p)*sin(cat(f,f)). That must equal P(interleaved(x)).
  ModelConfig cfg = small_yarn_config(0.707);
  const int64_t d = 8, half = 4, tokens = 4;
  RopeTable table = make_rope_table(cfg, 30);
  std::vector<int32_t> pos = {0, 1, 13, 29};
  std::vector<double> x(tokens * d);
  fill_normal(x, 31);
  std::vector<double> rotated = x;
  cpu::rope_fwd(rotated.data(), table, pos.data(), tokens, 1, d, 0);
  for (int64_t t = 0; t < tokens; ++t) {
    const double* xt = x.data() + t * d;
    std::vector<double> p(d), rot_half(d), expected(d);
    for (int64_t j = 0; j < half; ++j) {
      p[j] = xt[2 * j];
      p[half + j] = xt[2 * j + 1];
    }
    for (int64_t j = 0; j < half; ++j) {
      rot_half[j] = -p[half + j];
      rot_half[half + j] = p[j];
    }
    for (int64_t j = 0; j < d; ++j) {
      double angle = pos[t] * table.inv_freq[j % half];
      expected[j] =
          table.attention_factor * (p[j] * std::cos(angle) + rot_half[j] * std::sin(angle));
    }
    for (int64_t j = 0; j < half; ++j) {
      EXPECT_NEAR(rotated[t * d + 2 * j], expected[j], 1e-13);
      EXPECT_NEAR(rotated[t * d + 2 * j + 1], expected[half + j], 1e-13);
    }
  }
}

TEST(Rope, FloatAgreesWithDouble) {
  ModelConfig cfg = v3_config();
  cfg.qk_rope_head_dim = 64;
  RopeTable table = make_rope_table(cfg, 5000);
  std::vector<int32_t> pos = {0, 1, 4095, 4999};
  std::vector<double> xd(4 * 2 * 64);
  fill_normal(xd, 41);
  std::vector<float> xf(xd.begin(), xd.end());
  cpu::rope_fwd(xd.data(), table, pos.data(), 4, 2, 64, 0);
  cpu::rope_fwd(xf.data(), table, pos.data(), 4, 2, 64, 0);
  for (size_t i = 0; i < xd.size(); ++i) EXPECT_NEAR(xf[i], xd[i], 2e-6 * (1 + std::fabs(xd[i])));
}

}  // namespace
}  // namespace frugal
