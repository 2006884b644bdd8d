// The CPU training engine (train.device = "cpu"): the reference Transformer<float> and AdamW<float>
// of model/transformer.h and train/adamw.h, fp32 only. Its host_model()/host_optimizer() are the
// model and optimizer it trains, so upload_host_state() has nothing to do.
//
// Gradient accumulation: the first micro-batch of a step is computed into the zeroed gradients;
// every later one is computed into zeroed gradients again and then added to the running sum (in
// micro-batch order). So a step's gradient is G_0 + G_1 + ... with each G_m computed alone, which
// a data-parallel run reproduces bitwise when each rank runs one micro-batch (rank-order sums).
// The sum is back in Param::grad when optimizer_step or host_model() reads it.
//
// One rank of a multi-process run (a Mesh given; parallel/mesh.h, data and expert parallelism,
// train.pp = 1): the model holds this rank's EP slice of the routed experts (all of them when
// train.ep = 1) and its MoE layers exchange tokens with the EP group (parallel/expert_parallel.h),
// so forward_backward and evaluate are collective over the EP group. optimizer_step sums every MoE
// layer's load counters over the dp group (so every rank's bias update agrees) and runs ZeRO-1
// (train/zero1.h: gradients reduce-scattered in rank order, AdamW on this rank's shard, parameters
// all-gathered). There is then no single-process AdamW: host_optimizer() refuses, and
// checkpoint_state() gathers the whole state to dp rank 0 (the files a single process writes);
// load_checkpoint reads this rank's experts and shards from any checkpoint. The MFU peak is the
// whole job's (the step line's tokens/s is the job's).
#pragma once

#include <memory>
#include <vector>

#include "parallel/expert_parallel.h"
#include "parallel/mesh.h"
#include "train/step_engine.h"
#include "train/zero1.h"

namespace frugal {

class CpuEngine : public StepEngine {
 public:
  // Weights from Transformer::init_weights(train.seed, train.init_std); zero moments. `mesh`: see
  // above (collective: every rank of the mesh constructs its engine); null for a single process.
  explicit CpuEngine(const Config& config, const Mesh* mesh = nullptr);
  ~CpuEngine() override;

  std::string description() const override;
  void zero_grad() override;
  Losses forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                          const LossWeights& weights, double loss_scale) override;
  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                  int64_t seq) override;
  OptimizerStepInfo optimizer_step(double lr) override;
  std::vector<ExpertLoad> expert_load() override;
  void update_balance_bias(double gamma) override;

  Transformer<float>& host_model() override;
  // The single-process optimizer (a multi-process run keeps ZeRO-1 shards: see zero1()).
  AdamW<float>& host_optimizer() override;
  void upload_host_state() override {}
  void load_checkpoint(const std::string& checkpoint_dir) override;
  CheckpointState checkpoint_state() override;

  double flops_per_token(int64_t seq) const override { return model_.flops_per_token(seq); }
  double peak_flops() const override { return peak_flops_; }
  int64_t peak_memory_bytes() const override;

  // The ZeRO-1 optimizer of a multi-process run (null for a single process).
  const Zero1Optimizer* zero1() const { return zero1_.get(); }
  // The expert-parallel runner (null unless train.ep > 1).
  const ExpertParallel<float>* expert_parallel() const { return expert_parallel_.get(); }

 private:
  // Moves the running sum back into Param::grad (no-op when there is none).
  void finish_gradient_sum();

  Config config_;
  const Mesh* mesh_;
  Transformer<float> model_;
  std::unique_ptr<ExpertParallel<float>> expert_parallel_;
  std::unique_ptr<AdamW<float>> optimizer_;         // single process
  std::unique_ptr<Zero1Optimizer> zero1_;           // multi-process
  std::unique_ptr<Transformer<float>> full_model_;  // dp rank 0 with ep > 1: what a save writes
  std::unique_ptr<AdamW<float>> full_optimizer_;    // dp rank 0: the gathered moments
  // Gradient accumulation (see above): micro-batches run since zero_grad, and the running sum of
  // the earlier ones while a later one computes into Param::grad (one array per parameter).
  int64_t micro_batches_ = 0;
  bool sum_held_ = false;  // gradient_sum_ holds the running sum (Param::grad the current G_m)
  std::vector<std::vector<float>> gradient_sum_;
  double peak_flops_ = 0;
};

// Peak FP32 FLOP/s of this CPU from /proc/cpuinfo (cores x MHz x FMA lanes); 0 if unknown.
double estimate_cpu_peak_flops();

}  // namespace frugal
