// The pipeline training engine (train.pp > 1, train.device = "cpu"): parallel/pipeline_runner.h's
// PipelineRunner<float> behind the StepEngine interface, on a mesh pp x dp (parallel/mesh.h) with
// optional expert parallelism inside dp. It runs a whole step at once (runs_whole_step): the
// trainer hands every rank the step's micro-batches [micro_batches, batch, seq]; dp rank d keeps
// micro-batches d, d + dp, ... (the CPU engine's deal) and plays the schedule train.pp_schedule
// ("1f1b", "zb1p", "dualpipe", "dualpipev") over them on the mesh's pp communicator (the pipeline
// of the stages' dp rank d). The micro-batch count is fixed when the engine is built
// (train.batch_sequences / train.micro_batch, a multiple of dp; no batch ramp); the returned
// Losses are the micro-batches this rank ran, zeros for the others (the trainer sums over dp).
//
// Expert parallelism (train.ep > 1): each stage's MoE layers hold the routed experts of this rank's
// EP slice and exchange tokens with the EP group of the stage (ExpertParallel); the EP ranks of a
// stage play the same step list, so their collectives meet in order.
//
// Optimizer: ZeRO-1 (train/zero1.h) over the stage's tensors: dense gradients reduce-scattered
// over the stage's dp group, held experts' over expert_dp, after the runner summed the shared
// gradients (DualPipe's two copies, the MTP stage's embedding copy). The layout numbers the whole
// model's norm chunks; a chunk's sum of squares comes from its one owner of the counted copy and
// the sums are all-reduced over the world, so the norm is bitwise the single process's norm of the
// same gradients. optimizer_step first sums the stages' MoE load counters over dp (as CpuEngine).
//
// Every rank also holds the whole model as a single-process Transformer<float> and AdamW<float>
// (the host copies; fp32, CPU, every expert): initialized from train.seed / train.init_std like
// CpuEngine, and copied into the stages. gather_host_state() brings them up to date on the dp rank
// 0 ranks (collective over the mesh: ZeRO-1 gathers each stage's shards and experts to its dp rank
// 0, then each tensor is taken from the one stage whose copy the norm counts, others add zeros,
// summed over the dp-rank-0 pipeline); checkpoint_state() calls it and hands the state to world
// rank 0 only, which writes the single-process files. host_model() and host_optimizer() are not
// collective and return the host copies as of the last gather, load or upload.
// upload_host_state() copies the host copies into this rank's stages and ZeRO-1 shards (resume: the
// default load_checkpoint reads any checkpoint into the host copies, then uploads).
//
// Validation (evaluate): a forward-only pass of one batch through the stages (PipelineRunner::
// evaluate), collective over the pp group (and the EP group with ep > 1); bitwise the single
// process's losses.
// Gradient accumulation: the runner's (+= over this rank's micro-batches, loss scale 1/(all
// micro-batches)), then the rank-order sum over dp, so the step's gradients equal CpuEngine's up to
// float summation order.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "parallel/expert_parallel.h"
#include "parallel/mesh.h"
#include "parallel/pipeline_runner.h"
#include "train/step_engine.h"
#include "train/zero1.h"

namespace frugal {

class PipelineEngine : public StepEngine {
 public:
  // Collective over the mesh (every rank builds its engine). Checks the micro-batch count.
  PipelineEngine(const Config& config, const Mesh& mesh);
  ~PipelineEngine() override;

  std::string description() const override;
  void zero_grad() override;
  Losses forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                          const LossWeights& weights, double loss_scale) override;
  bool runs_whole_step() const override { return true; }
  std::vector<Losses> forward_backward_step(const int32_t* tokens, const int32_t* targets,
                                            int64_t micro_batches, int64_t batch, int64_t seq,
                                            const LossWeights& weights) override;
  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                  int64_t seq) override;
  OptimizerStepInfo optimizer_step(double lr) override;
  std::vector<ExpertLoad> expert_load() override;
  void update_balance_bias(double gamma) override;

  Transformer<float>& host_model() override;
  AdamW<float>& host_optimizer() override;
  void upload_host_state() override;
  CheckpointState checkpoint_state() override;

  double flops_per_token(int64_t seq) const override { return full_model_->flops_per_token(seq); }
  double peak_flops() const override { return peak_flops_; }
  int64_t peak_memory_bytes() const override;

  const PipelineRunner<float>& runner() const { return *runner_; }
  const Zero1Optimizer& zero1() const { return *zero1_; }
  // Gathers the weights, routing biases and AdamW state of every stage into the host copies of
  // the dp rank 0 ranks (see above). Collective over the mesh.
  void gather_host_state();

 private:
  Config config_;
  const Mesh& mesh_;
  std::unique_ptr<Transformer<float>> full_model_;
  std::unique_ptr<AdamW<float>> full_optimizer_;
  std::unique_ptr<PipelineRunner<float>> runner_;
  std::unique_ptr<ExpertParallel<float>> expert_parallel_;  // ep > 1
  std::unique_ptr<Zero1Optimizer> zero1_;
  std::vector<GlobalParam> layout_;  // the whole model's tensors, as zero1_ sees them
  double peak_flops_ = 0;
};

std::unique_ptr<StepEngine> make_pipeline_engine(const Config& config, const Mesh& mesh);

// A pipeline engine's share of one step (CPU and GPU): dp rank `dp_rank` of `dp` runs the
// micro-batches m = dp_rank + k * dp, k < mine (checked: micro_batches == mine * dp), which `run`
// gets contiguous (tokens, targets [mine, rows]) and returns the Losses of. The result has every
// micro-batch's Losses, zeros for the other dp ranks' (the trainer sums over dp).
std::vector<Losses> run_dealt_micro_batches(
    const int32_t* tokens, const int32_t* targets, int64_t micro_batches, int64_t mine,
    int64_t rows, int64_t dp, int64_t dp_rank,
    const std::function<std::vector<Losses>(const int32_t*, const int32_t*)>& run);

// The expert loads of a pipeline rank's stages, as the whole model's (CPU and GPU): each stage's
// MoE layers (stage_moe_layers: its main layers in [layer_begin, layer_end), then the MTP blocks
// on the last stage) hold one count per expert; `loads_of(i)` gives stage i's, in that order. They
// are added into the whole model's layers of `model`, summed over `pp` (integers: exact; DualPipe's
// two copies of a stage add up) and set as model's loads, which are returned.
struct StageLoads {
  int stage = 0;
  int64_t layer_begin = 0, layer_end = 0;
  bool last = false;
  std::vector<std::vector<int64_t>> layers;  // per MoE layer of the stage, one count per expert
};
std::vector<ExpertLoad> sum_pipeline_expert_load(Transformer<float>& model,
                                                 const std::vector<StageLoads>& stages,
                                                 Communicator& pp);

}  // namespace frugal
