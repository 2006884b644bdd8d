// Causal attention: forward against a naive formula, the mask, finite-difference gradients in
// double, causality, float/double agreement and run-to-run determinism.
#include <gtest/gtest.h>

#include <cmath>

#include "gradcheck.h"
#include "kernels/attention/attention.h"

namespace frugal {
namespace {

using testing::check_gradient;
using testing::fill_normal;
using testing::weighted_sum;

struct Shape {
  int64_t batch = 2, seq = 6, heads = 3, qk_dim = 7, v_dim = 5;
  double scale = 0.4;
  int64_t q_size() const { return batch * seq * heads * qk_dim; }
  int64_t v_size() const { return batch * seq * heads * v_dim; }
  int64_t p_size() const { return batch * heads * seq * seq; }
};

// Straight from the definition: exp of masked scores over their sum, no max subtraction.
void naive_attention(const Shape& s, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, std::vector<double>& out,
                     std::vector<double>& probs) {
  out.assign(s.v_size(), 0.0);
  probs.assign(s.p_size(), 0.0);
  auto qk_at = [&](int64_t b, int64_t t, int64_t h) {
    return ((b * s.seq + t) * s.heads + h) * s.qk_dim;
  };
  auto v_at = [&](int64_t b, int64_t t, int64_t h) {
    return ((b * s.seq + t) * s.heads + h) * s.v_dim;
  };
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.seq; ++i) {
        std::vector<double> e(s.seq, 0.0);
        double z = 0;
        for (int64_t j = 0; j < s.seq; ++j) {
          if (j > i) continue;
          double dot = 0;
          for (int64_t d = 0; d < s.qk_dim; ++d)
            dot += q[qk_at(b, i, h) + d] * k[qk_at(b, j, h) + d];
          e[j] = std::exp(s.scale * dot);
          z += e[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          double p = e[j] / z;
          probs[((b * s.heads + h) * s.seq + i) * s.seq + j] = p;
          for (int64_t d = 0; d < s.v_dim; ++d) out[v_at(b, i, h) + d] += p * v[v_at(b, j, h) + d];
        }
      }
}

struct Inputs {
  std::vector<double> q, k, v;
  explicit Inputs(const Shape& s) : q(s.q_size()), k(s.q_size()), v(s.v_size()) {
    fill_normal(q, 1);
    fill_normal(k, 2);
    fill_normal(v, 3);
  }
};

TEST(Attention, ForwardMatchesNaiveFormulaAndMasksExactly) {
  Shape s;
  Inputs in(s);
  std::vector<double> out(s.v_size()), probs(s.p_size()), ref_out, ref_probs;
  cpu::attention_fwd(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s.batch,
                     s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  naive_attention(s, in.q, in.k, in.v, ref_out, ref_probs);
  for (int64_t i = 0; i < s.v_size(); ++i) EXPECT_NEAR(out[i], ref_out[i], 1e-13);
  for (int64_t bh = 0; bh < s.batch * s.heads; ++bh)
    for (int64_t i = 0; i < s.seq; ++i) {
      double row_sum = 0;
      for (int64_t j = 0; j < s.seq; ++j) {
        double p = probs[(bh * s.seq + i) * s.seq + j];
        EXPECT_NEAR(p, ref_probs[(bh * s.seq + i) * s.seq + j], 1e-14);
        if (j > i) {
          EXPECT_EQ(p, 0.0) << "masked entry must be exactly zero";
        }
        row_sum += p;
      }
      EXPECT_NEAR(row_sum, 1.0, 1e-14);
    }
}

TEST(Attention, LargeScoresStayFinite) {
  // Max subtraction: scores of several hundred would overflow exp() without it.
  Shape s;
  s.scale = 200.0;
  Inputs in(s);
  std::vector<double> out(s.v_size()), probs(s.p_size());
  cpu::attention_fwd(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s.batch,
                     s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  for (double o : out) EXPECT_TRUE(std::isfinite(o));
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  Shape s;
  Inputs in(s);
  std::vector<double> w(s.v_size()), out(s.v_size()), probs(s.p_size());
  fill_normal(w, 4);
  auto loss = [&] {
    std::vector<double> o(s.v_size()), p(s.p_size());
    cpu::attention_fwd(o.data(), p.data(), in.q.data(), in.k.data(), in.v.data(), s.batch, s.seq,
                       s.heads, s.qk_dim, s.v_dim, s.scale);
    return weighted_sum(o, w);
  };
  cpu::attention_fwd(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s.batch,
                     s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  // Fill with garbage: the backward must assign, not accumulate.
  std::vector<double> dq(s.q_size(), 7.0), dk(s.q_size(), 7.0), dv(s.v_size(), 7.0);
  cpu::attention_bwd(dq.data(), dk.data(), dv.data(), w.data(), probs.data(), in.q.data(),
                     in.k.data(), in.v.data(), s.batch, s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  EXPECT_LT(check_gradient(in.q, dq, loss, 128, 1e-5, 1e-6, "attention dq").max_rel_error, 1e-6);
  EXPECT_LT(check_gradient(in.k, dk, loss, 128, 1e-5, 1e-6, "attention dk").max_rel_error, 1e-6);
  EXPECT_LT(check_gradient(in.v, dv, loss, 128, 1e-5, 1e-6, "attention dv").max_rel_error, 1e-6);
}

TEST(Attention, OutputAtTIgnoresLaterPositions) {
  Shape s;
  Inputs in(s);
  std::vector<double> out(s.v_size()), probs(s.p_size());
  cpu::attention_fwd(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s.batch,
                     s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  const int64_t t = 2;
  Inputs changed = in;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t pos = t + 1; pos < s.seq; ++pos) {
      for (int64_t e = 0; e < s.heads * s.qk_dim; ++e) {
        changed.q[(b * s.seq + pos) * s.heads * s.qk_dim + e] += 3.0;
        changed.k[(b * s.seq + pos) * s.heads * s.qk_dim + e] -= 2.0;
      }
      for (int64_t e = 0; e < s.heads * s.v_dim; ++e)
        changed.v[(b * s.seq + pos) * s.heads * s.v_dim + e] *= -5.0;
    }
  std::vector<double> out2(s.v_size()), probs2(s.p_size());
  cpu::attention_fwd(out2.data(), probs2.data(), changed.q.data(), changed.k.data(),
                     changed.v.data(), s.batch, s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  bool later_changed = false;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t pos = 0; pos < s.seq; ++pos)
      for (int64_t e = 0; e < s.heads * s.v_dim; ++e) {
        int64_t i = (b * s.seq + pos) * s.heads * s.v_dim + e;
        if (pos <= t)
          EXPECT_EQ(out2[i], out[i]) << "position " << pos << " saw a later position";
        else
          later_changed |= out2[i] != out[i];
      }
  EXPECT_TRUE(later_changed);
}

TEST(Attention, FloatAgreesWithDoubleAndIsDeterministic) {
  Shape s;
  s.seq = 33;
  s.heads = 4;
  Inputs in(s);
  std::vector<float> qf(in.q.begin(), in.q.end()), kf(in.k.begin(), in.k.end()),
      vf(in.v.begin(), in.v.end());
  std::vector<double> out(s.v_size()), probs(s.p_size());
  std::vector<float> outf(s.v_size()), probsf(s.p_size()), outf2(s.v_size()), probsf2(s.p_size());
  cpu::attention_fwd(out.data(), probs.data(), in.q.data(), in.k.data(), in.v.data(), s.batch,
                     s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  cpu::attention_fwd(outf.data(), probsf.data(), qf.data(), kf.data(), vf.data(), s.batch, s.seq,
                     s.heads, s.qk_dim, s.v_dim, s.scale);
  cpu::attention_fwd(outf2.data(), probsf2.data(), qf.data(), kf.data(), vf.data(), s.batch, s.seq,
                     s.heads, s.qk_dim, s.v_dim, s.scale);
  for (int64_t i = 0; i < s.v_size(); ++i) {
    EXPECT_NEAR(outf[i], out[i], 1e-5);
    EXPECT_EQ(outf[i], outf2[i]);
  }
  std::vector<float> dout(s.v_size()), dq(s.q_size()), dk(s.q_size()), dv(s.v_size());
  std::vector<float> dq2(s.q_size()), dk2(s.q_size()), dv2(s.v_size());
  fill_normal(dout, 9);
  cpu::attention_bwd(dq.data(), dk.data(), dv.data(), dout.data(), probsf.data(), qf.data(),
                     kf.data(), vf.data(), s.batch, s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  cpu::attention_bwd(dq2.data(), dk2.data(), dv2.data(), dout.data(), probsf.data(), qf.data(),
                     kf.data(), vf.data(), s.batch, s.seq, s.heads, s.qk_dim, s.v_dim, s.scale);
  EXPECT_EQ(dq, dq2);
  EXPECT_EQ(dk, dk2);
  EXPECT_EQ(dv, dv2);
}

}  // namespace
}  // namespace frugal
