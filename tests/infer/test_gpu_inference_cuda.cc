// GpuInferenceModel (infer/gpu/gpu_inference_model.h) against the CPU reference InferenceModel on
// the same Transformer<float> weights:
//   - main-model logits and hidden states: a prefill of two sequences of different lengths whose
//     cache pages are interleaved and shuffled (several pages each), then decode rows of both
//     sequences together; V3-style (compressed queries, noaux_tc MoE with a shared expert, YaRN,
//     MTP) and V2-style (q_proj, greedy softmax routing) tiny configs in BF16, and a config whose
//     Linears are multiples of 128 in BF16 and FP8;
//   - MTP logits over a sequence's committed positions (hidden input from the CPU model);
//   - the Engine on the GPU model: greedy tokens equal the CPU engine's over every prefix where
//     the CPU's logits have a clear winner (top-2 margin above the BF16 error), and speculative
//     greedy equals plain greedy on the GPU over the same prefix; drafts are verified and every
//     cache page comes back;
//   - random_weights is deterministic per (seed, name) with ones for norms and zeros for the
//     routing bias, and two models built from it give the same logits bit for bit;
//   - parse_decode_weights.
// MoE routing: a top-k choice on a near tie between expert scores can flip under the GPU's BF16
// rounding, and then that row's FFN output (and, through the cache, later rows) legitimately
// differ from the CPU's by far more than rounding. So the comparisons use routings without near
// ties: every token to every expert (num_experts_per_tok = n_routed_experts,
// topk_group = n_group), or real group-limited top-k whose choice the routing bias settles
// (bias 2 * e, scores in (0, 1): every token picks the same experts, the others stay empty); the
// router's weights, the permutation, grouped GEMMs (empty groups included) and combine all run
// either way.
// Each comparison prints a CHECK line (tests/kernels/cuda_test_util.h) with its error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/device_context.h"
#include "core/dtype.h"
#include "core/error.h"
#include "infer/engine.h"
#include "infer/gpu/gpu_inference_model.h"
#include "infer/inference_model.h"
#include "infer/infer_test_util.h"
#include "kernels/cuda_test_util.h"

namespace frugal {
namespace {

using infer::DecodeWeights;
using infer::GpuInferenceModel;
using infer::InferenceModel;
using infer::PagedLatentCache;
using infer::Rows;

// Relative RMS error ||gpu - cpu||_2 / ||cpu||_2. The GPU rounds every GEMM input, the absorbed
// query, o_lat and the latent cache to BF16, or quantizes the Linears' inputs and weights to E4M3
// (2^-4 relative precision). Measured on an H200: one layer (the MTP checks) 0.4-0.6e-2 in BF16
// and 6-9e-2 in FP8; the tiny main models, whose random weights (std 1.5/sqrt(hidden)) grow the
// activations layer by layer, 0.6-2.4e-2 in BF16 and 0.12-0.28 in FP8. A wrong index, scale,
// position or expert gives O(1). The max error relative to max |cpu| is printed too.
constexpr double kBf16LogitTolerance = 4e-2;
constexpr double kFp8LogitTolerance = 4e-1;
// The engine test's "clear prefix" margin (relative to max |logit|): above the largest max error
// the BF16 comparisons have shown (4.3e-2).
constexpr double kClearMargin = 8e-2;

void expect_close_rms(const std::string& op, const std::string& shape,
                      const std::vector<float>& gpu, const std::vector<float>& cpu,
                      double tolerance) {
  ASSERT_EQ(gpu.size(), cpu.size()) << op << " " << shape;
  double diff2 = 0, ref2 = 0, max_diff = 0, max_ref = 0;
  bool finite = true;
  for (size_t i = 0; i < cpu.size(); ++i) {
    finite = finite && std::isfinite(gpu[i]);
    const double d = static_cast<double>(gpu[i]) - cpu[i];
    diff2 += d * d;
    ref2 += static_cast<double>(cpu[i]) * cpu[i];
    max_diff = std::max(max_diff, std::fabs(d));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(cpu[i])));
  }
  const double rms = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  const bool ok = finite && rms <= tolerance;
  std::printf("CHECK | %-28s | %-22s | rel rms err %9.2e | max rel err %9.2e | %s\n", op.c_str(),
              shape.c_str(), rms, max_ref > 0 ? max_diff / max_ref : max_diff, ok ? "ok" : "FAIL");
  EXPECT_TRUE(ok) << op << " " << shape << ": relative RMS error " << rms << " (tolerance "
                  << tolerance << ")" << (finite ? "" : ", non-finite values");
}

// Every Linear of the blocks a multiple of 128 (kv_a_proj_with_mqa, 128 + 64 outputs, stays BF16
// as in V3), so FP8 weights run through the block-scaled GEMMs.
ModelConfig fp8_config() {
  ModelConfig c = testing::infer_config();
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.moe_intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.q_lora_rank = 128;
  c.kv_lora_rank = 128;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 64;
  c.n_routed_experts = 4;
  c.n_group = 2;
  c.topk_group = 1;
  c.num_experts_per_tok = 2;
  return c;
}

// Every token to every expert: no routing choice left to flip (see the top of the file).
ModelConfig all_experts(ModelConfig c) {
  c.num_experts_per_tok = c.n_routed_experts;
  c.topk_group = c.n_group;
  return c;
}

enum class Routing { AllExperts, BiasedTopK };

double weight_std(const ModelConfig& cfg) { return 1.5 / std::sqrt(double(cfg.hidden_size)); }

// Two sequences whose pages interleave, after a third took and returned pages (so the free list
// is out of order): sequence a gets `length_a` positions, b `length_b`. Run on both caches with the
// same calls, so their page tables agree.
struct Sequences {
  int64_t a = -1, b = -1;
};
Sequences open_shuffled(PagedLatentCache& cache, int64_t length_a, int64_t length_b) {
  const int64_t filler = cache.open_sequence();
  EXPECT_TRUE(cache.grow(filler, 3 * cache.page_size()));
  Sequences s;
  s.a = cache.open_sequence();
  EXPECT_TRUE(cache.grow(s.a, 1));
  cache.close_sequence(filler);
  s.b = cache.open_sequence();
  for (int64_t step = 1; step <= std::max(length_a, length_b); ++step) {
    if (step <= length_a) {
      EXPECT_TRUE(cache.grow(s.a, step));
    }
    if (step <= length_b) {
      EXPECT_TRUE(cache.grow(s.b, step));
    }
  }
  return s;
}

std::vector<int64_t> all_rows(int64_t n) {
  std::vector<int64_t> rows(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) rows[i] = i;
  return rows;
}

// The weights the GPU model keeps in BF16 (every matrix but the embedding table and the fp32
// router), rounded to BF16 in the CPU model too: the comparison then measures the GPU's
// activation rounding (and FP8 quantization), not the rounding of the weights themselves.
void round_gpu_bf16_weights(Transformer<float>& model) {
  for (auto& p : model.params().all()) {
    if (p->shape.size() != 2 || p->name.find("embed_tokens") != std::string::npos ||
        p->name.ends_with("mlp.gate.weight"))
      continue;
    for (auto& v : p->value) v = round_to_bf16(v);
  }
}

void compare_forward(const std::string& name, const ModelConfig& cfg, DecodeWeights weights,
                     double tolerance, uint64_t seed, Routing routing = Routing::AllExperts) {
  Transformer<float> model(cfg);
  testing::randomize(model, seed, weight_std(cfg));
  if (routing == Routing::BiasedTopK) {
    int64_t biases = 0;
    for (auto& p : model.params().all())
      if (p->name.find("e_score_correction_bias") != std::string::npos) {
        for (int64_t e = 0; e < p->numel(); ++e) p->value[e] = 2.0f * static_cast<float>(e);
        ++biases;
      }
    ASSERT_GT(biases, 0) << "BiasedTopK needs a noaux_tc config";
  }
  round_gpu_bf16_weights(model);
  const InferenceModel cpu_model(model);
  cuda::DeviceContext ctx(0);
  infer::GpuInferenceOptions options;
  options.weights = weights;
  const GpuInferenceModel gpu_model(ctx, cfg, infer::weights_of(model), options);
  std::printf("%s: %s, %.2f MiB of weights\n", name.c_str(), gpu_model.describe().c_str(),
              gpu_model.weight_bytes() / 1048576.0);
  const std::string label = name + " " + infer::decode_weights_name(weights);

  constexpr int64_t kPageSize = 4, kPages = 24, kLengthA = 11, kLengthB = 6, kDecodeSteps = 3;
  PagedLatentCache cpu_cache = cpu_model.make_cache(false, kPageSize, kPages);
  PagedLatentCache gpu_cache = gpu_model.make_cache(false, kPageSize, kPages);
  const Sequences cs = open_shuffled(cpu_cache, kLengthA, kLengthB);
  const Sequences gs = open_shuffled(gpu_cache, kLengthA, kLengthB);
  ASSERT_EQ(cpu_cache.page_table(cs.a), gpu_cache.page_table(gs.a));
  ASSERT_GE(static_cast<int64_t>(gpu_cache.page_table(gs.a).size()), 3);

  const std::vector<int32_t> tokens_a =
      testing::random_tokens(kLengthA + kDecodeSteps, cfg.vocab_size, seed + 1);
  const std::vector<int32_t> tokens_b =
      testing::random_tokens(kLengthB + kDecodeSteps, cfg.vocab_size, seed + 2);

  // Prefill: a's rows, then b's.
  Rows cpu_rows, gpu_rows;
  for (int64_t p = 0; p < kLengthA; ++p) {
    cpu_rows.add(tokens_a[p], p, cs.a);
    gpu_rows.add(tokens_a[p], p, gs.a);
  }
  for (int64_t p = 0; p < kLengthB; ++p) {
    cpu_rows.add(tokens_b[p], p, cs.b);
    gpu_rows.add(tokens_b[p], p, gs.b);
  }
  std::vector<float> cpu_logits, gpu_logits, cpu_hidden, gpu_hidden;
  cpu_model.forward(cpu_rows, cpu_cache, all_rows(cpu_rows.size()), &cpu_logits, &cpu_hidden);
  gpu_model.forward(gpu_rows, gpu_cache, all_rows(gpu_rows.size()), &gpu_logits, &gpu_hidden);
  const std::string prefill_shape = std::to_string(cpu_rows.size()) + " rows";
  expect_close_rms(label + " prefill logits", prefill_shape, gpu_logits, cpu_logits,
                        tolerance);
  expect_close_rms(label + " prefill hidden", prefill_shape, gpu_hidden, cpu_hidden,
                        tolerance);

  // Decode steps: one row per sequence (b first this time), logits of the second row only on
  // the last step (logit_rows is a subset).
  for (int64_t step = 0; step < kDecodeSteps; ++step) {
    const int64_t pa = kLengthA + step, pb = kLengthB + step;
    ASSERT_TRUE(cpu_cache.grow(cs.a, pa + 1) && cpu_cache.grow(cs.b, pb + 1));
    ASSERT_TRUE(gpu_cache.grow(gs.a, pa + 1) && gpu_cache.grow(gs.b, pb + 1));
    cpu_rows.clear();
    gpu_rows.clear();
    cpu_rows.add(tokens_b[pb], pb, cs.b);
    cpu_rows.add(tokens_a[pa], pa, cs.a);
    gpu_rows.add(tokens_b[pb], pb, gs.b);
    gpu_rows.add(tokens_a[pa], pa, gs.a);
    const std::vector<int64_t> logit_rows =
        step + 1 == kDecodeSteps ? std::vector<int64_t>{1} : std::vector<int64_t>{0, 1};
    cpu_model.forward(cpu_rows, cpu_cache, logit_rows, &cpu_logits, nullptr);
    gpu_model.forward(gpu_rows, gpu_cache, logit_rows, &gpu_logits, nullptr);
    expect_close_rms(label + " decode logits", "step " + std::to_string(step), gpu_logits,
                          cpu_logits, tolerance);
  }

  if (!gpu_model.has_mtp()) return;
  // MTP over a's first kLengthA - 1 positions: row p = (t_{p+1}, h_p), h from the CPU model (so
  // this compares the MTP module alone).
  PagedLatentCache cpu_mtp = cpu_model.make_cache(true, kPageSize, kPages);
  PagedLatentCache gpu_mtp = gpu_model.make_cache(true, kPageSize, kPages);
  const int64_t mtp_rows = kLengthA - 1;
  const Sequences cm = open_shuffled(cpu_mtp, mtp_rows, 1);
  const Sequences gm = open_shuffled(gpu_mtp, mtp_rows, 1);
  cpu_rows.clear();
  gpu_rows.clear();
  for (int64_t p = 0; p < mtp_rows; ++p) {
    cpu_rows.add(tokens_a[p + 1], p, cm.a);
    gpu_rows.add(tokens_a[p + 1], p, gm.a);
  }
  const std::vector<float> hidden(cpu_hidden.begin(),
                                  cpu_hidden.begin() + mtp_rows * cfg.hidden_size);
  cpu_model.forward_mtp(cpu_rows, hidden.data(), cpu_mtp, all_rows(mtp_rows), &cpu_logits);
  gpu_model.forward_mtp(gpu_rows, hidden.data(), gpu_mtp, all_rows(mtp_rows), &gpu_logits);
  expect_close_rms(label + " mtp logits", std::to_string(mtp_rows) + " rows", gpu_logits,
                        cpu_logits, tolerance);
}

TEST(GpuInferenceModel, MatchesTheCpuReferenceV3Bf16) {
  compare_forward("v3-tiny", all_experts(testing::infer_config()), DecodeWeights::Bf16,
                  kBf16LogitTolerance, 41);
}

TEST(GpuInferenceModel, MatchesTheCpuReferenceV3BiasedTopK) {
  compare_forward("v3-tiny biased top-k", testing::infer_config(), DecodeWeights::Bf16,
                  kBf16LogitTolerance, 42, Routing::BiasedTopK);
}

TEST(GpuInferenceModel, MatchesTheCpuReferenceDims128Fp8BiasedTopK) {
  compare_forward("dims128 biased top-k", fp8_config(), DecodeWeights::Fp8, kFp8LogitTolerance,
                  48, Routing::BiasedTopK);
}

TEST(GpuInferenceModel, MatchesTheCpuReferenceV2Bf16) {
  compare_forward("v2-tiny", all_experts(testing::infer_config_v2()), DecodeWeights::Bf16,
                  kBf16LogitTolerance, 43);
}

TEST(GpuInferenceModel, MatchesTheCpuReferenceDims128Bf16) {
  compare_forward("dims128", all_experts(fp8_config()), DecodeWeights::Bf16, kBf16LogitTolerance,
                  47);
}

TEST(GpuInferenceModel, MatchesTheCpuReferenceDims128Fp8) {
  compare_forward("dims128", all_experts(fp8_config()), DecodeWeights::Fp8, kFp8LogitTolerance,
                  47);
}

TEST(GpuInferenceModel, Fp8NeedsDimsOf128) {
  const ModelConfig cfg = testing::infer_config();  // hidden 24
  cuda::DeviceContext ctx(0);
  infer::GpuInferenceOptions options;
  options.weights = DecodeWeights::Fp8;
  EXPECT_THROW(GpuInferenceModel(ctx, cfg, infer::random_weights(1, 0.1), options), Error);
}

// ---- the engine on the GPU model ----

infer::Request greedy_request(std::vector<int32_t> prompt, int64_t max_new) {
  infer::Request r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.ignore_eos = true;
  return r;
}

std::vector<infer::Completion> run_engine(const infer::GenerationModel& model,
                                          const std::vector<infer::Request>& requests,
                                          bool speculative, infer::EngineStats* stats) {
  infer::EngineOptions options;
  options.max_batch = 4;
  options.page_size = 4;
  options.max_context = 48;
  options.speculative = speculative;
  infer::Engine engine(model, options);
  for (const infer::Request& r : requests) engine.submit(r);
  std::vector<infer::Completion> out = engine.run();
  EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
  if (stats != nullptr) *stats = engine.stats();
  return out;
}

// The number of leading generated tokens whose CPU logits (teacher-forced on the CPU's own
// tokens) have a top-2 margin of at least `relative_margin` * max |logit| of that row.
int64_t clear_prefix(const InferenceModel& cpu_model, const std::vector<int32_t>& prompt,
                     const std::vector<int32_t>& generated, double relative_margin) {
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  const int64_t total = prompt_len + static_cast<int64_t>(generated.size());
  const int64_t vocab = cpu_model.config().vocab_size;
  PagedLatentCache cache = cpu_model.make_cache(false, 8, (total + 7) / 8);
  const int64_t seq = cache.open_sequence();
  EXPECT_TRUE(cache.grow(seq, total));
  Rows rows;
  std::vector<int64_t> logit_rows;
  for (int64_t p = 0; p < total; ++p) {
    rows.add(p < prompt_len ? prompt[p] : generated[p - prompt_len], p, seq);
    if (p >= prompt_len - 1 && p < total - 1) logit_rows.push_back(p);
  }
  std::vector<float> logits;
  cpu_model.forward(rows, cache, logit_rows, &logits, nullptr);
  for (size_t i = 0; i < logit_rows.size(); ++i) {
    std::vector<float> row(logits.begin() + i * vocab, logits.begin() + (i + 1) * vocab);
    float scale = 0;
    for (float v : row) scale = std::max(scale, std::fabs(v));
    std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<float>());
    if (row[0] - row[1] < relative_margin * scale) return static_cast<int64_t>(i);
  }
  return static_cast<int64_t>(generated.size());
}

TEST(GpuInferenceModel, EngineGreedyMatchesTheCpuEngine) {
  const ModelConfig cfg = all_experts(testing::infer_config());
  Transformer<float> model(cfg);
  testing::randomize(model, 53, weight_std(cfg));
  round_gpu_bf16_weights(model);
  const InferenceModel cpu_model(model);
  cuda::DeviceContext ctx(0);
  const GpuInferenceModel gpu_model(ctx, cfg, infer::weights_of(model));

  std::vector<infer::Request> requests;
  requests.push_back(greedy_request(testing::random_tokens(5, cfg.vocab_size, 61), 12));
  requests.push_back(greedy_request(testing::random_tokens(9, cfg.vocab_size, 62), 10));
  requests.push_back(greedy_request(testing::random_tokens(2, cfg.vocab_size, 63), 14));
  infer::EngineStats spec_stats;
  const auto cpu_out = run_engine(cpu_model, requests, false, nullptr);
  const auto gpu_out = run_engine(gpu_model, requests, false, nullptr);
  const auto gpu_spec = run_engine(gpu_model, requests, true, &spec_stats);
  ASSERT_EQ(cpu_out.size(), requests.size());
  ASSERT_EQ(gpu_out.size(), requests.size());
  ASSERT_EQ(gpu_spec.size(), requests.size());
  // Tokens are compared up to the first CPU choice whose margin is below kClearMargin: past a near tie the GPU may rightly pick the other token, and then everything
  // after differs. Up to there the choices are stable under the GPU's rounding.
  int64_t compared = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t prefix =
        clear_prefix(cpu_model, requests[i].prompt, cpu_out[i].tokens, kClearMargin);
    compared += prefix;
    const auto head = [prefix](const std::vector<int32_t>& t) {
      return std::vector<int32_t>(t.begin(), t.begin() + std::min<int64_t>(prefix, t.size()));
    };
    const bool same = head(gpu_out[i].tokens) == head(cpu_out[i].tokens);
    const bool spec_same = head(gpu_spec[i].tokens) == head(gpu_out[i].tokens);
    std::printf("CHECK | %-28s | %-22s | %lld of %zu tokens compared | %s\n",
                "engine greedy gpu vs cpu", ("request " + std::to_string(i)).c_str(),
                static_cast<long long>(prefix), cpu_out[i].tokens.size(),
                same && spec_same ? "ok" : "FAIL");
    EXPECT_TRUE(same) << "request " << i << ": the GPU engine's greedy tokens differ from the "
                      << "CPU's within the first " << prefix << " (clear) choices";
    EXPECT_TRUE(spec_same) << "request " << i << ": speculative greedy differs from plain "
                           << "greedy on the GPU within the first " << prefix << " choices";
    EXPECT_EQ(gpu_out[i].tokens.size(), cpu_out[i].tokens.size());
    EXPECT_EQ(gpu_spec[i].tokens.size(), cpu_out[i].tokens.size());
  }
  std::printf("engine: %lld tokens compared; speculative drafted %lld, accepted %lld\n",
              static_cast<long long>(compared), static_cast<long long>(spec_stats.drafted),
              static_cast<long long>(spec_stats.accepted));
  EXPECT_GT(spec_stats.drafted, 0) << "the speculative engine never ran the GPU MTP module";
}

// ---- weights ----

TEST(GpuInferenceModel, RandomWeightsAreDeterministic) {
  const infer::WeightSource a = infer::random_weights(7, 0.02), b = infer::random_weights(7, 0.02);
  const infer::WeightSource other_seed = infer::random_weights(8, 0.02);
  const std::vector<int64_t> shape{16, 8};
  std::vector<float> x(128), y(128), z(128), w(128);
  a("model.layers.0.self_attn.o_proj.weight", shape, x);
  b("model.layers.0.self_attn.o_proj.weight", shape, y);
  a("model.layers.0.self_attn.q_a_proj.weight", shape, z);
  other_seed("model.layers.0.self_attn.o_proj.weight", shape, w);
  EXPECT_EQ(x, y);
  EXPECT_NE(x, z);
  EXPECT_NE(x, w);
  double sum_sq = 0;
  for (float v : x) sum_sq += double(v) * v;
  const double rms = std::sqrt(sum_sq / x.size());
  EXPECT_GT(rms, 0.01);
  EXPECT_LT(rms, 0.04);
  std::vector<float> norm(8, -1.0f), bias(4, -1.0f);
  a("model.layers.0.input_layernorm.weight", {8}, norm);
  a("model.layers.1.mlp.gate.e_score_correction_bias", {4}, bias);
  EXPECT_EQ(norm, std::vector<float>(8, 1.0f));
  EXPECT_EQ(bias, std::vector<float>(4, 0.0f));

  // Two GPU models from the same random weights give the same logits, bit for bit.
  const ModelConfig cfg = testing::infer_config();
  cuda::DeviceContext ctx(0);
  std::vector<std::vector<float>> logits(2);
  for (int run = 0; run < 2; ++run) {
    const GpuInferenceModel model(ctx, cfg, infer::random_weights(11, 0.2));
    PagedLatentCache cache = model.make_cache(false, 4, 8);
    const int64_t seq = cache.open_sequence();
    ASSERT_TRUE(cache.grow(seq, 7));
    Rows rows;
    const std::vector<int32_t> tokens = testing::random_tokens(7, cfg.vocab_size, 5);
    for (int64_t p = 0; p < 7; ++p) rows.add(tokens[p], p, seq);
    model.forward(rows, cache, {6}, &logits[run], nullptr);
  }
  bool finite = true;
  for (float v : logits[0]) finite = finite && std::isfinite(v);
  EXPECT_TRUE(finite);
  testing::expect_same_bits("random_weights model logits", "7 rows", logits[0], logits[1]);
}

TEST(GpuInferenceModel, ParseDecodeWeights) {
  EXPECT_EQ(infer::parse_decode_weights("bf16"), DecodeWeights::Bf16);
  EXPECT_EQ(infer::parse_decode_weights("fp8"), DecodeWeights::Fp8);
  EXPECT_STREQ(infer::decode_weights_name(DecodeWeights::Fp8), "fp8");
  EXPECT_THROW(infer::parse_decode_weights("int4"), Error);
}

}  // namespace
}  // namespace frugal
