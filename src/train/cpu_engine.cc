// The CPU training engine (see cpu_engine.h): forward, backward_input and backward_weight of the
// reference model per micro-batch, the reference AdamW per step.
#include "train/cpu_engine.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "train/metrics.h"
#include "train/recipe.h"

namespace frugal {

double estimate_cpu_peak_flops() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  double mhz = 0;
  bool avx512 = false, fma = false;
  while (std::getline(in, line)) {
    if (mhz == 0 && line.rfind("cpu MHz", 0) == 0)
      mhz = std::atof(line.substr(line.find(':') + 1).c_str());
    if (line.rfind("flags", 0) == 0) {
      avx512 = avx512 || line.find(" avx512f") != std::string::npos;
      fma = fma || line.find(" fma") != std::string::npos;
    }
  }
  // FP32 FLOP per cycle per core: two FMA pipes x lanes x 2.
  double per_cycle = avx512 ? 64 : fma ? 32 : 8;
  return static_cast<double>(std::thread::hardware_concurrency()) * mhz * 1e6 * per_cycle;
}

namespace {

// The model settings, once the precision is known to be one the CPU runs (checked before the
// model is allocated).
const ModelConfig& cpu_model_config(const Config& config) {
  cpu_recipe(parse_recipe(config.train.precision));
  return config.model;
}

}  // namespace

CpuEngine::CpuEngine(const Config& config)
    : model_(cpu_model_config(config)), optimizer_(config.optim, model_.params()) {
  model_.init_weights(config.train.seed, config.train.init_std);
  // MFU is measured against the cores this run uses.
  const double cores = std::max(1u, std::thread::hardware_concurrency());
  peak_flops_ = estimate_cpu_peak_flops() * std::min(1.0, omp_get_max_threads() / cores);
}

std::string CpuEngine::description() const {
  return fmt::format("cpu, fp32, {} threads", omp_get_max_threads());
}

void CpuEngine::zero_grad() {
  model_.params().zero_grad();
}

Losses CpuEngine::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                   int64_t seq, const LossWeights& weights, double loss_scale) {
  Transformer<float>::Ctx ctx;
  const Losses losses = model_.forward(ctx, tokens, targets, batch, seq, weights, true);
  model_.backward_input(ctx, loss_scale);
  model_.backward_weight(ctx);
  return losses;
}

Losses CpuEngine::evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                           int64_t seq) {
  Transformer<float>::Ctx ctx;
  return model_.forward(ctx, tokens, targets, batch, seq, {0.0, 0.0}, false);
}

OptimizerStepInfo CpuEngine::optimizer_step(double lr) {
  const auto info = optimizer_.step(model_.params(), lr);
  return {info.grad_norm, info.skipped};
}

std::vector<ExpertLoad> CpuEngine::expert_load() {
  return model_.expert_load();
}

void CpuEngine::update_balance_bias(double gamma) {
  model_.update_balance_bias(gamma);
}

int64_t CpuEngine::peak_memory_bytes() const {
  return peak_rss_bytes();
}

}  // namespace frugal
