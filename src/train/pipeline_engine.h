// The pipeline training engine (train.pp > 1, train.device = "cpu", one rank per stage: dp = 1,
// ep = 1): parallel/pipeline_runner.h's PipelineRunner<float> and PipelineAdamW<float> behind the
// StepEngine interface. It runs a whole step at once (runs_whole_step): the trainer hands it the
// step's micro-batches [micro_batches, batch, seq] and it plays the schedule train.pp_schedule
// ("1f1b", "zb1p", "dualpipe", "dualpipev") over the mesh's pp communicator. The micro-batch count
// is fixed when the engine is built (train.batch_sequences / train.micro_batch; no batch ramp).
//
// Every rank also holds the whole model as a single-process Transformer<float> and AdamW<float>
// (the host copies; fp32, CPU): initialized from train.seed / train.init_std like CpuEngine, and
// copied into the stages. They are brought up to date by gather_host_state() (collective: each
// tensor is taken from the one rank whose copy global_grad_norm counts, others add zeros, and
// summed over the ranks, so every rank's host copies hold the pipeline's state), which
// checkpoint_state() calls (handing the state to rank 0 only, which writes the single-process
// files); host_model() and host_optimizer() are not collective and return the host copies as of
// the last gather, load or upload. upload_host_state() copies the host copies back into this
// rank's stages (resume).
//
// Validation (evaluate) is not run through the pipeline: train.eval_every must be 0 with pp > 1.
// Gradient accumulation: the runner's (+= over micro-batches, loss scale 1/micro_batches), so the
// step's gradients equal CpuEngine's up to float summation order.
#pragma once

#include <memory>
#include <vector>

#include "parallel/mesh.h"
#include "parallel/pipeline_runner.h"
#include "train/step_engine.h"

namespace frugal {

class PipelineEngine : public StepEngine {
 public:
  // Collective over the mesh (every rank builds its engine). Checks dp = 1 and ep = 1.
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
  // Sums every rank's counted copy of the weights, routing biases and AdamW state into the host
  // copies on every rank. Collective over the pipeline ranks.
  void gather_host_state();

 private:
  Config config_;
  const Mesh& mesh_;
  std::unique_ptr<Transformer<float>> full_model_;
  std::unique_ptr<AdamW<float>> full_optimizer_;
  std::unique_ptr<PipelineRunner<float>> runner_;
  std::unique_ptr<PipelineAdamW<float>> optimizer_;
  double peak_flops_ = 0;
};

std::unique_ptr<StepEngine> make_pipeline_engine(const Config& config, const Mesh& mesh);

}  // namespace frugal
