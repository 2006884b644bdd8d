// The GPU pipeline stages (model/gpu/gpu_pipeline_stage.h) chained against the whole GPU model
// (GpuTransformer, itself stage 0 of 1), on a small config with a dense first layer, MoE layers
// with the noaux_tc selection bias and MTP depth 2 (4 layers: S = 3 gives stages of 2, 1, 1).
//   Structure: each stage holds its layers of the split (even: layers_of_stage(L, S, s); also the
//     uneven 0,3,1,0 with empty end stages, run like S = 3); the stages' tensors, concatenated in
//     stage order (the last stage's embedding copy left out), are the whole model's in its order;
//     owns_embedding_copy() is true exactly for a last stage with its own registry.
//   fp32, S = 2 (micro-batches one after the other) and S = 3 (both forwards, then both
//     backwards: two Runs alive on every stage), each stage in its own registry, weights copied by
//     name from the whole model: per micro-batch the summed StageLosses through finish_losses
//     equal the whole model's Losses (<= 1e-6 relative); every stage's record is zero outside its
//     own layers (the CE terms on the last stage only); after both backwards (doutput of stage s =
//     dinput of stage s+1) every gradient, summed over the stages that hold the tensor (the
//     embedding: stage 0 plus the last stage's copy), equals the whole model's (<= 1e-5 of the
//     tensor's max |g|); the expert load of the stages equals the whole model's.
//   Shared embedding, S = 3 with stages 0 and 2 in one registry: the table is registered once
//     (owns_embedding_copy() false) and its gradient equals the whole model's.
//   bf16 recipe, S = 3: losses within 1e-2 relative of the fp32 whole model, and within 1e-4 of
//     the bf16 whole model (the same code on the same inputs).
//   Errors: a middle stage without input, a second backward of one Run, more stages than layers.
//   Zero-bubble W deferral (backward_input / backward_weight), per recipe fp32, bf16, fp8 on the
//     FP8-sized config (every block Linear and the routed experts in FP8 under fp8), S = 2: the
//     two micro-batches run F,F,B(deferred),B(deferred),W,W on one pipeline and F,B,F,B with the
//     whole backward on a second one with the same weights. Bitwise equal: the losses, the input
//     gradients of stage 1 and every parameter gradient (W replays the GEMMs the whole backward
//     runs, on bitwise equal operands, in micro-batch order: the same += sequence per weight).
//     Also: after the deferred B's a Linear's gradient is still zero while its block's RMSNorm
//     gradient is not; each Run holds bytes and exactly the stage's Linear + expert matrices'
//     GEMMs (stage 0: 7 + 9, stage 1: 2 * 9 + 2 * 10), which backward_weight reports; a second
//     B of a deferred Run and a W without a deferred Run are refused.
// Every comparison prints "CHECK | case | what | numbers | ok/FAIL" so one GPU run tells which
// stage or tensor is off.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/device_context.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/gpu/gpu_common.h"
#include "model/gpu/gpu_pipeline_stage.h"
#include "model/gpu/gpu_transformer.h"
#include "model/tiny_model_config.h"
#include "model/transformer.h"
#include "parallel/pipeline_stage.h"
#include "test_util.h"

namespace frugal {
namespace {

using cuda::DeviceArray;
using cuda::DeviceContext;
using gpu::DeviceParam;
using gpu::GpuPipelineStage;
using gpu::GpuTransformer;
using gpu::ParamRegistry;

const LossWeights kStageWeights{0.3, 0.02};
constexpr double kScale = 0.75;
const char* const kEmbed = "model.embed_tokens.weight";

ModelConfig stage_config() {
  ModelConfig c = testing::tiny_model_config();
  c.num_hidden_layers = 4;  // dense layer 0, MoE layers 1..3
  c.first_k_dense_replace = 1;
  c.num_nextn_predict_layers = 2;
  c.topk_method = "noaux_tc";
  return c;
}

struct MicroBatch {
  int64_t batch = 0, seq = 0;
  std::vector<int32_t> tokens, targets;  // [batch*seq]
  int64_t rows() const { return batch * seq; }
};

// Two micro-batches of different shapes; a few ignored targets.
std::vector<MicroBatch> micro_batches(int64_t vocab) {
  std::vector<MicroBatch> out;
  const int64_t shapes[2][2] = {{2, 7}, {3, 5}};
  for (int m = 0; m < 2; ++m) {
    MicroBatch b;
    b.batch = shapes[m][0];
    b.seq = shapes[m][1];
    RandomStream rng(101 + m, 9);
    for (int64_t i = 0; i < b.rows(); ++i) {
      b.tokens.push_back(static_cast<int32_t>(rng.uniform(2 * i) * static_cast<double>(vocab)));
      b.targets.push_back(
          static_cast<int32_t>(rng.uniform(2 * i + 1) * static_cast<double>(vocab)));
    }
    b.targets[1] = -1;
    b.targets[b.rows() - 2] = -1;
    out.push_back(std::move(b));
  }
  return out;
}

std::vector<float> to_host(const float* device, int64_t n) {
  std::vector<float> host(static_cast<size_t>(n));
  FRUGAL_CUDA_CHECK(cudaMemcpy(host.data(), device, host.size() * sizeof(float),
                               cudaMemcpyDeviceToHost));
  return host;
}

double relative(double got, double want) {
  return std::fabs(got - want) / std::max(std::fabs(want), 1e-9);
}

// The whole model on the GPU: uploaded from a random CPU model, both micro-batches run.
struct WholeModel {
  std::unique_ptr<GpuTransformer> model;
  std::vector<Losses> losses;  // per micro-batch
  std::map<std::string, std::vector<float>> grads;
  std::vector<ExpertLoad> load;
};

WholeModel run_whole(DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe,
                     const std::vector<MicroBatch>& batches) {
  Transformer<float> cpu(cfg);
  cpu.init_weights(17, 0.25);
  for (auto& p : cpu.params().all())  // a selection bias that changes the routing
    if (!p->trainable)
      for (int64_t i = 0; i < p->numel(); ++i)
        p->value[i] = 0.04f * static_cast<float>((i * 7) % 5) - 0.08f;
  WholeModel whole;
  whole.model = std::make_unique<GpuTransformer>(ctx, cfg, recipe);
  whole.model->upload(cpu.params());
  whole.model->zero_grad();
  for (const MicroBatch& b : batches)
    whole.losses.push_back(whole.model->forward_backward(b.tokens.data(), b.targets.data(),
                                                         b.batch, b.seq, kStageWeights, kScale));
  ctx.synchronize();
  for (const DeviceParam& p : whole.model->params())
    if (p.trainable) whole.grads[p.name] = to_host(p.grad, p.count);
  whole.load = whole.model->expert_load();
  return whole;
}

// The stages of one pipeline: registry_of[s] says which registry stage s registers into.
struct Pipeline {
  std::vector<std::unique_ptr<ParamRegistry>> registries;
  std::vector<std::unique_ptr<GpuPipelineStage>> stages;
  std::vector<int> registry_of;
  StageLayout layout;  // the layers of each stage
};

// layout: the stage split (parallel/stage_layout.h); empty: the even split.
Pipeline build_pipeline(DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe,
                        const std::vector<int>& registry_of, GpuTransformer& weights,
                        const StageLayout& layout = {}) {
  Pipeline p;
  p.registry_of = registry_of;
  p.layout = layout.layers.empty()
                 ? even_stage_layout(cfg.num_hidden_layers, static_cast<int>(registry_of.size()))
                 : layout;
  const int registries = *std::max_element(registry_of.begin(), registry_of.end()) + 1;
  for (int r = 0; r < registries; ++r) p.registries.push_back(std::make_unique<ParamRegistry>(ctx));
  const int stages = static_cast<int>(registry_of.size());
  for (int s = 0; s < stages; ++s)
    p.stages.push_back(layout.layers.empty()
                           ? std::make_unique<GpuPipelineStage>(
                                 ctx, *p.registries[registry_of[s]], cfg, recipe, s, stages)
                           : std::make_unique<GpuPipelineStage>(
                                 ctx, *p.registries[registry_of[s]], cfg, recipe, layout, s));
  std::map<std::string, const DeviceParam*> source;
  for (const DeviceParam& w : weights.params()) source[w.name] = &w;
  for (auto& registry : p.registries)
    for (const DeviceParam& param : registry->params()) {
      const auto it = source.find(param.name);
      if (it == source.end()) ADD_FAILURE() << "the whole model has no tensor " << param.name;
      if (it == source.end()) continue;
      EXPECT_EQ(param.shape, it->second->shape) << param.name;
      FRUGAL_CUDA_CHECK(cudaMemcpy(param.value, it->second->value,
                                   static_cast<size_t>(param.count) * sizeof(float),
                                   cudaMemcpyDeviceToDevice));
    }
  for (auto& stage : p.stages) stage->refresh();
  for (auto& registry : p.registries) registry->zero_grad();
  ctx.synchronize();
  return p;
}

// One micro-batch in flight through the pipeline.
struct InFlight {
  std::vector<std::unique_ptr<GpuPipelineStage::Run>> runs;  // [stages]
  std::vector<DeviceArray<float>> acts, dacts;                // [stages-1] stage s -> s+1
  std::vector<StageLosses> records;                           // [stages]
};

void pipeline_forward(DeviceContext& ctx, Pipeline& p, const ModelConfig& cfg,
                      const MicroBatch& b, InFlight& f) {
  const int stages = static_cast<int>(p.stages.size());
  const int64_t n = b.rows() * cfg.hidden_size;
  f.runs.resize(stages);
  f.records.resize(stages);
  for (int s = 0; s + 1 < stages; ++s) {
    f.acts.emplace_back(ctx, n);
    f.dacts.emplace_back(ctx, n);
  }
  for (int s = 0; s < stages; ++s) {
    const float* input = s > 0 ? f.acts[s - 1].data() : nullptr;
    float* output = s + 1 < stages ? f.acts[s].data() : nullptr;
    // Poison the stage's record: forward must overwrite every field.
    f.records[s].layer_balance.assign(3, 99.0);
    f.records[s].main = f.records[s].mtp = f.records[s].tokens = 99.0;
    f.records[s].mtp_depths_run = 99.0;
    f.runs[s] = p.stages[s]->forward(input, b.tokens.data(), b.targets.data(), b.batch, b.seq,
                                     kStageWeights, true, output, f.records[s]);
  }
}

void pipeline_backward(Pipeline& p, InFlight& f) {
  for (int s = static_cast<int>(p.stages.size()); s-- > 0;) {
    const float* doutput = s + 1 < static_cast<int>(p.stages.size()) ? f.dacts[s].data() : nullptr;
    float* dinput = s > 0 ? f.dacts[s - 1].data() : nullptr;
    p.stages[s]->backward(f.runs[s], doutput, dinput, kScale);
    EXPECT_EQ(f.runs[s], nullptr) << "backward must release the Run of stage " << s;
  }
}

// Checks each stage's record and returns the losses of their entry-wise sum.
Losses combine_records(const std::string& what, const Pipeline& p, const ModelConfig& cfg,
                       const std::vector<StageLosses>& records) {
  const int64_t slots = cfg.num_hidden_layers + cfg.num_nextn_predict_layers;
  StageLosses all;
  all.layer_balance.assign(static_cast<size_t>(slots), 0.0);
  for (size_t s = 0; s < records.size(); ++s) {
    const StageLosses& r = records[s];
    const GpuPipelineStage& stage = *p.stages[s];
    EXPECT_EQ(static_cast<int64_t>(r.layer_balance.size()), slots) << what << " stage " << s;
    if (static_cast<int64_t>(r.layer_balance.size()) != slots) continue;
    int outside = 0, moe_zero = 0;
    for (int64_t i = 0; i < slots; ++i) {
      const bool mine = (i >= stage.layer_begin() && i < stage.layer_end()) ||
                        (stage.last() && i >= cfg.num_hidden_layers);
      const bool moe = i >= cfg.first_k_dense_replace;
      if (!mine && r.layer_balance[i] != 0) ++outside;
      if (mine && moe && !(r.layer_balance[i] > 0)) ++moe_zero;
      all.layer_balance[i] += r.layer_balance[i];
    }
    const bool ce_ok = stage.last() ? r.main > 0 && r.mtp > 0 && r.mtp_depths_run == 2 &&
                                          r.tokens > 0
                                    : r.main == 0 && r.mtp == 0 && r.mtp_depths_run == 0 &&
                                          r.tokens == 0;
    const bool ok = outside == 0 && moe_zero == 0 && ce_ok;
    std::printf("CHECK | %s | record of stage %zu | main %.6g mtp %.6g depths %g tokens %g | "
                "%d nonzero outside, %d MoE layers without balance | %s\n",
                what.c_str(), s, r.main, r.mtp, r.mtp_depths_run, r.tokens, outside, moe_zero,
                ok ? "ok" : "FAIL");
    EXPECT_TRUE(ok) << what << ": the record of stage " << s << " (see the CHECK line)";
    all.main += r.main;
    all.mtp += r.mtp;
    all.mtp_depths_run += r.mtp_depths_run;
    all.tokens += r.tokens;
  }
  return finish_losses(all, kStageWeights, cfg.num_nextn_predict_layers);
}

void expect_losses(const std::string& what, const Losses& got, const Losses& want,
                   double tolerance) {
  const double pairs[4][2] = {{got.total, want.total},
                              {got.main, want.main},
                              {got.mtp, want.mtp},
                              {got.balance, want.balance}};
  const char* names[4] = {"total", "main", "mtp", "balance"};
  for (int i = 0; i < 4; ++i) {
    const double err = relative(pairs[i][0], pairs[i][1]);
    const bool ok = std::isfinite(pairs[i][0]) && err <= tolerance;
    std::printf("CHECK | %s | loss %s | stages %.10g whole %.10g | rel %.3e (tol %.0e) | %s\n",
                what.c_str(), names[i], pairs[i][0], pairs[i][1], err, tolerance,
                ok ? "ok" : "FAIL");
    EXPECT_TRUE(ok) << what << " loss " << names[i];
  }
  EXPECT_EQ(got.tokens, want.tokens) << what;
}

// The stages' tensors in stage order (the last stage's embedding copy left out) are the whole
// model's, in its order; the layer ranges are the pipeline's layout's.
void expect_structure(const std::string& what, const Pipeline& p, const ModelConfig& cfg,
                      GpuTransformer& whole) {
  const int stages = static_cast<int>(p.stages.size());
  std::vector<std::string> staged;
  std::vector<size_t> cursor(p.registries.size(), 0);
  for (int s = 0; s < stages; ++s) {
    const GpuPipelineStage& stage = *p.stages[s];
    const auto [begin, end] = p.layout.range(s);
    EXPECT_EQ(stage.stage(), s);
    EXPECT_EQ(stage.first(), s == 0);
    EXPECT_EQ(stage.last(), s == stages - 1);
    EXPECT_EQ(stage.layer_begin(), begin) << what << " stage " << s;
    EXPECT_EQ(stage.layer_end(), end) << what << " stage " << s;
    const bool own_registry =
        std::count(p.registry_of.begin(), p.registry_of.end(), p.registry_of[s]) == 1;
    EXPECT_EQ(stage.owns_embedding_copy(), s > 0 && s == stages - 1 && own_registry)
        << what << " stage " << s;
    // This stage's tensors: the next ones of its registry, up to the next stage's first tensor.
    const ParamRegistry& registry = *p.registries[p.registry_of[s]];
    size_t next = registry.params().size();
    for (int t = s + 1; t < stages; ++t)
      if (p.registry_of[t] == p.registry_of[s]) {
        // The later stage on the same registry starts at its first layer's first tensor.
        const std::string prefix = "model.layers." + std::to_string(p.stages[t]->layer_begin()) + ".";
        for (size_t i = cursor[p.registry_of[s]]; i < registry.params().size(); ++i)
          if (registry.params()[i].name.rfind(prefix, 0) == 0) {
            next = i;
            break;
          }
        break;
      }
    for (size_t i = cursor[p.registry_of[s]]; i < next; ++i) {
      const std::string& name = registry.params()[i].name;
      if (!(s > 0 && name == kEmbed)) staged.push_back(name);
    }
    cursor[p.registry_of[s]] = next;
  }
  std::vector<std::string> want;
  for (const DeviceParam& w : whole.params()) want.push_back(w.name);
  const bool ok = staged == want;
  std::printf("CHECK | %s | tensors in stage order | %zu staged, %zu whole | %s\n", what.c_str(),
              staged.size(), want.size(), ok ? "ok" : "FAIL");
  EXPECT_TRUE(ok) << what << ": the stages' tensors are not the whole model's, in order";
  for (size_t i = 0; i < std::min(staged.size(), want.size()); ++i)
    if (staged[i] != want[i]) {
      ADD_FAILURE() << what << ": tensor " << i << " is " << staged[i] << ", want " << want[i];
      break;
    }
}

// Every trainable gradient, summed over the registries that hold the tensor, against the whole
// model's.
void expect_grads(const std::string& what, const Pipeline& p, const WholeModel& whole,
                  double tolerance) {
  std::map<std::string, std::vector<float>> sums;
  std::map<std::string, int> holders;
  for (const auto& registry : p.registries)
    for (const DeviceParam& param : registry->params()) {
      if (!param.trainable) continue;
      const std::vector<float> g = to_host(param.grad, param.count);
      std::vector<float>& sum = sums[param.name];
      if (sum.empty()) sum.assign(g.size(), 0.0f);
      for (size_t i = 0; i < g.size(); ++i) sum[i] += g[i];
      ++holders[param.name];
    }
  int failures = 0;
  double worst = 0;
  for (const auto& [name, want] : whole.grads) {
    const auto it = sums.find(name);
    if (it == sums.end() || it->second.size() != want.size()) {
      ADD_FAILURE() << what << ": no stage holds " << name;
      ++failures;
      continue;
    }
    double max_ref = 0, max_diff = 0;
    int64_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (!std::isfinite(it->second[i])) ++bad;
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(it->second[i]) - want[i]));
    }
    const double rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    worst = std::max(worst, rel);
    const bool ok = bad == 0 && rel <= tolerance;
    if (!ok) ++failures;
    std::printf("CHECK | %s | grad %s (%d holder%s) | max|ref| %.3e rel %.3e | %s\n",
                what.c_str(), name.c_str(), holders[name], holders[name] == 1 ? "" : "s", max_ref,
                rel, ok ? "ok" : "FAIL");
  }
  EXPECT_EQ(sums.size(), whole.grads.size()) << what << ": the stages hold other tensors";
  std::printf("CHECK | %s | all gradients | worst rel %.3e | %d failing\n", what.c_str(), worst,
              failures);
  EXPECT_EQ(failures, 0) << what << ": see the CHECK lines";
}

void expect_expert_load(const std::string& what, Pipeline& p, const WholeModel& whole) {
  std::vector<ExpertLoad> staged;
  for (auto& stage : p.stages)
    for (const ExpertLoad& l : stage->expert_load()) staged.push_back(l);
  ASSERT_EQ(staged.size(), whole.load.size()) << what;
  for (size_t i = 0; i < staged.size(); ++i) {
    const bool ok = staged[i].layer == whole.load[i].layer &&
                    std::fabs(staged[i].max_over_mean - whole.load[i].max_over_mean) <= 1e-12;
    std::printf("CHECK | %s | expert load %s | stages %.6f whole %.6f | %s\n", what.c_str(),
                staged[i].layer.c_str(), staged[i].max_over_mean, whole.load[i].max_over_mean,
                ok ? "ok" : "FAIL");
    EXPECT_TRUE(ok) << what << ": expert load of " << whole.load[i].layer;
  }
}

enum class Schedule { OneAfterTheOther, ForwardsThenBackwards };

// Runs the micro-batches through `p` and returns their losses.
std::vector<Losses> run_pipeline(DeviceContext& ctx, Pipeline& p, const ModelConfig& cfg,
                                 const std::vector<MicroBatch>& batches, Schedule schedule,
                                 const std::string& what) {
  std::vector<InFlight> flights(batches.size());
  std::vector<Losses> losses;
  for (size_t m = 0; m < batches.size(); ++m) {
    pipeline_forward(ctx, p, cfg, batches[m], flights[m]);
    losses.push_back(combine_records(what + " mb" + std::to_string(m), p, cfg, flights[m].records));
    if (schedule == Schedule::OneAfterTheOther) pipeline_backward(p, flights[m]);
  }
  if (schedule == Schedule::ForwardsThenBackwards)
    for (InFlight& f : flights) pipeline_backward(p, f);
  ctx.synchronize();
  return losses;
}

void check_fp32_pipeline(const std::vector<int>& registry_of, Schedule schedule,
                         const std::string& what, const StageLayout& layout = {}) {
  DeviceContext ctx;
  const ModelConfig cfg = stage_config();
  const std::vector<MicroBatch> batches = micro_batches(cfg.vocab_size);
  WholeModel whole = run_whole(ctx, cfg, Recipe::Fp32, batches);
  Pipeline p = build_pipeline(ctx, cfg, Recipe::Fp32, registry_of, *whole.model, layout);
  expect_structure(what, p, cfg, *whole.model);
  const std::vector<Losses> losses = run_pipeline(ctx, p, cfg, batches, schedule, what);
  for (size_t m = 0; m < batches.size(); ++m) {
    EXPECT_GT(whole.losses[m].mtp, 0);
    EXPECT_GT(whole.losses[m].balance, 0);
    expect_losses(what + " mb" + std::to_string(m), losses[m], whole.losses[m], 1e-6);
  }
  expect_grads(what, p, whole, 1e-5);
  expect_expert_load(what, p, whole);
}

TEST(GpuPipelineStage, TwoStagesEqualTheWholeModelFp32) {
  check_fp32_pipeline({0, 1}, Schedule::OneAfterTheOther, "fp32 S=2");
}

TEST(GpuPipelineStage, ThreeStagesWithTwoRunsInFlightEqualTheWholeModelFp32) {
  check_fp32_pipeline({0, 1, 2}, Schedule::ForwardsThenBackwards, "fp32 S=3");
}

// An uneven split with empty end stages (the embedding alone, the head + MTP + losses alone).
TEST(GpuPipelineStage, UnevenStagesWithEmptyEndsEqualTheWholeModelFp32) {
  check_fp32_pipeline({0, 1, 2, 3}, Schedule::ForwardsThenBackwards, "fp32 split 0,3,1,0",
                      StageLayout{{0, 3, 1, 0}});
}

TEST(GpuPipelineStage, FirstAndLastStageShareTheEmbeddingInOneRegistry) {
  check_fp32_pipeline({0, 1, 0}, Schedule::ForwardsThenBackwards, "fp32 S=3 shared embedding");
  DeviceContext ctx;
  const ModelConfig cfg = stage_config();
  ParamRegistry shared(ctx), middle(ctx);
  GpuPipelineStage first(ctx, shared, cfg, Recipe::Fp32, 0, 3);
  GpuPipelineStage second(ctx, middle, cfg, Recipe::Fp32, 1, 3);
  GpuPipelineStage last(ctx, shared, cfg, Recipe::Fp32, 2, 3);
  EXPECT_FALSE(last.owns_embedding_copy());
  int tables = 0;
  for (const DeviceParam& param : shared.params()) tables += param.name == kEmbed;
  EXPECT_EQ(tables, 1) << "the embedding must be registered once in the shared registry";
  EXPECT_EQ(middle.find(kEmbed), nullptr) << "a middle stage holds no embedding";
  ASSERT_NE(shared.find(kEmbed), nullptr);
  EXPECT_EQ(shared.find(kEmbed)->shape, (std::vector<int64_t>{cfg.vocab_size, cfg.hidden_size}));
  EXPECT_EQ(shared.find("no.such.tensor"), nullptr);
}

TEST(GpuPipelineStage, Bf16StagesMatchTheWholeModel) {
  DeviceContext ctx;
  const ModelConfig cfg = stage_config();
  const std::vector<MicroBatch> batches = micro_batches(cfg.vocab_size);
  WholeModel fp32 = run_whole(ctx, cfg, Recipe::Fp32, batches);
  WholeModel bf16 = run_whole(ctx, cfg, Recipe::Bf16, batches);
  // The masters are fp32 in every recipe: the fp32 model's tensors are the bf16 stages' weights.
  Pipeline p = build_pipeline(ctx, cfg, Recipe::Bf16, {0, 1, 2}, *fp32.model);
  const std::vector<Losses> losses =
      run_pipeline(ctx, p, cfg, batches, Schedule::ForwardsThenBackwards, "bf16 S=3");
  for (size_t m = 0; m < batches.size(); ++m) {
    expect_losses("bf16 S=3 vs fp32 whole mb" + std::to_string(m), losses[m], fp32.losses[m],
                  1e-2);
    expect_losses("bf16 S=3 vs bf16 whole mb" + std::to_string(m), losses[m], bf16.losses[m],
                  1e-4);
  }
}

TEST(GpuPipelineStage, RefusesMisuse) {
  DeviceContext ctx;
  const ModelConfig cfg = stage_config();
  const std::vector<MicroBatch> batches = micro_batches(cfg.vocab_size);
  const MicroBatch& b = batches[0];
  ParamRegistry r0(ctx), r1(ctx);
  GpuPipelineStage first(ctx, r0, cfg, Recipe::Fp32, 0, 2);
  GpuPipelineStage last(ctx, r1, cfg, Recipe::Fp32, 1, 2);
  StageLosses losses;
  std::string message = testing::error_message([&] {
    last.forward(nullptr, b.tokens.data(), b.targets.data(), b.batch, b.seq, kStageWeights, true,
                 nullptr, losses);
  });
  EXPECT_NE(message.find("needs an input"), std::string::npos) << message;
  message = testing::error_message([&] {
    first.forward(nullptr, b.tokens.data(), b.targets.data(), b.batch, b.seq, kStageWeights, true,
                  nullptr, losses);
  });
  EXPECT_NE(message.find("needs an output"), std::string::npos) << message;

  DeviceArray<float> act(ctx, b.rows() * cfg.hidden_size);
  auto run = first.forward(nullptr, b.tokens.data(), b.targets.data(), b.batch, b.seq,
                           kStageWeights, true, act.data(), losses);
  first.backward(run, act.data(), nullptr, 1.0);
  message = testing::error_message([&] { first.backward(run, act.data(), nullptr, 1.0); });
  EXPECT_NE(message.find("no forward Run"), std::string::npos) << message;

  ParamRegistry r2(ctx);
  message = testing::error_message(
      [&] { GpuPipelineStage too_many(ctx, r2, cfg, Recipe::Fp32, 0, 5); });
  EXPECT_NE(message.find("cannot fill"), std::string::npos) << message;
}

// ---- Zero-bubble W deferral (see the file comment) ----

// The Linear and expert-matrix weight GEMMs one decoder layer (or MTP module) queues.
int64_t weight_gemms_of_layer(const ModelConfig& cfg, int64_t layer) {
  const int64_t attention = cfg.q_lora_rank > 0 ? 5 : 4;  // q_a, q_b | q, kv_a, kv_b, o
  const int64_t ffn = cfg.is_moe_layer(layer) ? 2 + (cfg.n_shared_experts > 0 ? 2 : 0) : 2;
  return attention + ffn;
}

// Bitwise comparison of two host arrays: the count of differing elements and the largest
// difference.
struct BitwiseDiff {
  int64_t differing = 0;
  double max_abs = 0;
};
BitwiseDiff bitwise_diff(const std::vector<float>& got, const std::vector<float>& want) {
  BitwiseDiff d;
  if (got.size() != want.size()) return {static_cast<int64_t>(std::max(got.size(), want.size())), 0};
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ++d.differing;
      d.max_abs = std::max(d.max_abs, std::fabs(static_cast<double>(got[i]) - want[i]));
    }
  return d;
}

const DeviceParam* param_named(const Pipeline& p, const std::string& name) {
  for (const auto& registry : p.registries)
    if (const DeviceParam* param = registry->find(name)) return param;
  return nullptr;
}

void check_weight_deferral(Recipe recipe, const std::string& what) {
  DeviceContext ctx;
  const ModelConfig cfg = testing::with_fp8_sized_dims(stage_config());
  const std::vector<MicroBatch> batches = micro_batches(cfg.vocab_size);
  Transformer<float> cpu(cfg);
  cpu.init_weights(23, 0.25);
  for (auto& p : cpu.params().all())
    if (!p->trainable)
      for (int64_t i = 0; i < p->numel(); ++i)
        p->value[i] = 0.04f * static_cast<float>((i * 7) % 5) - 0.08f;
  GpuTransformer weights(ctx, cfg, recipe);
  weights.upload(cpu.params());
  Pipeline immediate = build_pipeline(ctx, cfg, recipe, {0, 1}, weights);
  Pipeline deferred = build_pipeline(ctx, cfg, recipe, {0, 1}, weights);
  const int64_t n_layers = cfg.num_hidden_layers;
  const std::pair<int64_t, int64_t> stage1 = deferred.layout.range(1);

  // F,B,F,B with the whole backward.
  std::vector<InFlight> a(batches.size()), b(batches.size());
  std::vector<Losses> want, got;
  for (size_t m = 0; m < batches.size(); ++m) {
    pipeline_forward(ctx, immediate, cfg, batches[m], a[m]);
    want.push_back(combine_records(what + " immediate mb" + std::to_string(m), immediate, cfg,
                                   a[m].records));
    pipeline_backward(immediate, a[m]);
  }
  // F,F,B,B deferred, then W,W.
  for (size_t m = 0; m < batches.size(); ++m) {
    pipeline_forward(ctx, deferred, cfg, batches[m], b[m]);
    got.push_back(combine_records(what + " deferred mb" + std::to_string(m), deferred, cfg,
                                  b[m].records));
  }
  for (size_t m = 0; m < batches.size(); ++m) {
    deferred.stages[1]->backward_input(b[m].runs[1], nullptr, b[m].dacts[0].data(), kScale, true);
    deferred.stages[0]->backward_input(b[m].runs[0], b[m].dacts[0].data(), nullptr, kScale, true);
    for (int s = 0; s < 2; ++s) {
      ASSERT_NE(b[m].runs[s], nullptr) << what << ": a deferred B must keep the Run";
      EXPECT_GT(b[m].runs[s]->weight_grads.bytes_held(), 0u) << what << " stage " << s;
    }
    const std::string again = testing::error_message([&] {
      deferred.stages[0]->backward_input(b[m].runs[0], b[m].dacts[0].data(), nullptr, kScale,
                                         true);
    });
    EXPECT_NE(again.find("already ran"), std::string::npos) << what << ": " << again;
  }
  ctx.synchronize();
  // Before W: the Linears' gradients are untouched, the norms' made in B.
  for (const std::string& name : {std::string("model.layers.0.self_attn.o_proj.weight"),
                                  std::string("model.layers.1.mlp.experts.0.down_proj.weight"),
                                  std::string("model.layers.0.input_layernorm.weight")}) {
    const DeviceParam* param = param_named(deferred, name);
    ASSERT_NE(param, nullptr) << name;
    const std::vector<float> g = to_host(param->grad, param->count);
    const bool nonzero = std::any_of(g.begin(), g.end(), [](float v) { return v != 0.0f; });
    const bool want_nonzero = name.find("layernorm") != std::string::npos;
    std::printf("CHECK | %s | %s before W | %s | %s\n", what.c_str(), name.c_str(),
                nonzero ? "nonzero" : "zero", nonzero == want_nonzero ? "ok" : "FAIL");
    EXPECT_EQ(nonzero, want_nonzero) << what << ": " << name << " before the W steps";
  }
  int64_t want_gemms[2] = {0, 0};  // stage 0: layers [0, 2); stage 1: layers [2, 4) and MTP
  for (int64_t layer = 0; layer < stage1.first; ++layer)
    want_gemms[0] += weight_gemms_of_layer(cfg, layer);
  for (int64_t layer = stage1.first; layer < stage1.second; ++layer)
    want_gemms[1] += weight_gemms_of_layer(cfg, layer);
  for (int64_t k = 1; k <= cfg.num_nextn_predict_layers; ++k)  // eh_proj + the block
    want_gemms[1] += 1 + weight_gemms_of_layer(cfg, n_layers + k - 1);
  for (size_t m = 0; m < batches.size(); ++m)
    for (int s = 1; s >= 0; --s) {
      EXPECT_EQ(b[m].runs[s]->weight_grads.size(), want_gemms[s]) << what << " stage " << s;
      const int64_t ran = deferred.stages[s]->backward_weight(b[m].runs[s]);
      std::printf("CHECK | %s | W of mb%zu stage %d | %lld GEMMs (want %lld) | %s\n",
                  what.c_str(), m, s, static_cast<long long>(ran),
                  static_cast<long long>(want_gemms[s]), ran == want_gemms[s] ? "ok" : "FAIL");
      EXPECT_EQ(ran, want_gemms[s]) << what << " stage " << s;
      EXPECT_EQ(b[m].runs[s], nullptr) << what << ": W must release the Run";
    }
  const std::string no_run =
      testing::error_message([&] { deferred.stages[0]->backward_weight(b[0].runs[0]); });
  EXPECT_NE(no_run.find("no Run"), std::string::npos) << what << ": " << no_run;
  ctx.synchronize();

  for (size_t m = 0; m < batches.size(); ++m) {
    const double pairs[4][2] = {{got[m].total, want[m].total},
                                {got[m].main, want[m].main},
                                {got[m].mtp, want[m].mtp},
                                {got[m].balance, want[m].balance}};
    for (const auto& pair : pairs) EXPECT_EQ(pair[0], pair[1]) << what << " mb" << m;
    const int64_t n = batches[m].rows() * cfg.hidden_size;
    const BitwiseDiff d =
        bitwise_diff(to_host(b[m].dacts[0].data(), n), to_host(a[m].dacts[0].data(), n));
    std::printf("CHECK | %s | input gradient of stage 1, mb%zu | %lld differing, max |diff| "
                "%.3e | %s\n",
                what.c_str(), m, static_cast<long long>(d.differing), d.max_abs,
                d.differing == 0 ? "ok" : "FAIL");
    EXPECT_EQ(d.differing, 0) << what << " mb" << m;
  }
  int failing = 0, compared = 0;
  for (size_t r = 0; r < immediate.registries.size(); ++r)
    for (const DeviceParam& param : immediate.registries[r]->params()) {
      if (!param.trainable) continue;
      const DeviceParam* other = deferred.registries[r]->find(param.name);
      ASSERT_NE(other, nullptr) << param.name;
      const BitwiseDiff d =
          bitwise_diff(to_host(other->grad, other->count), to_host(param.grad, param.count));
      ++compared;
      if (d.differing != 0) {
        ++failing;
        std::printf("CHECK | %s | grad %s | %lld differing, max |diff| %.3e | FAIL\n",
                    what.c_str(), param.name.c_str(), static_cast<long long>(d.differing),
                    d.max_abs);
      }
    }
  std::printf("CHECK | %s | every parameter gradient bitwise | %d of %d differ | %s\n",
              what.c_str(), failing, compared, failing == 0 ? "ok" : "FAIL");
  EXPECT_GT(compared, 0);
  EXPECT_EQ(failing, 0) << what << ": see the CHECK lines";
}

TEST(GpuPipelineStage, DeferredWeightGradientsEqualTheWholeBackwardFp32) {
  check_weight_deferral(Recipe::Fp32, "deferral fp32");
}
TEST(GpuPipelineStage, DeferredWeightGradientsEqualTheWholeBackwardBf16) {
  check_weight_deferral(Recipe::Bf16, "deferral bf16");
}
TEST(GpuPipelineStage, DeferredWeightGradientsEqualTheWholeBackwardFp8) {
  check_weight_deferral(Recipe::Fp8, "deferral fp8");
}

}  // namespace
}  // namespace frugal
