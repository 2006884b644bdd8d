// MLA module: Hugging Face names and shapes, forward against a per-token reference written from
// spec §1.4, finite-difference gradients of x and every parameter (with and without query
// compression, with and without YaRN), causality, the deferred weight-gradient contract,
// relative-position invariance, and float/double agreement.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include "core/error.h"
#include "gradcheck.h"
#include "model/mla.h"

namespace frugal {
namespace {

using testing::check_gradient;
using testing::fill_normal;
using testing::weighted_sum;

const std::string kPrefix = "model.layers.3.self_attn";

ModelConfig small_config(bool q_lora, bool yarn) {
  ModelConfig cfg;
  cfg.hidden_size = 12;
  cfg.num_attention_heads = 3;
  cfg.q_lora_rank = q_lora ? 10 : 0;
  cfg.kv_lora_rank = 8;
  cfg.qk_nope_head_dim = 4;
  cfg.qk_rope_head_dim = 8;
  cfg.v_head_dim = 5;  // differs from nope, so a k_nope/v mix-up changes shapes and values
  cfg.rope_theta = 100.0;
  if (yarn) {
    cfg.rope_scaling.type = "yarn";
    cfg.rope_scaling.factor = 4;
    cfg.rope_scaling.original_max_position_embeddings = 64;  // ramp over pairs 0..3 nontrivial
    cfg.rope_scaling.mscale = 1.0;
    cfg.rope_scaling.mscale_all_dim = 0.707;  // cos/sin factor != 1, softmax scale changed
  }
  return cfg;
}

// Matrices ~ N(0, 1/in), norm weights ~ 1 + N(0, 0.3^2).
template <class T>
void init_params(ParamStore<T>& store, uint64_t seed) {
  uint64_t k = 0;
  for (auto& p : store.all()) {
    std::vector<double> v(p->value.size());
    bool is_norm = p->shape.size() == 1;
    fill_normal(v, seed + 100 * ++k, is_norm ? 0.3 : 1.0 / std::sqrt(double(p->shape[1])));
    for (size_t i = 0; i < v.size(); ++i) p->value[i] = static_cast<T>(is_norm ? 1.0 + v[i] : v[i]);
  }
}

// ---- A per-token reference from spec §1.4, sharing only the weights and the RoPE table. ----

std::vector<double> matvec(ParamStore<double>& store, const std::string& name, const double* x) {
  Param<double>& w = store.get(kPrefix + "." + name + ".weight");
  int64_t out = w.shape[0], in = w.shape[1];
  std::vector<double> y(out, 0.0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) y[o] += w.value[o * in + i] * x[i];
  return y;
}

std::vector<double> rms_norm(ParamStore<double>& store, const std::string& name,
                             std::vector<double> x, double eps) {
  Param<double>& w = store.get(kPrefix + "." + name + ".weight");
  double ms = 0;
  for (double v : x) ms += v * v;
  double r = 1.0 / std::sqrt(ms / double(x.size()) + eps);
  for (size_t i = 0; i < x.size(); ++i) x[i] *= r * w.value[i];
  return x;
}

// Complex multiplication of adjacent pairs by af * exp(i pos freq).
void rotate_pairs(double* x, int64_t rope_dim, int64_t pos, const ModelConfig& cfg) {
  std::vector<double> f = rope_inv_freq(cfg);
  double af = rope_attention_factor(cfg);
  for (int64_t i = 0; i < rope_dim / 2; ++i) {
    double c = af * std::cos(double(pos) * f[i]), s = af * std::sin(double(pos) * f[i]);
    double re = x[2 * i], im = x[2 * i + 1];
    x[2 * i] = re * c - im * s;
    x[2 * i + 1] = re * s + im * c;
  }
}

std::vector<double> reference_mla(ParamStore<double>& store, const ModelConfig& cfg,
                                  const std::vector<double>& x, int64_t batch, int64_t seq) {
  const int64_t H = cfg.num_attention_heads, dn = cfg.qk_nope_head_dim, dr = cfg.qk_rope_head_dim,
                dv = cfg.v_head_dim, dqk = dn + dr, hidden = cfg.hidden_size,
                kvr = cfg.kv_lora_rank;
  std::vector<double> y(batch * seq * hidden);
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<std::vector<double>> q(seq), k(seq), v(seq);  // [t][h * dim]
    for (int64_t t = 0; t < seq; ++t) {
      const double* h = x.data() + (b * seq + t) * hidden;
      if (cfg.q_lora_rank > 0) {
        std::vector<double> c_q =
            rms_norm(store, "q_a_layernorm", matvec(store, "q_a_proj", h), cfg.rms_norm_eps);
        q[t] = matvec(store, "q_b_proj", c_q.data());
      } else {
        q[t] = matvec(store, "q_proj", h);
      }
      for (int64_t head = 0; head < H; ++head) rotate_pairs(&q[t][head * dqk + dn], dr, t, cfg);
      std::vector<double> kv = matvec(store, "kv_a_proj_with_mqa", h);
      std::vector<double> c_kv(kv.begin(), kv.begin() + kvr), k_pe(kv.begin() + kvr, kv.end());
      c_kv = rms_norm(store, "kv_a_layernorm", c_kv, cfg.rms_norm_eps);
      rotate_pairs(k_pe.data(), dr, t, cfg);
      std::vector<double> kv_b = matvec(store, "kv_b_proj", c_kv.data());
      k[t].resize(H * dqk);
      v[t].resize(H * dv);
      for (int64_t head = 0; head < H; ++head) {
        for (int64_t d = 0; d < dn; ++d) k[t][head * dqk + d] = kv_b[head * (dn + dv) + d];
        for (int64_t d = 0; d < dr; ++d) k[t][head * dqk + dn + d] = k_pe[d];
        for (int64_t d = 0; d < dv; ++d) v[t][head * dv + d] = kv_b[head * (dn + dv) + dn + d];
      }
    }
    for (int64_t t = 0; t < seq; ++t) {
      std::vector<double> o(H * dv, 0.0);
      for (int64_t head = 0; head < H; ++head) {
        std::vector<double> e(t + 1);
        double z = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < dqk; ++d) dot += q[t][head * dqk + d] * k[j][head * dqk + d];
          e[j] = std::exp(dot * cfg.softmax_scale());
          z += e[j];
        }
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t d = 0; d < dv; ++d) o[head * dv + d] += e[j] / z * v[j][head * dv + d];
      }
      std::vector<double> out = matvec(store, "o_proj", o.data());
      std::copy(out.begin(), out.end(), y.begin() + (b * seq + t) * hidden);
    }
  }
  return y;
}

// ---- Names and shapes ----

using Expected = std::vector<std::pair<std::string, std::vector<int64_t>>>;

void expect_params(const ParamStore<float>& store, const Expected& expected) {
  ASSERT_EQ(store.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const Param<float>& p = *store.all()[i];
    EXPECT_EQ(p.name, kPrefix + "." + expected[i].first + ".weight");
    EXPECT_EQ(p.shape, expected[i].second) << p.name;
    bool is_norm = expected[i].first.find("layernorm") != std::string::npos;
    EXPECT_EQ(p.weight_decay, !is_norm) << p.name;
    EXPECT_TRUE(p.trainable) << p.name;
    if (is_norm) {
      for (float w : p.value) EXPECT_EQ(w, 1.0f) << p.name;
    }
  }
}

TEST(MLA, RegistersHuggingFaceNamesAndShapes) {
  // V3's layout at small dims: heads 4, q_lora 24, kv_lora 16, nope 8, rope 4, v 6, hidden 64.
  ModelConfig cfg;
  cfg.hidden_size = 64;
  cfg.num_attention_heads = 4;
  cfg.q_lora_rank = 24;
  cfg.kv_lora_rank = 16;
  cfg.qk_nope_head_dim = 8;
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 6;
  {
    ParamStore<float> store;
    MLA<float> mla(store, kPrefix, cfg);
    expect_params(store, {{"q_a_proj", {24, 64}},
                          {"q_a_layernorm", {24}},
                          {"q_b_proj", {4 * 12, 24}},
                          {"kv_a_proj_with_mqa", {16 + 4, 64}},
                          {"kv_a_layernorm", {16}},
                          {"kv_b_proj", {4 * (8 + 6), 16}},
                          {"o_proj", {64, 4 * 6}}});
  }
  cfg.q_lora_rank = 0;  // DeepSeek-V2-Lite: no query compression
  {
    ParamStore<float> store;
    MLA<float> mla(store, kPrefix, cfg);
    expect_params(store, {{"q_proj", {4 * 12, 64}},
                          {"kv_a_proj_with_mqa", {16 + 4, 64}},
                          {"kv_a_layernorm", {16}},
                          {"kv_b_proj", {4 * (8 + 6), 16}},
                          {"o_proj", {64, 4 * 6}}});
  }
}

TEST(MLA, RejectsBadConfigs) {
  ModelConfig cfg = small_config(true, false);
  cfg.qk_rope_head_dim = 5;
  ParamStore<double> store;
  EXPECT_THROW(MLA<double>(store, kPrefix, cfg), Error);
  cfg = small_config(true, false);
  cfg.rope_scaling.type = "linear";
  EXPECT_THROW(MLA<double>(store, kPrefix, cfg), Error);
}

// ---- Numerics, over (q_lora_rank > 0, YaRN) ----

class MLANumerics : public ::testing::TestWithParam<std::tuple<bool, bool>> {
 protected:
  void SetUp() override {
    cfg = small_config(std::get<0>(GetParam()), std::get<1>(GetParam()));
    mla = MLA<double>(store, kPrefix, cfg);
    init_params(store, 17);
    x.resize(batch * seq * cfg.hidden_size);
    fill_normal(x, 5);
  }
  std::string label(const std::string& what) const {
    return std::string(std::get<0>(GetParam()) ? "q_lora" : "q_proj") +
           (std::get<1>(GetParam()) ? " yarn " : " rope ") + what;
  }
  std::vector<double> run(const std::vector<double>& input, const int32_t* positions = nullptr) {
    std::vector<double> y(input.size());
    MLA<double>::Ctx ctx;
    if (positions)
      mla.forward(ctx, input.data(), y.data(), batch, seq, positions);
    else
      mla.forward(ctx, input.data(), y.data(), batch, seq);
    return y;
  }

  const int64_t batch = 2, seq = 5;
  ModelConfig cfg;
  ParamStore<double> store;
  MLA<double> mla;
  std::vector<double> x;
};

TEST_P(MLANumerics, ForwardMatchesPerTokenReference) {
  std::vector<double> y = run(x), ref = reference_mla(store, cfg, x, batch, seq);
  double max_err = 0, max_abs = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    max_err = std::max(max_err, std::fabs(y[i] - ref[i]));
    max_abs = std::max(max_abs, std::fabs(ref[i]));
  }
  EXPECT_GT(max_abs, 0.1);
  EXPECT_LT(max_err, 1e-12 * max_abs);
}

TEST_P(MLANumerics, GradientsMatchFiniteDifferences) {
  std::vector<double> w(x.size()), y(x.size()), dx(x.size(), 123.0);
  fill_normal(w, 6);
  auto loss = [&] { return weighted_sum(run(x), w); };
  store.zero_grad();
  MLA<double>::Ctx ctx;
  mla.forward(ctx, x.data(), y.data(), batch, seq);
  mla.backward_input(ctx, w.data(), dx.data());
  mla.backward_weight(ctx);
  const double eps = 1e-5, floor = 1e-6, tol = 1e-6;
  EXPECT_LT(check_gradient(x, dx, loss, 64, eps, floor, label("dx")).max_rel_error, tol);
  for (auto& p : store.all()) {
    std::string name = p->name.substr(kPrefix.size() + 1);
    EXPECT_LT(
        check_gradient(p->value, p->grad, loss, 64, eps, floor, label("d " + name)).max_rel_error,
        tol)
        << p->name;
  }
}

TEST_P(MLANumerics, OutputAtTIgnoresLaterTokensAndOtherSequences) {
  std::vector<double> y = run(x);
  const int64_t t = 2, hidden = cfg.hidden_size;
  std::vector<double> changed = x;
  for (int64_t pos = t + 1; pos < seq; ++pos)  // sequence 0 only
    for (int64_t d = 0; d < hidden; ++d) changed[pos * hidden + d] += 1.5 + 0.1 * double(d);
  std::vector<double> y2 = run(changed);
  bool later_changed = false;
  for (int64_t row = 0; row < batch * seq; ++row)
    for (int64_t d = 0; d < hidden; ++d) {
      int64_t i = row * hidden + d;
      if (row <= t || row >= seq)
        EXPECT_EQ(y2[i], y[i]) << "row " << row;
      else
        later_changed |= y2[i] != y[i];
    }
  EXPECT_TRUE(later_changed);
}

TEST_P(MLANumerics, BackwardInputLeavesWeightGradientsForBackwardWeight) {
  std::vector<double> w(x.size()), y(x.size()), dx(x.size()), dx2(x.size());
  fill_normal(w, 8);
  store.zero_grad();
  MLA<double>::Ctx ctx;
  mla.forward(ctx, x.data(), y.data(), batch, seq);
  mla.backward_input(ctx, w.data(), dx.data());
  for (auto& p : store.all())
    for (double g : p->grad) ASSERT_EQ(g, 0.0) << p->name << " touched by backward_input";
  mla.backward_weight(ctx);
  std::vector<std::vector<double>> once;
  for (auto& p : store.all()) {
    double norm = 0;
    for (double g : p->grad) norm += g * g;
    EXPECT_GT(norm, 0.0) << p->name;
    once.push_back(p->grad);
  }
  EXPECT_TRUE(ctx.q.empty() && ctx.probs.empty() && ctx.o_proj.x.empty());
  // A second micro-batch accumulates: grads double, dx is assigned again.
  mla.forward(ctx, x.data(), y.data(), batch, seq);
  mla.backward_input(ctx, w.data(), dx2.data());
  mla.backward_weight(ctx);
  EXPECT_EQ(dx, dx2);
  for (size_t k = 0; k < store.all().size(); ++k)
    for (size_t i = 0; i < once[k].size(); ++i)
      EXPECT_NEAR(store.all()[k]->grad[i], 2 * once[k][i], 1e-12 * (1 + std::fabs(once[k][i])));
}

TEST_P(MLANumerics, ExplicitPositionsAndRelativeInvariance) {
  std::vector<double> y = run(x);
  std::vector<int32_t> positions(batch * seq);
  for (int64_t r = 0; r < batch * seq; ++r) positions[r] = static_cast<int32_t>(r % seq);
  EXPECT_EQ(run(x, positions.data()), y);
  // RoPE scores depend on position differences only: shifting every position leaves y unchanged
  // up to rounding; a non-uniform shift changes it.
  for (int64_t r = 0; r < batch * seq; ++r) positions[r] = static_cast<int32_t>(r % seq + 37);
  std::vector<double> shifted = run(x, positions.data());
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(shifted[i], y[i], 1e-12);
  positions[1] += 3;
  std::vector<double> moved = run(x, positions.data());
  double diff = 0;
  for (size_t i = 0; i < y.size(); ++i) diff = std::max(diff, std::fabs(moved[i] - y[i]));
  EXPECT_GT(diff, 1e-6);
  positions[0] = -1;
  EXPECT_THROW(run(x, positions.data()), Error);
}

TEST_P(MLANumerics, FloatAgreesWithDouble) {
  ParamStore<float> store_f;
  MLA<float> mla_f(store_f, kPrefix, cfg);
  for (size_t k = 0; k < store.all().size(); ++k)
    for (size_t i = 0; i < store.all()[k]->value.size(); ++i)
      store_f.all()[k]->value[i] = static_cast<float>(store.all()[k]->value[i]);
  std::vector<double> y = run(x);
  std::vector<float> xf(x.begin(), x.end()), yf(x.size());
  MLA<float>::Ctx ctx;
  mla_f.forward(ctx, xf.data(), yf.data(), batch, seq);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(yf[i], y[i], 1e-5 * (1 + std::fabs(y[i])));
}

INSTANTIATE_TEST_SUITE_P(QLoraAndYarn, MLANumerics,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "QLora" : "QProj") +
                                  (std::get<1>(info.param) ? "Yarn" : "Rope");
                         });

}  // namespace
}  // namespace frugal
