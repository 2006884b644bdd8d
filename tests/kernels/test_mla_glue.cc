// CPU references of the MLA glue (kernels/attention/mla_glue.h) against the composition of the
// existing CPU ops they stand for: strided copies, cpu::rope_fwd / rope_bwd on the model's table,
// and the in-order head sum. Data movement must be exact; rotated values within 2^-21 of the
// composition (both round each fp32 operation; a host compiler that fuses multiply-adds in
// cpu::rope could move the last bit); bf16 storage: every stored value a bf16 value, within bf16
// rounding of the fp32 results. Also: columns outside a strided output untouched, argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/attention/mla_glue.h"
#include "kernels/rope/rope.h"
#include "yarn_test_config.h"

namespace frugal {
namespace {

constexpr int64_t kTablePositions = 500;
constexpr float kSentinel = 12345.0f;

struct Fixture {
  int64_t rows = 9, heads = 3, nope = 5, rope = 8, v = 6, kv_lora = 7;
  RopeTable table;
  std::vector<float> cos, sin;
  std::vector<int32_t> positions;

  Fixture() {
    table = make_rope_table(testing::v3_yarn_config(rope, 0.8), kTablePositions);
    cos.assign(table.cos.begin(), table.cos.end());
    sin.assign(table.sin.begin(), table.sin.end());
    std::mt19937_64 gen(7);
    for (int64_t r = 0; r < rows; ++r)
      positions.push_back(static_cast<int32_t>(gen() % kTablePositions));
    positions[0] = kTablePositions - 1;
  }
  MlaRope mla_rope() const { return {cos.data(), sin.data(), kTablePositions, positions.data()}; }
  MlaHeadDims dims() const { return {heads, nope, rope, v}; }
};

std::vector<float> random_values(int64_t n, uint64_t seed, bool bf16) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& value : x) value = bf16 ? round_to_bf16(dist(gen)) : dist(gen);
  return x;
}

void expect_near_all(const std::vector<float>& got, const std::vector<float>& want, double tol,
                     const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (float w : want) scale = std::max(scale, std::fabs(static_cast<double>(w)));
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_LE(std::fabs(static_cast<double>(got[i]) - want[i]), tol * scale)
        << what << " at " << i << ": " << got[i] << " vs " << want[i];
}

void expect_bf16_values(const std::vector<float>& x, const char* what) {
  for (size_t i = 0; i < x.size(); ++i)
    ASSERT_EQ(x[i], round_to_bf16(x[i])) << what << " at " << i << " is not a bf16 value";
}

// k, v by the composition: copies, then cpu::rope_fwd<float> on the copied-out k_pe.
void split_by_composition(const Fixture& f, const std::vector<float>& kv_b,
                          const std::vector<float>& kv_a, std::vector<float>& k,
                          std::vector<float>& v) {
  const int64_t qk = f.nope + f.rope, kv_b_head = f.nope + f.v, kv_a_dim = f.kv_lora + f.rope;
  std::vector<float> k_pe(f.rows * f.rope);
  for (int64_t r = 0; r < f.rows; ++r)
    for (int64_t j = 0; j < f.rope; ++j) k_pe[r * f.rope + j] = kv_a[r * kv_a_dim + f.kv_lora + j];
  cpu::rope_fwd(k_pe.data(), f.table, f.positions.data(), f.rows, 1, f.rope, 0);
  k.assign(f.rows * f.heads * qk, 0.0f);
  v.assign(f.rows * f.heads * f.v, 0.0f);
  for (int64_t rh = 0; rh < f.rows * f.heads; ++rh) {
    for (int64_t j = 0; j < f.nope; ++j) k[rh * qk + j] = kv_b[rh * kv_b_head + j];
    for (int64_t j = 0; j < f.rope; ++j)
      k[rh * qk + f.nope + j] = k_pe[(rh / f.heads) * f.rope + j];
    for (int64_t j = 0; j < f.v; ++j) v[rh * f.v + j] = kv_b[rh * kv_b_head + f.nope + j];
  }
}

TEST(MlaGlue, SplitKvIsCopiesAndRopeFwd) {
  const Fixture f;
  const int64_t qk = f.nope + f.rope, kv_a_dim = f.kv_lora + f.rope;
  for (bool bf16 : {false, true}) {
    const std::vector<float> kv_b = random_values(f.rows * f.heads * (f.nope + f.v), 1, bf16);
    const std::vector<float> kv_a = random_values(f.rows * kv_a_dim, 2, bf16);
    std::vector<float> k(f.rows * f.heads * qk, kSentinel), v(f.rows * f.heads * f.v, kSentinel);
    cpu::mla_split_kv(k.data(), v.data(), kv_b.data(), kv_a.data() + f.kv_lora, kv_a_dim,
                      f.mla_rope(), f.rows, f.dims(), bf16 ? DType::BF16 : DType::F32);
    std::vector<float> k_want, v_want;
    split_by_composition(f, kv_b, kv_a, k_want, v_want);
    EXPECT_EQ(v, v_want);  // pure copies
    for (int64_t rh = 0; rh < f.rows * f.heads; ++rh)
      for (int64_t j = 0; j < f.nope; ++j) ASSERT_EQ(k[rh * qk + j], k_want[rh * qk + j]);
    expect_near_all(k, k_want, bf16 ? 1e-2 : std::ldexp(1.0, -21), "k");
    if (bf16) expect_bf16_values(k, "k");
    // Every head carries the same rotated key.
    for (int64_t r = 0; r < f.rows; ++r)
      for (int64_t h = 1; h < f.heads; ++h)
        for (int64_t j = 0; j < f.rope; ++j)
          ASSERT_EQ(k[(r * f.heads + h) * qk + f.nope + j], k[(r * f.heads) * qk + f.nope + j]);
  }
}

TEST(MlaGlue, MergeKvGradIsCopiesHeadSumAndRopeBwd) {
  const Fixture f;
  const int64_t qk = f.nope + f.rope, kv_b_head = f.nope + f.v, kv_a_dim = f.kv_lora + f.rope;
  for (bool bf16 : {false, true}) {
    const std::vector<float> dk = random_values(f.rows * f.heads * qk, 3, bf16);
    const std::vector<float> dv = random_values(f.rows * f.heads * f.v, 4, bf16);
    std::vector<float> d_kv_b(f.rows * f.heads * kv_b_head, kSentinel);
    std::vector<float> d_kv_a(f.rows * kv_a_dim, kSentinel);
    cpu::mla_merge_kv_grad(d_kv_b.data(), d_kv_a.data() + f.kv_lora, kv_a_dim, dk.data(), dv.data(),
                           f.mla_rope(), f.rows, f.dims(), bf16 ? DType::BF16 : DType::F32);
    std::vector<float> d_k_pe(f.rows * f.rope, 0.0f);  // the composition: head sum, rope_bwd
    for (int64_t r = 0; r < f.rows; ++r)
      for (int64_t j = 0; j < f.rope; ++j) {
        float sum = 0.0f;
        for (int64_t h = 0; h < f.heads; ++h) sum += dk[(r * f.heads + h) * qk + f.nope + j];
        d_k_pe[r * f.rope + j] = sum;
      }
    cpu::rope_bwd(d_k_pe.data(), f.table, f.positions.data(), f.rows, 1, f.rope, 0);
    std::vector<float> got_pe;
    for (int64_t r = 0; r < f.rows; ++r) {
      for (int64_t j = 0; j < f.kv_lora; ++j)
        ASSERT_EQ(d_kv_a[r * kv_a_dim + j], kSentinel) << "latent column written";
      for (int64_t j = 0; j < f.rope; ++j) got_pe.push_back(d_kv_a[r * kv_a_dim + f.kv_lora + j]);
    }
    expect_near_all(got_pe, d_k_pe, bf16 ? 2e-2 : std::ldexp(1.0, -21), "d_k_pe");
    if (bf16) expect_bf16_values(got_pe, "d_k_pe");
    for (int64_t rh = 0; rh < f.rows * f.heads; ++rh) {
      for (int64_t j = 0; j < f.nope; ++j) ASSERT_EQ(d_kv_b[rh * kv_b_head + j], dk[rh * qk + j]);
      for (int64_t j = 0; j < f.v; ++j)
        ASSERT_EQ(d_kv_b[rh * kv_b_head + f.nope + j], dv[rh * f.v + j]);
    }
  }
}

TEST(MlaGlue, RopeRotateMatchesCpuRopeAndInverts) {
  const Fixture f;
  const int64_t heads = 2, stride = 13, offset = 3;
  const std::vector<float> x = random_values(f.rows * heads * stride, 5, false);
  for (bool backward : {false, true}) {
    std::vector<float> got = x, want = x;
    cpu::rope_rotate_fp32_table(got.data(), f.mla_rope(), f.rows, heads, stride, offset, f.rope,
                                backward, DType::F32);
    if (backward)
      cpu::rope_bwd(want.data(), f.table, f.positions.data(), f.rows, heads, stride, offset);
    else
      cpu::rope_fwd(want.data(), f.table, f.positions.data(), f.rows, heads, stride, offset);
    expect_near_all(got, want, std::ldexp(1.0, -21), backward ? "rope bwd" : "rope fwd");
    for (int64_t i = 0; i < f.rows * heads * stride; ++i) {
      if (i % stride < offset || i % stride >= offset + f.rope) {
        ASSERT_EQ(got[i], x[i]);
      }
    }
  }
  // Forward then backward undoes the rotation up to rounding (the table's attention factor
  // scales by factor^2 here, so compare against that).
  std::vector<float> y = x;
  cpu::rope_rotate_fp32_table(y.data(), f.mla_rope(), f.rows, heads, stride, offset, f.rope, false,
                              DType::F32);
  cpu::rope_rotate_fp32_table(y.data(), f.mla_rope(), f.rows, heads, stride, offset, f.rope, true,
                              DType::F32);
  const double factor2 = f.table.attention_factor * f.table.attention_factor;
  for (int64_t i = 0; i < f.rows * heads * stride; ++i) {
    const bool rotated = i % stride >= offset && i % stride < offset + f.rope;
    ASSERT_NEAR(y[i], rotated ? x[i] * factor2 : x[i], 1e-5) << i;
  }
}

TEST(MlaGlue, RejectsBadArguments) {
  Fixture f;
  std::vector<float> buffer(4096, 0.0f);
  float* p = buffer.data();
  const int64_t kv_a_dim = f.kv_lora + f.rope;
  EXPECT_THROW(cpu::mla_split_kv(p, p, p, p, kv_a_dim, f.mla_rope(), f.rows, f.dims(), DType::F16),
               Error);
  EXPECT_THROW(
      cpu::mla_split_kv(p, p, p, p, f.rope - 1, f.mla_rope(), f.rows, f.dims(), DType::F32),
      Error);  // row stride < rope
  MlaHeadDims odd = f.dims();
  odd.rope = 7;
  EXPECT_THROW(cpu::mla_merge_kv_grad(p, p, kv_a_dim, p, p, f.mla_rope(), f.rows, odd, DType::F32),
               Error);
  f.positions[3] = kTablePositions;  // outside the table
  EXPECT_THROW(
      cpu::mla_merge_kv_grad(p, p, kv_a_dim, p, p, f.mla_rope(), f.rows, f.dims(), DType::F32),
      Error);
  EXPECT_THROW(
      cpu::rope_rotate_fp32_table(p, f.mla_rope(), f.rows, 1, f.rope, 1, f.rope, false, DType::F32),
      Error);  // range past the head
}

}  // namespace
}  // namespace frugal
