// The CPU training engine (train.device = "cpu"): the reference Transformer<float> and AdamW<float>
// of model/transformer.h and train/adamw.h, fp32 only. Its host_model()/host_optimizer() are the
// model and optimizer it trains, so upload_host_state() has nothing to do.
#pragma once

#include "train/step_engine.h"

namespace frugal {

class CpuEngine : public StepEngine {
 public:
  // Weights from Transformer::init_weights(train.seed, train.init_std); zero moments.
  explicit CpuEngine(const Config& config);

  std::string description() const override;
  void zero_grad() override;
  Losses forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                          const LossWeights& weights, double loss_scale) override;
  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                  int64_t seq) override;
  OptimizerStepInfo optimizer_step(double lr) override;
  std::vector<ExpertLoad> expert_load() override;
  void update_balance_bias(double gamma) override;

  Transformer<float>& host_model() override { return model_; }
  AdamW<float>& host_optimizer() override { return optimizer_; }
  void upload_host_state() override {}

  double flops_per_token(int64_t seq) const override { return model_.flops_per_token(seq); }
  double peak_flops() const override { return peak_flops_; }
  int64_t peak_memory_bytes() const override;

 private:
  Transformer<float> model_;
  AdamW<float> optimizer_;
  double peak_flops_ = 0;
};

// Peak FP32 FLOP/s of this CPU from /proc/cpuinfo (cores x MHz x FMA lanes); 0 if unknown.
double estimate_cpu_peak_flops();

}  // namespace frugal
