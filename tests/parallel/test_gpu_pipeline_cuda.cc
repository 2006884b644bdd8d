// GPU pipeline parallelism (parallel/gpu_pipeline_runner.h; label cuda; `mpirun -np 2` and
// `mpirun -np 4 build/test_parallel_gpu_pipeline_cuda` with one GPU per rank, device = the
// node-local rank; every test is skipped when the node has fewer GPUs than ranks, and each test
// runs at its own rank count (GpuPipeline.*: 2 ranks; GpuPipelineMesh.*: 4 ranks, one case 8) and
// is skipped with a message at the others). Tiny model with 4 decoder layers (a
// dense first layer, MoE layers with the noaux_tc selection bias), MTP depth 1, P = 2 pipeline
// ranks, 2 sequences of 7 tokens per micro-batch, some targets ignored. Each schedule runs
//   1F1B and ZB1P: 2 stages, M = 4;  DualPipeV: 4 stages (2 per rank, V), M = 4;
//   DualPipe: 2 stages on both ranks (two copies), M = 4
// against a single GpuTransformer on EVERY rank (the same weights, the same micro-batches,
// loss_scale 1/M, accumulated), both trained 3 steps with AdamW (GpuAdamW vs GpuPipelineAdamW;
// grad_clip low enough that the clip is active) and the balance-bias update after each step:
//   fp32 recipe:
//     - every micro-batch's Losses (total, main, mtp, balance) within 1e-6 relative, tokens equal;
//     - step 1: every trainable gradient (downloaded whole: each tensor from its owner) within
//       1e-5 relative L2 of the single GPU's (the embedding: first stage + MTP copy summed);
//     - every step: the global gradient norm within 1e-5 relative, the step not skipped;
//     - after 3 steps, the downloaded whole model (weights and routing biases) within 1e-5
//       relative L2 per tensor; and every tensor this rank holds equals the downloaded one bitwise
//       (DualPipe's second copies and the MTP stage's embedding copy stay equal to their owner's);
//     - evaluate() of the whole batch within 1e-6 of GpuTransformer::evaluate.
//   fp32 with uneven stage splits (parallel/stage_layout.h): 1F1B 3,1 and 4,0 (an empty last
//     stage), DualPipeV 0,2,1,1 (an empty first stage) and 2,1,1,0: the same bounds as above;
//   bf16 recipe: losses within 1e-2 relative of the single GPU's bf16 run at every step, the whole
//     model within 1e-3 relative L2 after 3 steps (lr 1e-2: a lost update would be ~4e-2).
//   Zero-bubble W deferral (every runner case above): summed over the pipeline's ranks after each
//   step, 1F1B defers nothing (each W is the next step after its B: B runs whole), while ZB1P
//   and DualPipeV defer some B's, whose W steps run weight GEMMs (count > 0) from operands held
//   in between (peak bytes > 0); DualPipe's counts are printed. The comparisons above are then
//   those of the deferred pipeline (also ZB1P under bf16).
// Every comparison prints "CHECK | schedule | what | numbers | ok/FAIL", so one run tells which
// schedule, step, micro-batch or tensor is off.
// The engine (train/gpu_pipeline_engine.h) through the trainer: train.device = cuda, train.pp = 2,
// DualPipeV and 1F1B (the default "auto" stage split; DualPipeV also with train.pp_stage_layers =
// 1,2,1,0), the tiny preset with 4 layers, 4 micro-batches of 1 sequence, 3 steps with
// validation at steps 2 and 3, against the same config trained on one GPU (rank 0): fp32 metrics
// (losses, norms, validation) within 1e-6, the step-1 expert load exactly, checkpoint weights and
// moments within 1e-6 whole / 1e-5 per tensor, trainer_state.json and config.json byte for byte
// (gpu_parallel_test_util.h's expect_matches_one_gpu); every rank ends with the same host model.
// Timing (FRUGAL_PIPELINE_TIMING's events, set_timing): one timed step of 1F1B and of DualPipeV;
// every rank reports M (1F1B, ZB1P) or 2M (DualPipeV) F and B intervals and one W interval per
// deferred B (none under 1F1B), 0 < busy <= step, idle = step - busy, busy at least the sum of
// the mean F, B and W times their counts (less 1%); an untimed step leaves the last timing as it
// was. Printed next to the schedule's expected bubble.
// The mesh (GpuPipelineMesh.*, 4 ranks): the runner as above (fp32 bounds, per-tensor 1e-4 after 3
// steps) on pp 2 x dp 2 (1F1B) and pp 2 x dp 2 with ep 2 inside dp (DualPipeV, DualPipe), each dp
// replica running M = 4 of the 8 micro-batches, against one GPU that runs all 8; and the engine
// through the trainer on pp 2 x dp 2 (DualPipeV
// and 1F1B) and pp 2 x dp 2 with ep 2 inside dp (DualPipeV), 8 micro-batches of 1 sequence per
// step (4 per pipeline), against the same config on one GPU: fp32 metrics (losses, norms,
// validation) within 1e-6, the step-1 expert load exactly (the load counters summed over dp), the
// checkpoint's whole model within 1e-5 (per tensor 1e-4), moments 1e-5 / 1e-4; every rank ends
// with the same gathered host model. On 8 ranks: pp 2 x dp 4 with ep 2 (expert_dp 2: the held
// experts' gradients summed over expert_dp), runner and engine.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/device_context.h"
#include "core/error.h"
#include "core/rng.h"
#include "gpu_parallel_test_util.h"
#include "model/gpu/gpu_transformer.h"
#include "model/tiny_model_config.h"
#include "model/transformer.h"
#include "parallel/gpu_pipeline_runner.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mesh.h"
#include "parallel/nccl_communicator.h"
#include "parallel/pipeline_timing.h"
#include "parallel/schedule.h"
#include "train/gpu_optimizer.h"

namespace frugal {
namespace {

using gpu::GpuAdamW;
using gpu::GpuPipelineAdamW;
using gpu::GpuPipelineRunner;
using gpu::GpuTransformer;
using pipeline::ScheduleKind;

constexpr int64_t kSequences = 2, kSeq = 7;
constexpr int kMicroBatches = 4;
constexpr int kSteps = 3;
constexpr double kGamma = 1e-3;
const LossWeights kWeights{0.3, 0.02};

ModelConfig pipeline_config() {
  ModelConfig c = testing::tiny_model_config();
  c.num_hidden_layers = 4;  // dense layer 0, MoE layers 1..3: DualPipeV's 4 stages get one each
  c.first_k_dense_replace = 1;
  c.num_nextn_predict_layers = 1;
  c.topk_method = "noaux_tc";
  return c;
}

int node_local_rank(int world_rank) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* value = std::getenv(name); value && *value) return std::atoi(value);
  return world_rank;
}

struct Batch {
  std::vector<int32_t> tokens, targets;  // [micro_batches, kSequences, kSeq]
};

Batch random_batch(const ModelConfig& cfg, int micro_batches, uint64_t seed) {
  Batch b;
  const int64_t n = micro_batches * kSequences * kSeq;
  RandomStream rng(seed, 11);
  const double vocab = static_cast<double>(cfg.vocab_size);
  for (int64_t i = 0; i < n; ++i) {
    b.tokens.push_back(static_cast<int32_t>(rng.uniform(2 * i) * vocab));
    const double u = rng.uniform(2 * i + 1);
    b.targets.push_back(u < 0.1 ? -1 : static_cast<int32_t>(u * 10.0 * vocab) %
                                           static_cast<int32_t>(cfg.vocab_size));
  }
  return b;
}

// The initial weights: a random CPU model with non-zero routing biases.
std::unique_ptr<Transformer<float>> initial_model(const ModelConfig& cfg) {
  auto model = std::make_unique<Transformer<float>>(cfg);
  model->init_weights(17, 0.25);
  for (auto& p : model->params().all())
    if (!p->trainable)
      for (int64_t i = 0; i < p->numel(); ++i)
        p->value[i] = 0.04f * static_cast<float>((i * 7) % 5) - 0.08f;
  return model;
}

double relative(double got, double want) {
  return std::fabs(got - want) / std::max(std::fabs(want), 1e-12);
}

double relative_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
    diff += d * d;
    norm += static_cast<double>(want[i]) * static_cast<double>(want[i]);
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

bool check(bool ok, const std::string& label, const std::string& what, const std::string& numbers) {
  std::printf("CHECK | %s | %s | %s | %s\n", label.c_str(), what.c_str(), numbers.c_str(),
              ok ? "ok" : "FAIL");
  return ok;
}

// The W deferral of the last step, summed over the pipeline's ranks (see the file comment).
void expect_weight_deferral(const GpuPipelineRunner& runner, Communicator& host, ScheduleKind kind,
                            const std::string& label) {
  const GpuPipelineRunner::WeightDeferral& mine = runner.last_weight_deferral();
  double sums[3] = {static_cast<double>(mine.deferred_backwards),
                    static_cast<double>(mine.weight_gemms),
                    static_cast<double>(mine.peak_bytes_held)};
  host.all_reduce_sum(sums, 3, CommType::F64);
  const std::string numbers = fmt::format("{} deferred B, {} W GEMMs, peak {} bytes held (sum "
                                          "over ranks)",
                                          sums[0], sums[1], sums[2]);
  if (kind == ScheduleKind::OneFOneB)
    EXPECT_TRUE(check(sums[0] == 0 && sums[1] == 0 && sums[2] == 0, label,
                      "1F1B defers no weight GEMM", numbers));
  else if (kind == ScheduleKind::ZB1P || kind == ScheduleKind::DualPipeV)
    EXPECT_TRUE(check(sums[0] > 0 && sums[1] > 0 && sums[2] > 0, label,
                      "W steps ran deferred weight GEMMs", numbers));
  else
    std::printf("CHECK | %s | W deferral | %s | info\n", label.c_str(), numbers.c_str());
}

struct Tolerance {
  double loss;        // relative, per micro-batch total, main and mtp loss
  double balance;     // relative, per micro-batch balance loss; < 0: printed only
  double grad;        // relative L2 per tensor (step 1); < 0: not compared
  double norm;        // relative, the global gradient norm; < 0: not compared
  double tensor;      // relative L2 per tensor after the steps; < 0: not compared
  double whole;       // relative L2 over the whole model after the steps
  double evaluation;  // relative, evaluate()'s losses
};

// One rank's view of the pipeline under test: `nccl` / `host` over its pipeline's ranks, and the
// data- and expert-parallel groups around it (none: one pipeline). The dp replicas share the step's
// micro-batches: replica d runs d, d + dp, ... (M each, M * dp in all on the single GPU, loss scale
// 1 / (M * dp)).
struct PipelineSetup {
  Communicator& world;
  cuda::DeviceContext& ctx;
  Communicator& nccl;
  Communicator& host;
  gpu::GpuPipelineMesh groups;
  int dp = 1, dp_rank = 0;
  std::string mesh;  // label part, e.g. "pp 2 x dp 2 ep 2"
};

// Trains the pipeline and the single GPU side by side (see the file comment) and compares.
// layout: the stage split (parallel/stage_layout.h); empty: the even split.
void compare_pipeline(const PipelineSetup& setup, ScheduleKind kind, Recipe recipe,
                      const Tolerance& tol, const StageLayout& layout = {}) {
  const ModelConfig cfg = pipeline_config();
  Communicator& world = setup.world;
  cuda::DeviceContext& ctx = setup.ctx;
  const int ranks = setup.host.size(), me = world.rank(), dp = setup.dp;
  const int total = kMicroBatches * dp;  // micro-batches per step, all replicas
  const std::string label = std::string(pipeline::schedule_kind_name(kind)) + " " +
                            (recipe == Recipe::Fp32 ? "fp32" : "bf16") +
                            (setup.mesh.empty() ? "" : " " + setup.mesh) +
                            (layout.layers.empty() ? "" : " split " + layout.text()) + " rank " +
                            std::to_string(me);
  const int stages = pipeline::pipeline_stage_count(kind, ranks);
  OptimConfig optim;
  optim.lr = 1e-2;
  optim.grad_clip = 0.05;  // the clip is active (the tiny model's norms are ~0.1-1)
  const int64_t rows = kSequences * kSeq;

  auto initial = initial_model(cfg);
  GpuTransformer single(ctx, cfg, recipe);
  single.upload(initial->params());
  GpuAdamW single_optimizer(ctx, optim, single);
  GpuPipelineRunner runner(ctx, cfg, recipe, pipeline::build_schedule(kind, stages, kMicroBatches),
                           setup.nccl, setup.host, setup.groups, layout);
  if (!layout.layers.empty()) {
    for (const auto& st : runner.stages()) {
      EXPECT_EQ(std::make_pair(st->layer_begin(), st->layer_end()), layout.range(st->stage()))
          << label;
    }
  }
  runner.upload(initial->params());
  GpuPipelineAdamW optimizer(ctx, optim, runner);

  bool clipped = false;
  for (int step = 1; step <= kSteps; ++step) {
    const Batch batch = random_batch(cfg, total, 100 + step);
    single.zero_grad();
    std::vector<Losses> want;
    for (int m = 0; m < total; ++m)
      want.push_back(single.forward_backward(batch.tokens.data() + m * rows,
                                             batch.targets.data() + m * rows, kSequences, kSeq,
                                             kWeights, 1.0 / total));
    // This replica's micro-batches m = dp_rank + k * dp, contiguous.
    Batch mine;
    for (int k = 0; k < kMicroBatches; ++k) {
      const int64_t m = setup.dp_rank + static_cast<int64_t>(k) * dp;
      mine.tokens.insert(mine.tokens.end(), batch.tokens.begin() + m * rows,
                         batch.tokens.begin() + (m + 1) * rows);
      mine.targets.insert(mine.targets.end(), batch.targets.begin() + m * rows,
                          batch.targets.begin() + (m + 1) * rows);
    }
    runner.zero_grad();
    const std::vector<Losses> got = runner.step(mine.tokens.data(), mine.targets.data(),
                                                kSequences, kSeq, kWeights, true, 1.0 / total);
    ASSERT_EQ(static_cast<int>(got.size()), kMicroBatches) << label;
    expect_weight_deferral(runner, setup.host, kind, label + " step " + std::to_string(step));
    for (int k = 0; k < kMicroBatches; ++k) {
      const int m = setup.dp_rank + k * dp;
      const std::string what = "step " + std::to_string(step) + " micro-batch " + std::to_string(m);
      const double parts[4][2] = {{got[k].total, want[m].total},
                                  {got[k].main, want[m].main},
                                  {got[k].mtp, want[m].mtp},
                                  {got[k].balance, want[m].balance}};
      const char* names[4] = {"total", "main", "mtp", "balance"};
      for (int k = 0; k < 4; ++k) {
        const double err = relative(parts[k][0], parts[k][1]);
        const double bound = k == 3 ? tol.balance : tol.loss;
        const std::string numbers = fmt::format("pipeline {:.9g} one GPU {:.9g} rel {:.3g} (tol {:.1g})",
                                                parts[k][0], parts[k][1], err, bound);
        if (bound < 0)
          std::printf("CHECK | %s | %s loss %s | %s | info\n", label.c_str(), what.c_str(),
                      names[k], numbers.c_str());
        else
          EXPECT_TRUE(check(err <= bound, label, what + " loss " + names[k], numbers));
      }
      EXPECT_EQ(got[k].tokens, want[m].tokens) << label << " " << what;
    }

    if (step == 1 && tol.grad >= 0) {  // every gradient, each tensor from its owner
      auto a = std::make_unique<Transformer<float>>(cfg), b = std::make_unique<Transformer<float>>(cfg);
      single.download(a->params());
      runner.download(b->params());
      double worst = 0;
      std::string worst_name;
      for (auto& p : a->params().all()) {
        if (!p->trainable) continue;
        const double err = relative_l2(b->params().get(p->name).grad, p->grad);
        if (err > worst) worst = err, worst_name = p->name;
        if (err > tol.grad)
          check(false, label, "step 1 gradient " + p->name, fmt::format("rel L2 {:.3g}", err));
      }
      EXPECT_TRUE(check(worst <= tol.grad, label, "step 1 gradients, worst tensor",
                        fmt::format("{} rel L2 {:.3g} (tol {:.1g})", worst_name, worst, tol.grad)));
    }

    const GpuAdamW::StepInfo ref = single_optimizer.step(optim.lr);
    const GpuAdamW::StepInfo info = optimizer.step(optim.lr);
    EXPECT_FALSE(info.skipped) << label << " step " << step;
    EXPECT_FALSE(ref.skipped) << label << " step " << step;
    clipped = clipped || info.clip_scale < 1.0;
    if (tol.norm >= 0) {
      const double err = relative(info.grad_norm, ref.grad_norm);
      EXPECT_TRUE(check(err <= tol.norm, label, "step " + std::to_string(step) + " gradient norm",
                        fmt::format("pipeline {:.9g} (clip {:.6g}) one GPU {:.9g} (clip {:.6g}) "
                                    "rel {:.3g}",
                                    info.grad_norm, info.clip_scale, ref.grad_norm,
                                    ref.clip_scale, err)));
    }
    single.update_balance_bias(kGamma);
    runner.sum_expert_loads_over_data_parallel();  // no-op without dp
    runner.update_balance_bias(kGamma);
  }
  EXPECT_TRUE(clipped) << label << ": grad_clip " << optim.grad_clip
                       << " never clipped; the test does not exercise the clip";

  // The whole model after the steps.
  auto a = std::make_unique<Transformer<float>>(cfg), b = std::make_unique<Transformer<float>>(cfg);
  single.download(a->params());
  runner.download(b->params());
  double diff = 0, norm = 0, worst = 0;
  std::string worst_name;
  int bad = 0;
  for (auto& p : a->params().all()) {
    const std::vector<float>& got = b->params().get(p->name).value;
    const double err = relative_l2(got, p->value);
    for (size_t i = 0; i < got.size(); ++i) {
      const double d = static_cast<double>(got[i]) - p->value[i];
      diff += d * d;
      norm += static_cast<double>(p->value[i]) * p->value[i];
    }
    if (err > worst) worst = err, worst_name = p->name;
    if (tol.tensor >= 0 && err > tol.tensor) {
      ++bad;
      check(false, label, "after 3 steps, tensor " + p->name,
            fmt::format("rel L2 {:.3g} (tol {:.1g})", err, tol.tensor));
    }
  }
  EXPECT_EQ(bad, 0) << label << ": " << bad << " tensors differ after " << kSteps << " steps";
  std::printf("CHECK | %s | after 3 steps, worst tensor | %s rel L2 %.3g | info\n", label.c_str(),
              worst_name.c_str(), worst);
  const double whole = std::sqrt(diff / norm);
  EXPECT_TRUE(check(whole <= tol.whole, label, "after 3 steps, whole model",
                    fmt::format("rel L2 {:.3g} (tol {:.1g})", whole, tol.whole)));

  // Every tensor held here equals the downloaded (owner's) one: copies did not drift apart.
  ctx.synchronize();
  int drifted = 0;
  for (const gpu::DeviceParam& p : runner.params()) {
    std::vector<float> mine(static_cast<size_t>(p.count));
    ASSERT_EQ(cudaMemcpy(mine.data(), p.value, mine.size() * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    if (mine != b->params().get(p.name).value) {
      ++drifted;
      check(false, label, "copy of " + p.name + " on this rank",
            fmt::format("rel L2 {:.3g} from the owner's", relative_l2(mine, b->params().get(p.name).value)));
    }
  }
  EXPECT_EQ(drifted, 0) << label << ": " << drifted
                        << " tensors held here differ from their owner's copy";

  // Validation over the whole first batch as one.
  const Batch batch = random_batch(cfg, kMicroBatches, 7);
  const Losses want = single.evaluate(batch.tokens.data(), batch.targets.data(),
                                      kMicroBatches * kSequences, kSeq, LossWeights{0.0, 0.0});
  const Losses got =
      runner.evaluate(batch.tokens.data(), batch.targets.data(), kMicroBatches * kSequences, kSeq);
  for (auto [name, g, w] : {std::tuple{"main", got.main, want.main},
                            std::tuple{"mtp", got.mtp, want.mtp},
                            std::tuple{"total", got.total, want.total}}) {
    const double err = relative(g, w);
    EXPECT_TRUE(check(err <= tol.evaluation, label, std::string("evaluate ") + name,
                      fmt::format("pipeline {:.9g} one GPU {:.9g} rel {:.3g}", g, w, err)));
  }
  EXPECT_EQ(got.tokens, want.tokens) << label;
  world.barrier();
}

class GpuPipeline : public ::testing::Test {
 protected:
  void SetUp() override {
    world = mpi_world_communicator();
    if (const std::string missing = testing::missing_gpu_per_rank(world->size()); !missing.empty())
      GTEST_SKIP() << missing;
    if (world->size() != 2)
      GTEST_SKIP() << "GpuPipeline.* runs P = 2 pipeline ranks (mpirun -np 2); this job has "
                   << world->size() << " ranks (the mesh cases are GpuPipelineMesh.*)";
    ctx = std::make_unique<cuda::DeviceContext>(node_local_rank(world->rank()));
    nccl = make_nccl_communicator(*world, ctx->device);
    set_input_stream(*nccl, ctx->stream);
  }
  void TearDown() override {
    nccl.reset();
    ctx.reset();
  }

  void compare(ScheduleKind kind, Recipe recipe, const Tolerance& tol,
               const StageLayout& layout = {}) {
    compare_pipeline(PipelineSetup{*world, *ctx, *nccl, *world, {}, 1, 0, ""}, kind, recipe, tol,
                     layout);
  }

  std::unique_ptr<Communicator> world;
  std::unique_ptr<cuda::DeviceContext> ctx;
  std::unique_ptr<Communicator> nccl;
};

const Tolerance kFp32{1e-6, 1e-6, 1e-5, 1e-5, 1e-5, 1e-5, 1e-6};
// bf16: a routing choice may flip between the runs, so the balance loss is only printed.
const Tolerance kBf16{1e-2, -1, -1, -1, -1, 1e-3, 1e-2};

TEST_F(GpuPipeline, OneFOneBFp32EqualsOneGpu) { compare(ScheduleKind::OneFOneB, Recipe::Fp32, kFp32); }
TEST_F(GpuPipeline, ZB1PFp32EqualsOneGpu) { compare(ScheduleKind::ZB1P, Recipe::Fp32, kFp32); }
TEST_F(GpuPipeline, DualPipeVFp32EqualsOneGpu) { compare(ScheduleKind::DualPipeV, Recipe::Fp32, kFp32); }
TEST_F(GpuPipeline, DualPipeFp32EqualsOneGpu) { compare(ScheduleKind::DualPipe, Recipe::Fp32, kFp32); }

// Uneven stage splits (parallel/stage_layout.h), with an empty first or last stage (the embedding
// alone; the head, MTP and losses alone): the same fp32 agreement as the even split.
TEST_F(GpuPipeline, OneFOneBFp32UnevenSplitEqualsOneGpu) {
  compare(ScheduleKind::OneFOneB, Recipe::Fp32, kFp32, StageLayout{{3, 1}});
}
TEST_F(GpuPipeline, OneFOneBFp32EmptyLastStageEqualsOneGpu) {
  compare(ScheduleKind::OneFOneB, Recipe::Fp32, kFp32, StageLayout{{4, 0}});
}
TEST_F(GpuPipeline, DualPipeVFp32EmptyFirstStageEqualsOneGpu) {
  compare(ScheduleKind::DualPipeV, Recipe::Fp32, kFp32, StageLayout{{0, 2, 1, 1}});
}
TEST_F(GpuPipeline, DualPipeVFp32EmptyLastStageEqualsOneGpu) {
  compare(ScheduleKind::DualPipeV, Recipe::Fp32, kFp32, StageLayout{{2, 1, 1, 0}});
}

TEST_F(GpuPipeline, OneFOneBBf16AgreesWithOneGpu) { compare(ScheduleKind::OneFOneB, Recipe::Bf16, kBf16); }
TEST_F(GpuPipeline, ZB1PBf16AgreesWithOneGpu) { compare(ScheduleKind::ZB1P, Recipe::Bf16, kBf16); }
TEST_F(GpuPipeline, DualPipeVBf16AgreesWithOneGpu) { compare(ScheduleKind::DualPipeV, Recipe::Bf16, kBf16); }
TEST_F(GpuPipeline, DualPipeBf16AgreesWithOneGpu) { compare(ScheduleKind::DualPipe, Recipe::Bf16, kBf16); }

// The trainer with the GPU pipeline engine against one GPU (see the file comment).
// split: train.pp_stage_layers of the pipeline run (the default "auto" when empty).
void engine_matches_one_gpu(Communicator& world, const std::string& schedule,
                            const std::string& split = "") {
  testing::SharedTempDir dir(world);
  const std::vector<std::string> extra = {
      "train.device=cuda",        "train.precision=fp32",  "model.num_hidden_layers=4",
      "train.micro_batch=1",      "train.batch_sequences=4", "train.pp_schedule=" + schedule};
  std::vector<std::string> piped = extra;
  piped.push_back("train.pp=2");
  if (!split.empty()) piped.push_back("train.pp_stage_layers=" + split);
  const std::string par = dir.path("par"), ref = dir.path("ref");
  const Config config = testing::parallel_test_config(par, piped);
  Mesh mesh(world, mesh_shape(world.size(), config.train, config.model));
  testing::train_on_every_rank(config, mesh, world, {"pipeline " + schedule, "cuda:"},
                               "the ranks' gathered host models differ after 3 steps");
  if (world.rank() == 0)
    testing::expect_matches_one_gpu("GPU pipeline " + schedule, par,
                                    testing::parallel_test_config(ref, extra), "fp32",
                                    {1e-6, 1e-6, 1e-5, 1e-6, 1e-5});
  world.barrier();
}

TEST_F(GpuPipeline, EngineDualPipeVMatchesOneGpu) { engine_matches_one_gpu(*world, "dualpipev"); }
TEST_F(GpuPipeline, EngineDualPipeVExplicitSplitMatchesOneGpu) {
  engine_matches_one_gpu(*world, "dualpipev", "1,2,1,0");
}
TEST_F(GpuPipeline, EngineOneFOneBMatchesOneGpu) { engine_matches_one_gpu(*world, "1f1b"); }

// A schedule over more ranks than the communicators have is refused before anything runs.
TEST_F(GpuPipeline, RefusesAScheduleOfAnotherRankCount) {
  const ModelConfig cfg = pipeline_config();
  EXPECT_THROW(GpuPipelineRunner(*ctx, cfg, Recipe::Fp32,
                                 pipeline::build_schedule(ScheduleKind::OneFOneB, 4, 4), *nccl,
                                 *world),
               Error);
}

// One timed step (see the file comment): the counts and the busy / idle arithmetic per rank.
void timed_step(Communicator& world, cuda::DeviceContext& ctx, Communicator& nccl,
                ScheduleKind kind) {
  const ModelConfig cfg = pipeline_config();
  const int stages = pipeline::pipeline_stage_count(kind, world.size());
  const pipeline::Schedule schedule = pipeline::build_schedule(kind, stages, kMicroBatches);
  const std::string label = std::string(pipeline::schedule_kind_name(kind)) + " timing";
  auto initial = initial_model(cfg);
  GpuPipelineRunner runner(ctx, cfg, Recipe::Fp32, schedule, nccl, world);
  runner.upload(initial->params());
  const Batch batch = random_batch(cfg, kMicroBatches, 5);
  runner.set_timing(false);
  runner.zero_grad();
  runner.step(batch.tokens.data(), batch.targets.data(), kSequences, kSeq, kWeights);
  EXPECT_TRUE(check(runner.last_timing().f_count == 0, label, "untimed step",
                    fmt::format("{} F intervals recorded", runner.last_timing().f_count)));
  runner.set_timing(true);
  runner.zero_grad();
  runner.step(batch.tokens.data(), batch.targets.data(), kSequences, kSeq, kWeights);
  const std::vector<pipeline::PipelineTiming> all = runner.gather_timing();
  ASSERT_EQ(static_cast<int>(all.size()), world.size());
  const int per_rank = kind == ScheduleKind::DualPipeV ? 2 * kMicroBatches : kMicroBatches;
  // One timed W per deferred B of each rank.
  std::vector<double> deferred_backwards(static_cast<size_t>(world.size()), 0.0);
  deferred_backwards[world.rank()] =
      static_cast<double>(runner.last_weight_deferral().deferred_backwards);
  world.all_reduce_sum(deferred_backwards.data(), world.size(), CommType::F64);
  double f = 0, b = 0, w = 0;
  int w_count = 0;
  for (const auto& t : all) {
    f += t.f_ms / all.size(), b += t.b_ms / all.size();
    w += t.w_ms * t.w_count, w_count += t.w_count;
  }
  w = w_count > 0 ? w / w_count : 0.0;
  const pipeline::ExpectedBubble expected = pipeline::expected_bubble(schedule, f, b, w);
  for (int r = 0; r < world.size(); ++r) {
    const pipeline::PipelineTiming& t = all[r];
    const std::string who = label + " rank " + std::to_string(r);
    const std::string numbers = fmt::format(
        "step {:.3f} ms busy {:.3f} idle {:.3f} F {:.3f} x{} B {:.3f} x{} W {:.3f} x{}; "
        "expected idle {:.3f} (simulated), Table 2 {:.3f}",
        t.step_ms, t.busy_ms, t.idle_ms, t.f_ms, t.f_count, t.b_ms, t.b_count, t.w_ms, t.w_count,
        expected.simulated[r], expected.table2);
    EXPECT_TRUE(check(t.f_count == per_rank && t.b_count == per_rank, who, "F and B counts",
                      numbers + fmt::format(" (want {} each)", per_rank)));
    EXPECT_TRUE(check(t.w_count == static_cast<int>(deferred_backwards[r]) &&
                          (t.w_count == 0) == (t.w_ms == 0) &&
                          (kind != ScheduleKind::OneFOneB || t.w_count == 0),
                      who, "one timed W per deferred B",
                      numbers + fmt::format(" ({} deferred B)", deferred_backwards[r])));
    EXPECT_TRUE(check(t.busy_ms > 0 && t.busy_ms <= t.step_ms + 1e-9 && t.f_ms > 0 && t.b_ms > 0,
                      who, "0 < busy <= step, F and B > 0", numbers));
    EXPECT_TRUE(check(std::fabs(t.idle_ms - (t.step_ms - t.busy_ms)) <= 1e-9, who,
                      "idle = step - busy", numbers));
    const double summed = t.f_ms * t.f_count + t.b_ms * t.b_count + t.w_ms * t.w_count;
    EXPECT_TRUE(check(t.busy_ms >= 0.99 * summed, who, "busy covers every F, B and W",
                      numbers + fmt::format(" sum of intervals {:.3f}", summed)));
  }
  world.barrier();
}

TEST_F(GpuPipeline, TimingOneFOneB) { timed_step(*world, *ctx, *nccl, ScheduleKind::OneFOneB); }
TEST_F(GpuPipeline, TimingDualPipeV) { timed_step(*world, *ctx, *nccl, ScheduleKind::DualPipeV); }
TEST_F(GpuPipeline, TimingZB1P) { timed_step(*world, *ctx, *nccl, ScheduleKind::ZB1P); }

// The mesh (see the file comment): every test runs at one rank count and skips at the others.
class GpuPipelineMesh : public ::testing::Test {
 protected:
  void SetUp() override {
    world = mpi_world_communicator();
    if (const std::string missing = testing::missing_gpu_per_rank(world->size()); !missing.empty())
      GTEST_SKIP() << missing;
  }
  // Skips unless the job has `ranks` ranks; true when the test should run.
  bool at(int ranks) const { return world->size() == ranks; }

  // The runner alone on pp 2 x dp (world / 2) with ep inside dp: compare_pipeline against one GPU
  // (losses of each replica's micro-batches, step-1 gradients per tensor, norms, the whole model).
  void runner_matches_one_gpu(int ep, ScheduleKind kind) {
    const int dp = world->size() / 2;
    cuda::DeviceContext ctx(node_local_rank(world->rank()));
    MeshShape shape;
    shape.pp = 2;
    shape.dp = dp;
    shape.ep = ep;
    Mesh mesh(*world, shape);
    // NCCL over the groups, in the same order on every rank: pp, ep, dp, expert_dp.
    std::unique_ptr<Communicator> pp_nccl = make_nccl_communicator(mesh.pp(), ctx.device);
    std::unique_ptr<Communicator> ep_nccl, dp_nccl, expert_dp_nccl;
    gpu::GpuPipelineMesh groups;
    if (ep > 1) {
      ep_nccl = make_nccl_communicator(mesh.ep(), ctx.device);
      groups.ep = ep_nccl.get();
      groups.ep_host = &mesh.ep();
      groups.expert_count = pipeline_config().n_routed_experts / ep;
      groups.first_expert = mesh.coords().ep_rank * groups.expert_count;
    }
    dp_nccl = make_nccl_communicator(mesh.dp(), ctx.device);
    groups.dp = dp_nccl.get();
    if (ep > 1 && shape.expert_dp() > 1) {
      expert_dp_nccl = make_nccl_communicator(mesh.expert_dp(), ctx.device);
      groups.expert_dp = expert_dp_nccl.get();
    }
    const std::string label = fmt::format("pp 2 x dp {} ep {} (stage {} dp rank {})", dp, ep,
                                          mesh.coords().stage, mesh.coords().dp_rank);
    // Sums over 2+ replicas change the float order: per-tensor bounds after 3 AdamW steps 1e-4.
    const Tolerance tol{1e-6, 1e-6, 1e-5, 1e-5, 1e-4, 1e-5, 1e-6};
    compare_pipeline(PipelineSetup{*world, ctx, *pp_nccl, mesh.pp(), groups, dp,
                                   mesh.coords().dp_rank, label},
                     kind, Recipe::Fp32, tol);
  }

  // pp 2 x dp (world / 2), ep inside dp, through the trainer against one GPU.
  void engine_matches_one_gpu(int ep, const std::string& schedule) {
    const int dp = world->size() / 2;
    testing::SharedTempDir dir(*world);
    const std::vector<std::string> extra = {
        "train.device=cuda",   "train.precision=fp32",
        "model.num_hidden_layers=4", "train.micro_batch=1",
        "train.batch_sequences=" + std::to_string(4 * dp), "train.pp_schedule=" + schedule};
    std::vector<std::string> piped = extra;
    piped.push_back("train.pp=2");
    piped.push_back("train.ep=" + std::to_string(ep));
    const std::string par = dir.path("par"), ref = dir.path("ref");
    const Config config = testing::parallel_test_config(par, piped);
    Mesh mesh(*world, mesh_shape(world->size(), config.train, config.model));
    std::vector<std::string> parts = {"pipeline " + schedule, "cuda:",
                                      "pp 2 x dp " + std::to_string(dp),
                                      "all-reduced over dp through NCCL"};
    if (ep > 1) parts.push_back("tokens dispatched through NCCL");
    const std::string label = fmt::format("GPU pipeline {} pp 2 x dp {} ep {}", schedule, dp, ep);
    std::printf("CHECK | %s | running on %d ranks | | info\n", label.c_str(), world->size());
    testing::train_on_every_rank(config, mesh, *world, parts,
                                 label + ": the ranks' gathered host models differ after 3 steps");
    if (world->rank() == 0)
      testing::expect_matches_one_gpu(label, par, testing::parallel_test_config(ref, extra), "fp32",
                                      {1e-6, 1e-5, 1e-4, 1e-5, 1e-4},
                                      ep > 1 ? " (a routed expert: the EP dispatch, its expert_dp "
                                               "sum or its gather from the owner)"
                                             : " (the dp sum of the stage's gradients)");
    world->barrier();
  }

  std::unique_ptr<Communicator> world;
};

TEST_F(GpuPipelineMesh, RunnerOneFOneBPp2Dp2EqualsOneGpu) {
  if (!at(4)) GTEST_SKIP() << "runs on 4 ranks (mpirun -np 4); this job has " << world->size();
  runner_matches_one_gpu(1, ScheduleKind::OneFOneB);
}
TEST_F(GpuPipelineMesh, RunnerDualPipeVPp2Dp2Ep2EqualsOneGpu) {
  if (!at(4)) GTEST_SKIP() << "runs on 4 ranks (mpirun -np 4); this job has " << world->size();
  runner_matches_one_gpu(2, ScheduleKind::DualPipeV);
}
TEST_F(GpuPipelineMesh, RunnerDualPipePp2Dp2Ep2EqualsOneGpu) {
  if (!at(4)) GTEST_SKIP() << "runs on 4 ranks (mpirun -np 4); this job has " << world->size();
  runner_matches_one_gpu(2, ScheduleKind::DualPipe);
}
TEST_F(GpuPipelineMesh, RunnerDualPipeVPp2Dp4Ep2EqualsOneGpu) {
  if (!at(8)) GTEST_SKIP() << "runs on 8 ranks (mpirun -np 8); this job has " << world->size();
  runner_matches_one_gpu(2, ScheduleKind::DualPipeV);
}

TEST_F(GpuPipelineMesh, DualPipeVPp2Dp2MatchesOneGpu) {
  if (!at(4)) GTEST_SKIP() << "runs on 4 ranks (mpirun -np 4); this job has " << world->size();
  engine_matches_one_gpu(1, "dualpipev");
}
TEST_F(GpuPipelineMesh, OneFOneBPp2Dp2MatchesOneGpu) {
  if (!at(4)) GTEST_SKIP() << "runs on 4 ranks (mpirun -np 4); this job has " << world->size();
  engine_matches_one_gpu(1, "1f1b");
}
TEST_F(GpuPipelineMesh, DualPipeVPp2Dp2Ep2MatchesOneGpu) {
  if (!at(4)) GTEST_SKIP() << "runs on 4 ranks (mpirun -np 4); this job has " << world->size();
  engine_matches_one_gpu(2, "dualpipev");
}
TEST_F(GpuPipelineMesh, DualPipeVPp2Dp4Ep2MatchesOneGpu) {
  if (!at(8)) GTEST_SKIP() << "runs on 8 ranks (mpirun -np 8); this job has " << world->size();
  engine_matches_one_gpu(2, "dualpipev");
}

}  // namespace
}  // namespace frugal
