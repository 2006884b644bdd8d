// MoE CUDA ops (kernels/moe/moe_cuda.h) against the CPU references, on fresh random inputs with
// poisoned (0xFF) outputs:
//   router_fwd     topk_idx identical to the CPU's (logits on a jittered grid, so no two selection
//                  scores are within rounding of each other), scores and weights <= 1e-5; every
//                  method (noaux_tc, group_limited_greedy, greedy), sigmoid/softmax, -inf/0 group
//                  fill, norm on/off, scaling; deliberate ties go to the lower index
//   router_bwd     dlogits vs the CPU in double, <= 1e-5
//   permutation    offsets, counts, load (+=), assignment_row and row_assignment equal to the
//                  CPU's permutation translated to the padded layout (row_align 1: the same
//                  arrays); padding rows -1 up to the documented bound; empty experts
//   row ops        permute_rows / unpermute_sum / combine_fwd / combine_bwd in fp32 (<= 1e-5) and
//                  bf16 (<= 1e-2, CPU on the bf16-rounded inputs), aligned and misaligned rows,
//                  padding rows zero, exact and bound row counts
//   balance loss   fwd <= 1e-9 relative (double), bwd <= 1e-5, assign and accumulate
//   bias update    bit-identical to MoE::update_bias's rule
// and determinism (two runs, same bits) for every op. Each check prints a CHECK line.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "router_test_util.h"
#include "kernels/moe/balance_loss.h"
#include "kernels/moe/moe_cuda.h"
#include "kernels/moe/permute.h"
#include "kernels/moe/router.h"

namespace frugal {
namespace {

using testing::router_params;

using cpu::RouterParams;
using cpu::ScoringFunc;
using cpu::TopkMethod;
using namespace testing;

class MoeCuda : public CudaTest {};

std::vector<int32_t> to_int32(const std::vector<int64_t>& v) {
  return std::vector<int32_t>(v.begin(), v.end());
}

// ---- router ------------------------------------------------------------------------------------

struct RouterCase {
  std::string name;
  RouterParams p;
  bool with_bias = false;
};

// Per token a random permutation of a grid over [lo, hi) with +-30% jitter: selection scores are
// at least 0.4 grid steps apart (far above fp32 rounding), so the CPU and GPU must pick the same
// experts. Sigmoid with a bias: s in [0.05, 0.2] and bias multiples of 0.25, so s + bias of two
// experts never come close either (differences >= 0.1 across bias classes).
std::vector<float> grid_logits(const RouterParams& p, int64_t tokens, bool with_bias, uint64_t seed) {
  const int64_t E = p.n_experts;
  double lo = -3.0, hi = 3.0;
  if (p.scoring_func == ScoringFunc::Sigmoid && with_bias) lo = -2.9, hi = -1.4;
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> jitter(-0.3, 0.3);
  std::vector<float> logits(tokens * E);
  std::vector<int64_t> order(E);
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(order.begin(), order.end(), int64_t{0});
    std::shuffle(order.begin(), order.end(), gen);
    for (int64_t e = 0; e < E; ++e)
      logits[t * E + e] = static_cast<float>(
          lo + (static_cast<double>(order[e]) + 0.5 + jitter(gen)) * (hi - lo) / static_cast<double>(E));
  }
  return logits;
}

std::vector<float> grid_bias(int64_t E, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> step(-2, 1);
  std::vector<float> bias(E);
  for (float& b : bias) b = 0.25f * static_cast<float>(step(gen));
  return bias;
}

std::string router_shape(const RouterCase& c, int64_t tokens) {
  return c.name + " t" + std::to_string(tokens) + " E" + std::to_string(c.p.n_experts) + " K" +
         std::to_string(c.p.top_k);
}

// Runs the CPU and the GPU router on `logits`; checks the forward, then the backward on the CPU's
// forward outputs. Returns the GPU's topk_idx.
std::vector<int32_t> check_router(cudaStream_t stream, const RouterCase& c, int64_t tokens,
                                  const std::vector<float>& logits, const std::vector<float>& bias,
                                  uint64_t seed) {
  const RouterParams& p = c.p;
  const int64_t E = p.n_experts, K = p.top_k;
  const std::string shape = router_shape(c, tokens);
  const float* bias_host = c.with_bias ? bias.data() : nullptr;
  std::vector<int64_t> idx(tokens * K);
  std::vector<float> weight(tokens * K), scores(tokens * E);
  cpu::router_fwd(idx.data(), weight.data(), scores.data(), logits.data(), bias_host, tokens, p);

  DeviceArray<float> logits_d(tokens * E), bias_d(E), scores_d(tokens * E), weight_d(tokens * K);
  DeviceArray<int32_t> idx_d(tokens * K);
  logits_d.upload(logits);
  bias_d.upload(bias);
  std::vector<int32_t> first_idx;
  std::vector<float> first_weight, first_scores;
  for (int run = 0; run < 2; ++run) {
    idx_d.poison();
    scores_d.poison();
    weight_d.poison();
    cuda::router_fwd(idx_d.get(), weight_d.get(), scores_d.get(), logits_d.get(),
                     c.with_bias ? bias_d.get() : nullptr, tokens, p, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (run == 0) {
      first_idx = idx_d.download();
      first_weight = weight_d.download();
      first_scores = scores_d.download();
      expect_equal("router_fwd topk_idx", shape, first_idx, idx);
      expect_close("router_fwd scores", shape, first_scores, scores, kFp32Tolerance);
      expect_close("router_fwd topk_weight", shape, first_weight, weight, kFp32Tolerance);
    } else {
      expect_same_bits("router_fwd topk_idx", shape, first_idx, idx_d.download());
      expect_same_bits("router_fwd topk_weight", shape, first_weight, weight_d.download());
    }
  }

  // Backward on the CPU's forward (so it is checked on its own), against the CPU in double.
  const bool with_dscores = (seed & 1) != 0;
  const std::vector<float> dweights = random_normal(tokens * K, seed + 11);
  const std::vector<float> dscores = random_normal(tokens * E, seed + 12);
  std::vector<double> dlogits_ref(tokens * E);
  const std::vector<double> scores_ref = to_double(scores), dweights_ref = to_double(dweights),
                            dscores_ref = to_double(dscores);
  cpu::router_bwd(dlogits_ref.data(), dweights_ref.data(),
                  with_dscores ? dscores_ref.data() : nullptr, scores_ref.data(), idx.data(),
                  tokens, p);
  DeviceArray<float> dweights_d(tokens * K), dscores_d(tokens * E), dlogits_d(tokens * E),
      cpu_scores_d(tokens * E);
  DeviceArray<int32_t> cpu_idx_d(tokens * K);
  dweights_d.upload(dweights);
  dscores_d.upload(dscores);
  cpu_scores_d.upload(scores);
  cpu_idx_d.upload(to_int32(idx));
  dlogits_d.poison();
  cuda::router_bwd(dlogits_d.get(), dweights_d.get(), with_dscores ? dscores_d.get() : nullptr,
                   cpu_scores_d.get(), cpu_idx_d.get(), tokens, p, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close(with_dscores ? "router_bwd (+dscores)" : "router_bwd", shape, dlogits_d.download(),
               dlogits_ref, kFp32Tolerance);
  return first_idx;
}

std::vector<RouterCase> router_cases() {
  const auto sig = ScoringFunc::Sigmoid, soft = ScoringFunc::Softmax;
  const auto noaux = TopkMethod::NoauxTc, glg = TopkMethod::GroupLimitedGreedy,
             greedy = TopkMethod::Greedy;
  std::vector<RouterCase> cases = {
      {"v3 noaux_tc", router_params(256, 8, 8, 4, sig, noaux, true, 2.5), true},
      {"v3 noaux_tc fill0", router_params(256, 8, 8, 4, sig, noaux, true, 2.5, 0.0), true},
      {"noaux_tc no bias", router_params(64, 6, 8, 3, sig, noaux, true, 1.0), false},
      {"noaux_tc 64 groups", router_params(256, 8, 64, 8, sig, noaux, false, 1.5), true},
      {"noaux_tc E1024", router_params(1024, 8, 32, 4, sig, noaux, true, 2.5), true},
      {"bench-1b greedy", router_params(64, 6, 1, 1, sig, greedy, true, 1.0), false},
      {"v2 glg softmax", router_params(64, 6, 8, 3, soft, glg, false, 16.0), false},
      {"glg softmax fill0", router_params(64, 6, 8, 3, soft, glg, true, 1.0, 0.0), false},
      {"greedy softmax E100", router_params(100, 7, 1, 1, soft, greedy, false, 1.0), false},
      {"greedy sigmoid E100", router_params(100, 7, 1, 1, sig, greedy, true, 1.0), false},
  };
  for (int64_t K = 1; K <= 8; ++K)
    cases.push_back({"greedy softmax E8", router_params(8, K, 1, 1, soft, greedy, K % 2 == 0, 1.0),
                     false});
  return cases;
}

TEST_F(MoeCuda, RouterMatchesCpu) {
  for (const RouterCase& c : router_cases()) {
    for (int64_t tokens : {int64_t{1}, int64_t{3}, int64_t{257}, int64_t{1000}}) {
      const uint64_t seed = case_seed(router_shape(c, tokens));
      const std::vector<float> logits = grid_logits(c.p, tokens, c.with_bias, seed);
      check_router(stream_, c, tokens, logits, grid_bias(c.p.n_experts, seed + 1), seed);
    }
  }
}

// Exact ties, resolved toward the lower index on both sides: all logits equal (groups and experts
// all tie), equal pairs (e, e^1), and groups that are copies of each other.
TEST_F(MoeCuda, RouterTiesGoToTheLowerIndex) {
  const std::vector<RouterCase> cases = {
      {"tie greedy", router_params(64, 6, 1, 1, ScoringFunc::Sigmoid, TopkMethod::Greedy, true, 1.0)},
      {"tie noaux_tc", router_params(256, 8, 8, 4, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 2.5),
       true},
      {"tie glg", router_params(64, 6, 8, 3, ScoringFunc::Softmax, TopkMethod::GroupLimitedGreedy,
                                false, 1.0)},
  };
  const int64_t tokens = 33;
  for (const RouterCase& c : cases) {
    const int64_t E = c.p.n_experts, K = c.p.top_k;
    const std::vector<float> zero_bias(E, 0.0f);
    // All equal: the first K experts (of the first groups), in index order.
    std::vector<float> flat(tokens * E, 0.3f);
    const std::vector<int32_t> idx = check_router(stream_, c, tokens, flat, zero_bias, 7);
    std::vector<int32_t> expected;
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t k = 0; k < K; ++k) expected.push_back(static_cast<int32_t>(k));
    expect_equal("router all-tie picks 0..K-1", router_shape(c, tokens), idx, expected);
    // Equal pairs and copied groups.
    const uint64_t seed = case_seed("ties " + c.name);
    std::vector<float> pairs = grid_logits(c.p, tokens, false, seed);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t e = 1; e < E; e += 2) pairs[t * E + e] = pairs[t * E + e - 1];
    check_router(stream_, c, tokens, pairs, zero_bias, seed + 2);
    if (c.p.n_group > 1) {
      std::vector<float> copies = grid_logits(c.p, tokens, false, seed + 3);
      const int64_t group_size = E / c.p.n_group;
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t e = group_size; e < E; ++e)
          copies[t * E + e] = copies[t * E + e % group_size];
      check_router(stream_, c, tokens, copies, zero_bias, seed + 4);
    }
  }
}

// ---- permutation -------------------------------------------------------------------------------

// K distinct experts per token from `pool` experts (a random subset when pool < E: empty experts).
std::vector<int64_t> random_topk(int64_t tokens, int64_t K, int64_t E, int64_t pool, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<int64_t> experts(E);
  std::iota(experts.begin(), experts.end(), int64_t{0});
  std::shuffle(experts.begin(), experts.end(), gen);
  experts.resize(std::max(pool, K));
  std::vector<int64_t> idx(tokens * K);
  for (int64_t t = 0; t < tokens; ++t) {
    std::shuffle(experts.begin(), experts.end(), gen);
    std::copy(experts.begin(), experts.begin() + K, idx.begin() + t * K);
  }
  return idx;
}

// The CPU permutation and its translation to the padded layout of moe_cuda.h.
struct Layout {
  int64_t tokens = 0, K = 0, E = 0, align = 1, bound = 0;
  std::vector<int64_t> offsets, sorted, arow;  // CPU: [E+1], [N], [N]
  std::vector<int64_t> counts, padded_offsets;  // [E], [E+1]
  std::vector<int32_t> assignment_row;          // [N] padded row of each assignment
  std::vector<int32_t> row_assignment;          // [bound] assignment of each row, -1 padding
};

Layout make_layout(const std::vector<int64_t>& idx, int64_t tokens, int64_t K, int64_t E,
                   int64_t align) {
  Layout l;
  l.tokens = tokens, l.K = K, l.E = E, l.align = align;
  const int64_t n = tokens * K;
  l.bound = n + E * (align - 1);
  l.offsets.resize(E + 1);
  l.sorted.resize(n);
  l.arow.resize(n);
  cpu::build_expert_permutation(l.offsets.data(), l.sorted.data(), l.arow.data(), idx.data(),
                                tokens, K, E);
  l.counts.resize(E);
  l.padded_offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    l.counts[e] = l.offsets[e + 1] - l.offsets[e];
    l.padded_offsets[e + 1] = l.padded_offsets[e] + (l.counts[e] + align - 1) / align * align;
  }
  l.assignment_row.resize(n);
  l.row_assignment.assign(l.bound, -1);
  for (int64_t a = 0; a < n; ++a) {
    const int64_t e = idx[a];
    const int64_t row = l.padded_offsets[e] + (l.arow[a] - l.offsets[e]);
    l.assignment_row[a] = static_cast<int32_t>(row);
    l.row_assignment[row] = static_cast<int32_t>(a);
  }
  return l;
}

void check_permutation(cudaStream_t stream, int64_t tokens, int64_t K, int64_t E, int64_t align,
                       int64_t pool) {
  const std::string shape = "t" + std::to_string(tokens) + " K" + std::to_string(K) + " E" +
                            std::to_string(E) + " align" + std::to_string(align) +
                            (pool < E ? " pool" + std::to_string(pool) : "");
  const uint64_t seed = case_seed("perm " + shape);
  const std::vector<int64_t> idx = random_topk(tokens, K, E, pool, seed);
  const Layout l = make_layout(idx, tokens, K, E, align);
  const int64_t n = tokens * K;

  std::mt19937_64 gen(seed + 1);
  std::vector<int64_t> load_start(E);
  for (int64_t& v : load_start) v = static_cast<int64_t>(gen() % 1000);
  DeviceArray<int32_t> idx_d(n), arow_d(n), rowa_d(l.bound);
  DeviceArray<int64_t> offsets_d(E + 1), counts_d(E), load_d(E);
  DeviceArray<uint8_t> workspace_d(
      static_cast<int64_t>(cuda::expert_permutation_workspace_bytes(tokens, K, E)));
  idx_d.upload(to_int32(idx));
  load_d.upload(load_start);
  std::vector<int32_t> first_arow, first_rowa;
  for (int run = 0; run < 2; ++run) {
    arow_d.poison();
    rowa_d.poison();
    offsets_d.poison();
    counts_d.poison();
    workspace_d.poison();
    cuda::build_expert_permutation(offsets_d.get(), counts_d.get(), load_d.get(), arow_d.get(),
                                   rowa_d.get(), idx_d.get(), tokens, K, E, align,
                                   workspace_d.get(), stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<int32_t> arow = arow_d.download(), rowa = rowa_d.download();
    if (run == 0) {
      first_arow = arow;
      first_rowa = rowa;
      expect_equal("perm expert_counts", shape, counts_d.download(), l.counts);
      expect_equal("perm expert_offsets", shape, offsets_d.download(), l.padded_offsets);
      expect_equal("perm assignment_row", shape, arow, l.assignment_row);
      expect_equal("perm row_assignment", shape, rowa, l.row_assignment);
      if (align == 1) {  // the CPU's own arrays
        expect_equal("perm == cpu sorted_assignment", shape,
                     std::vector<int32_t>(rowa.begin(), rowa.begin() + n), l.sorted);
        expect_equal("perm == cpu assignment_row", shape, arow, l.arow);
        expect_equal("perm == cpu expert_offsets", shape, offsets_d.download(), l.offsets);
      }
    } else {
      expect_same_bits("perm assignment_row", shape, first_arow, arow);
      expect_same_bits("perm row_assignment", shape, first_rowa, rowa);
      std::vector<int64_t> load_expected(E);
      for (int64_t e = 0; e < E; ++e) load_expected[e] = load_start[e] + 2 * l.counts[e];
      expect_equal("perm load += counts (x2)", shape, load_d.download(), load_expected);
    }
  }
}

TEST_F(MoeCuda, PermutationMatchesCpu) {
  for (int64_t tokens : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{257}, int64_t{4099}})
    for (int64_t E : {int64_t{8}, int64_t{64}, int64_t{256}})
      for (int64_t K : {int64_t{1}, int64_t{6}, int64_t{8}})
        for (int64_t align : {int64_t{1}, int64_t{128}}) check_permutation(stream_, tokens, K, E, align, E);
  // Empty experts (a few experts take everything), an odd alignment, the most experts, many tokens.
  check_permutation(stream_, 257, 6, 64, 1, 7);
  check_permutation(stream_, 257, 6, 64, 128, 7);
  check_permutation(stream_, 1000, 8, 256, 128, 9);
  check_permutation(stream_, 1000, 2, 256, 7, 256);
  check_permutation(stream_, 300, 8, 1024, 128, 1024);
  check_permutation(stream_, 40000, 6, 64, 128, 64);
}

// ---- row ops -----------------------------------------------------------------------------------

// T = float or bf16 (host bit patterns uint16_t). Device pointer casts for the templated ops.
template <class H>
auto device_ptr(H* p) {
  if constexpr (std::is_same_v<H, uint16_t>)
    return as_bf16(p);
  else
    return p;
}

template <class H>
std::vector<H> encode(const std::vector<float>& x) {
  if constexpr (std::is_same_v<H, uint16_t>)
    return to_bf16_bits(x);
  else
    return x;
}

template <class H>
std::vector<float> decode(const std::vector<H>& x) {
  if constexpr (std::is_same_v<H, uint16_t>)
    return from_bf16_bits(x);
  else
    return x;
}

// Inputs as the GPU sees them: bf16-rounded for bf16.
template <class H>
std::vector<float> input(int64_t count, uint64_t seed) {
  std::vector<float> x = random_normal(count, seed);
  return std::is_same_v<H, uint16_t> ? round_bf16(x) : x;
}

template <class H>
void check_row_ops(cudaStream_t stream, const Layout& l, int64_t hidden, bool misaligned,
                   bool bound_rows) {
  constexpr bool kBf16 = std::is_same_v<H, uint16_t>;
  const double tol = kBf16 ? kBf16Tolerance : kFp32Tolerance;
  const int64_t tokens = l.tokens, K = l.K, E = l.E, H_ = hidden, n = tokens * K;
  const int64_t rows = bound_rows ? l.bound : l.padded_offsets[E];
  const std::string shape = std::string(kBf16 ? "bf16 " : "fp32 ") + "t" + std::to_string(tokens) +
                            " K" + std::to_string(K) + " E" + std::to_string(E) + " h" +
                            std::to_string(hidden) + " al" + std::to_string(l.align) +
                            (bound_rows ? " bound" : "") + (misaligned ? " +1" : "");
  const uint64_t seed = case_seed("rows " + shape);
  DeviceArray<int32_t> arow_d(n), rowa_d(l.bound);
  arow_d.upload(l.assignment_row);
  rowa_d.upload(l.row_assignment);
  auto padded_to_cpu = [&](const std::vector<float>& padded) {  // [rows,H] -> CPU order [n,H]
    std::vector<double> out(n * H_);
    for (int64_t a = 0; a < n; ++a)
      for (int64_t j = 0; j < H_; ++j)
        out[l.arow[a] * H_ + j] = padded[static_cast<int64_t>(l.assignment_row[a]) * H_ + j];
    return out;
  };
  auto cpu_to_padded = [&](const std::vector<double>& cpu_rows) {  // zeros on padding rows
    std::vector<double> out(rows * H_, 0.0);
    for (int64_t a = 0; a < n; ++a)
      for (int64_t j = 0; j < H_; ++j)
        out[static_cast<int64_t>(l.assignment_row[a]) * H_ + j] = cpu_rows[l.arow[a] * H_ + j];
    return out;
  };

  // permute_rows: an exact copy, zeros on padding rows.
  const std::vector<float> x = input<H>(tokens * H_, seed + 1);
  std::vector<double> xp_cpu(n * H_);
  const std::vector<double> x_ref = to_double(x);
  cpu::permute_rows(xp_cpu.data(), x_ref.data(), l.sorted.data(), tokens, K, H_);
  DeviceArray<H> x_d(tokens * H_, misaligned), xp_d(rows * H_, misaligned);
  x_d.upload(encode<H>(x));
  xp_d.poison();
  cuda::permute_rows(device_ptr(xp_d.get()), device_ptr(x_d.get()), rowa_d.get(), rows, K, H_,
                     stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close("permute_rows", shape, decode(xp_d.download()), cpu_to_padded(xp_cpu), 0.0);

  // unpermute_sum and combine_fwd, assigned and accumulated; padding rows hold large values that
  // must not be read.
  std::vector<float> src = input<H>(rows * H_, seed + 2);
  for (int64_t r = 0; r < rows; ++r)
    if (r >= l.bound || l.row_assignment[r] < 0)
      for (int64_t j = 0; j < H_; ++j) src[r * H_ + j] = 1e20f;
  const std::vector<float> weights = random_normal(n, seed + 3);
  const std::vector<float> y_start = input<H>(tokens * H_, seed + 4);
  const std::vector<double> src_cpu = padded_to_cpu(src), weights_ref = to_double(weights);
  DeviceArray<H> src_d(rows * H_, misaligned), y_d(tokens * H_, misaligned);
  DeviceArray<float> weights_d(n);
  src_d.upload(encode<H>(src));
  weights_d.upload(weights);
  for (bool accumulate : {false, true}) {
    for (bool weighted : {false, true}) {
      std::vector<double> y_ref = to_double(y_start);
      if (weighted)
        cpu::combine_fwd(y_ref.data(), src_cpu.data(), weights_ref.data(), l.arow.data(), tokens,
                         K, H_, accumulate);
      else
        cpu::unpermute_sum(y_ref.data(), src_cpu.data(), l.arow.data(), tokens, K, H_, accumulate);
      std::vector<float> first;
      for (int run = 0; run < 2; ++run) {
        if (accumulate)
          y_d.upload(encode<H>(y_start));
        else
          y_d.poison();
        if (weighted)
          cuda::combine_fwd(device_ptr(y_d.get()), device_ptr(src_d.get()), weights_d.get(),
                            arow_d.get(), tokens, K, H_, accumulate, stream);
        else
          cuda::unpermute_sum(device_ptr(y_d.get()), device_ptr(src_d.get()), arow_d.get(),
                              tokens, K, H_, accumulate, stream);
        FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
        const std::vector<float> y = decode(y_d.download());
        const std::string op = std::string(weighted ? "combine_fwd" : "unpermute_sum") +
                               (accumulate ? " +=" : "");
        if (run == 0) {
          first = y;
          expect_close(op, shape, y, y_ref, tol);
        } else {
          expect_same_bits(op, shape, first, y);
        }
      }
    }
  }

  // combine_bwd: d_expert_out on real rows, zeros on padding (and bound) rows; dweights.
  const std::vector<float> dy = input<H>(tokens * H_, seed + 5);
  const std::vector<double> dy_ref = to_double(dy);
  std::vector<double> dout_cpu(n * H_), dweights_cpu(n);
  cpu::combine_bwd(dout_cpu.data(), dweights_cpu.data(), dy_ref.data(), src_cpu.data(),
                   weights_ref.data(), l.arow.data(), tokens, K, H_);
  DeviceArray<H> dy_d(tokens * H_, misaligned), dout_d(rows * H_, misaligned);
  DeviceArray<float> dweights_d(n);
  dy_d.upload(encode<H>(dy));
  std::vector<float> first_dout, first_dw;
  for (int run = 0; run < 2; ++run) {
    dout_d.poison();
    dweights_d.poison();
    cuda::combine_bwd(device_ptr(dout_d.get()), dweights_d.get(), device_ptr(dy_d.get()),
                      device_ptr(src_d.get()), weights_d.get(), arow_d.get(), rowa_d.get(), rows,
                      tokens, K, H_, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> dout = decode(dout_d.download()), dw = dweights_d.download();
    if (run == 0) {
      first_dout = dout;
      first_dw = dw;
      expect_close("combine_bwd d_expert_out", shape, dout, cpu_to_padded(dout_cpu), tol);
      expect_close("combine_bwd dweights", shape, dw, dweights_cpu, tol);
    } else {
      expect_same_bits("combine_bwd d_expert_out", shape, first_dout, dout);
      expect_same_bits("combine_bwd dweights", shape, first_dw, dw);
    }
  }
}

TEST_F(MoeCuda, RowOpsMatchCpu) {
  struct Case {
    int64_t tokens, K, E, align, pool;
  };
  const Case cases[] = {{1, 1, 8, 1, 8},     {3, 2, 8, 128, 8},    {257, 6, 64, 1, 64},
                        {257, 6, 64, 128, 5}, {100, 8, 256, 128, 256}, {33, 8, 256, 1, 12}};
  for (const Case& c : cases) {
    const std::vector<int64_t> idx =
        random_topk(c.tokens, c.K, c.E, c.pool, case_seed("row layout", c.tokens * 7 + c.E));
    const Layout l = make_layout(idx, c.tokens, c.K, c.E, c.align);
    for (int64_t hidden : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{1024}, int64_t{1030}}) {
      const bool bound = (hidden % 2) == 0;  // exact row count and the documented bound
      check_row_ops<float>(stream_, l, hidden, false, bound);
      check_row_ops<uint16_t>(stream_, l, hidden, false, !bound);
    }
    check_row_ops<float>(stream_, l, 1024, true, true);  // scalar path on vector-friendly sizes
    check_row_ops<uint16_t>(stream_, l, 1024, true, false);
  }
}

// ---- balance loss and bias update --------------------------------------------------------------

void check_balance(cudaStream_t stream, int64_t batch, int64_t seq, int64_t E, int64_t K,
                   bool softmax) {
  const int64_t tokens = batch * seq;
  const std::string shape = "b" + std::to_string(batch) + " s" + std::to_string(seq) + " E" +
                            std::to_string(E) + " K" + std::to_string(K) +
                            (softmax ? " softmax" : " sigmoid");
  const uint64_t seed = case_seed("balance " + shape);
  const double alpha = 0.3, dloss = 1.7;
  // Scores as the router makes them (positive), and an actual selection.
  std::vector<float> scores = random_normal(tokens * E, seed + 1, 0.0f, 2.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    float* s = scores.data() + t * E;
    if (softmax) {
      const float mx = *std::max_element(s, s + E);
      float sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(s[e] - mx));
      for (int64_t e = 0; e < E; ++e) s[e] /= sum;
    } else {
      for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
    }
  }
  const std::vector<int64_t> idx = random_topk(tokens, K, E, E, seed + 2);
  const double loss_ref = cpu::seq_balance_loss_fwd(scores.data(), idx.data(), batch, seq, E, K, alpha);

  DeviceArray<float> scores_d(tokens * E), dscores_d(tokens * E);
  DeviceArray<int32_t> idx_d(tokens * K);
  DeviceArray<double> loss_d(1);
  scores_d.upload(scores);
  idx_d.upload(to_int32(idx));
  double first = 0;
  for (int run = 0; run < 2; ++run) {
    loss_d.poison();
    cuda::seq_balance_loss_fwd(loss_d.get(), scores_d.get(), idx_d.get(), batch, seq, E, K, alpha,
                               stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const double loss = loss_d.download()[0];
    if (run == 0) {
      first = loss;
      expect_close("seq_balance_loss_fwd", shape, std::vector<double>{loss},
                   std::vector<double>{loss_ref}, 1e-9);
    } else {
      expect_same_bits("seq_balance_loss_fwd", shape, std::vector<double>{first},
                       std::vector<double>{loss});
    }
  }
  const std::vector<float> dscores_start = random_normal(tokens * E, seed + 3, 0.0f, 0.01f);
  for (bool accumulate : {false, true}) {
    std::vector<float> dscores_ref = dscores_start;
    cpu::seq_balance_loss_bwd(dscores_ref.data(), scores.data(), idx.data(), batch, seq, E, K,
                              alpha, dloss, accumulate);
    if (accumulate)
      dscores_d.upload(dscores_start);
    else
      dscores_d.poison();
    cuda::seq_balance_loss_bwd(dscores_d.get(), scores_d.get(), idx_d.get(), batch, seq, E, K,
                               alpha, dloss, accumulate, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    expect_close(accumulate ? "seq_balance_loss_bwd +=" : "seq_balance_loss_bwd", shape,
                 dscores_d.download(), dscores_ref, kFp32Tolerance);
  }
}

TEST_F(MoeCuda, BalanceLossMatchesCpu) {
  check_balance(stream_, 1, 1, 8, 1, true);
  check_balance(stream_, 1, 5, 8, 2, false);
  check_balance(stream_, 3, 257, 64, 6, false);
  check_balance(stream_, 2, 1000, 256, 8, false);
  check_balance(stream_, 4, 33, 1024, 8, true);
  check_balance(stream_, 8, 4096, 64, 6, false);  // bench-1b: 32768 tokens
  check_balance(stream_, 300, 3, 8, 3, true);     // many short sequences
  // No tokens: the loss is 0 (written), the backward touches nothing.
  DeviceArray<double> loss_d(1);
  loss_d.poison();
  cuda::seq_balance_loss_fwd(loss_d.get(), nullptr, nullptr, 0, 16, 8, 2, 0.3, stream_);
  sync();
  EXPECT_EQ(loss_d.download()[0], 0.0);
}

TEST_F(MoeCuda, BiasUpdateMatchesMoeRule) {
  for (int64_t E : {int64_t{1}, int64_t{8}, int64_t{64}, int64_t{256}, int64_t{3000}}) {
    for (int pattern = 0; pattern < 3; ++pattern) {
      const std::string shape = "E" + std::to_string(E) + " pattern" + std::to_string(pattern);
      std::mt19937_64 gen(case_seed("bias " + shape));
      // 0: random loads; 1: all equal (no change); 2: mean exactly 100 with ties at the mean.
      std::vector<int64_t> load(E);
      int64_t partial = 0;
      for (int64_t e = 0; e < E; ++e) {
        load[e] = pattern == 0 ? static_cast<int64_t>(gen() % 5000)
                               : pattern == 1 ? 77 : 100 + (e % 3 == 1 ? 5 : (e % 3 == 2 ? -5 : 0));
        if (e + 1 < E) partial += load[e];
      }
      if (pattern == 2) load[E - 1] = 100 * E - partial;  // total 100 E: mean exactly 100
      const std::vector<float> bias = random_normal(E, gen());
      const float speed = 0.001f;
      // MoE::update_bias (model/moe.h): b += gamma * sign(mean - load), 0 when equal.
      int64_t total = 0;
      for (int64_t v : load) total += v;
      const double mean = static_cast<double>(total) / static_cast<double>(E);
      std::vector<float> expected = bias;
      for (int64_t e = 0; e < E; ++e) {
        const double gap = mean - static_cast<double>(load[e]);
        expected[e] += static_cast<float>(gap > 0 ? double{speed} : (gap < 0 ? -double{speed} : 0.0));
      }
      DeviceArray<float> bias_d(E);
      DeviceArray<int64_t> load_d(E);
      bias_d.upload(bias);
      load_d.upload(load);
      cuda::update_balance_bias(bias_d.get(), load_d.get(), E, speed, stream_);
      sync();
      expect_equal("update_balance_bias bits", shape, bit_patterns(bias_d.download()),
                   bit_patterns(expected));
    }
  }
}

TEST_F(MoeCuda, LaunchersRejectBadArguments) {
  RouterParams p = router_params(2048, 8, 1, 1, ScoringFunc::Sigmoid, TopkMethod::Greedy, true, 1.0);
  EXPECT_THROW(cuda::router_fwd(nullptr, nullptr, nullptr, nullptr, nullptr, 4, p, stream_), Error);
  p = router_params(64, 6, 7, 3, ScoringFunc::Sigmoid, TopkMethod::NoauxTc, true, 1.0);  // 7 does not divide 64
  EXPECT_THROW(cuda::router_fwd(nullptr, nullptr, nullptr, nullptr, nullptr, 4, p, stream_), Error);
  EXPECT_THROW(cuda::build_expert_permutation(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                              4, 2, 2000, 1, nullptr, stream_),
               Error);
  EXPECT_THROW(cuda::build_expert_permutation(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                              4, 2, 8, 0, nullptr, stream_),
               Error);
  EXPECT_THROW(cuda::permute_rows<float>(nullptr, nullptr, nullptr, 4, 2, 0, stream_), Error);
  EXPECT_THROW(cuda::seq_balance_loss_fwd(nullptr, nullptr, nullptr, 1, 4, 8, 9, 0.1, stream_), Error);
  // Empty shapes launch nothing and succeed.
  cuda::permute_rows<float>(nullptr, nullptr, nullptr, 0, 2, 16, stream_);
  cuda::combine_fwd<float>(nullptr, nullptr, nullptr, nullptr, 0, 2, 16, false, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
