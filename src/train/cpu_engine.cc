// The CPU training engine (see cpu_engine.h): forward, backward_input and backward_weight of the
// reference model per micro-batch (gradients summed in micro-batch order), the reference AdamW or,
// on a mesh, ZeRO-1 per step.
#include "train/cpu_engine.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "io/model_io.h"
#include "train/checkpoint.h"
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

// The experts this rank holds: its EP rank's share, or all of them.
ExpertShard held_experts(const Config& config, const Mesh* mesh) {
  if (!mesh || mesh->shape().ep == 1) return {};
  return expert_shard(config.model.n_routed_experts, mesh->shape().ep, mesh->coords().ep_rank);
}

}  // namespace

CpuEngine::CpuEngine(const Config& config, const Mesh* mesh)
    : config_(config),
      mesh_(mesh),
      model_(cpu_model_config(config), held_experts(config, mesh)) {
  model_.init_weights(config.train.seed, config.train.init_std);
  if (mesh_) {
    FRUGAL_CHECK(mesh_->shape().pp == 1,
                 "train.pp = {}: the CPU engine runs train.pp = 1 (data and expert parallelism); "
                 "pipelines run on the pipeline engine (make_step_engine picks it)",
                 mesh_->shape().pp);
    FRUGAL_CHECK(mesh_->shape().ep == config.train.ep,
                 "the mesh has EP groups of {} but train.ep = {}", mesh_->shape().ep,
                 config.train.ep);
    if (mesh_->shape().ep > 1) {
      expert_parallel_ = std::make_unique<ExpertParallel<float>>(mesh_->ep());
      attach_expert_parallel(model_, *expert_parallel_);
    }
    zero1_ = std::make_unique<Zero1Optimizer>(config.optim, model_, *mesh_);
  } else {
    optimizer_ = std::make_unique<AdamW<float>>(config.optim, model_.params());
  }
  // MFU is measured against the cores this run uses (every rank's: the step line's tokens/s is
  // the job's).
  const double cores = std::max(1u, std::thread::hardware_concurrency());
  peak_flops_ = estimate_cpu_peak_flops() * std::min(1.0, omp_get_max_threads() / cores);
  if (mesh_) peak_flops_ *= mesh_->world().size();
}

CpuEngine::~CpuEngine() = default;

std::string CpuEngine::description() const {
  if (!mesh_) return fmt::format("cpu, fp32, {} threads", omp_get_max_threads());
  return fmt::format("cpu, fp32, {} threads per rank, {} ranks: {}", omp_get_max_threads(),
                     mesh_->world().size(), describe(mesh_->shape()));
}

void CpuEngine::zero_grad() {
  model_.params().zero_grad();
  micro_batches_ = 0;
  sum_held_ = false;
}

Losses CpuEngine::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                   int64_t seq, const LossWeights& weights, double loss_scale) {
  const auto& params = model_.params().all();
  if (micro_batches_ > 0) {
    // G_m is computed from zero; the sum of the earlier micro-batches waits aside.
    if (!sum_held_) {
      gradient_sum_.resize(params.size());
      for (size_t i = 0; i < params.size(); ++i) {
        gradient_sum_[i].swap(params[i]->grad);
        params[i]->grad.assign(gradient_sum_[i].size(), 0.0f);
      }
      sum_held_ = true;
    } else {
      for (const auto& p : params) std::fill(p->grad.begin(), p->grad.end(), 0.0f);
    }
  }
  Transformer<float>::Ctx ctx;
  const Losses losses = model_.forward(ctx, tokens, targets, batch, seq, weights, true);
  model_.backward_input(ctx, loss_scale);
  model_.backward_weight(ctx);
  if (sum_held_) {
    for (size_t i = 0; i < params.size(); ++i) {
      float* sum = gradient_sum_[i].data();
      const float* grad = params[i]->grad.data();
      const int64_t n = static_cast<int64_t>(params[i]->grad.size());
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < n; ++j) sum[j] += grad[j];
    }
  }
  micro_batches_ += 1;
  return losses;
}

void CpuEngine::finish_gradient_sum() {
  if (!sum_held_) return;
  const auto& params = model_.params().all();
  for (size_t i = 0; i < params.size(); ++i) params[i]->grad.swap(gradient_sum_[i]);
  sum_held_ = false;  // a further micro-batch moves the sum aside again
}

Losses CpuEngine::evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                           int64_t seq) {
  Transformer<float>::Ctx ctx;
  return model_.forward(ctx, tokens, targets, batch, seq, {0.0, 0.0}, false);
}

OptimizerStepInfo CpuEngine::optimizer_step(double lr) {
  finish_gradient_sum();
  if (!zero1_) {
    const auto info = optimizer_->step(model_.params(), lr);
    return {info.grad_norm, info.skipped};
  }
  // Every MoE layer's load counters become their sum over the dp group (rank order; integers).
  for (MoE<float>* moe : model_.moe_layers()) {
    std::vector<int64_t> load = moe->expert_load();
    mesh_->dp().all_reduce_sum(load.data(), static_cast<int64_t>(load.size()), CommType::I64);
    moe->set_expert_load(load);
  }
  zero1_->reduce_gradients();
  const auto info = zero1_->step(lr);
  return {info.grad_norm, info.skipped};
}

std::vector<ExpertLoad> CpuEngine::expert_load() {
  return model_.expert_load();
}

void CpuEngine::update_balance_bias(double gamma) {
  model_.update_balance_bias(gamma);
}

Transformer<float>& CpuEngine::host_model() {
  finish_gradient_sum();
  return model_;
}

AdamW<float>& CpuEngine::host_optimizer() {
  FRUGAL_CHECK(optimizer_ != nullptr,
               "the optimizer state of a multi-process run is sharded (ZeRO-1) and has no "
               "single-process AdamW: read it from a checkpoint (checkpoint_state gathers it)");
  return *optimizer_;
}

void CpuEngine::load_checkpoint(const std::string& checkpoint_dir) {
  if (!zero1_) {
    load_checkpoint_model(checkpoint_dir, model_);
    load_checkpoint_optimizer(checkpoint_dir, *optimizer_);
    return;
  }
  // Experts held by other EP ranks are in the file and not in this model.
  ParamLoadOptions options;
  for (const GlobalParam& g : global_param_layout(model_))
    if (!g.local) options.ignore_prefixes.push_back(g.name);
  load_params(model_.params(),
              (std::filesystem::path(checkpoint_dir) / "model.safetensors").string(), options);
  zero1_->load(checkpoint_dir);
}

StepEngine::CheckpointState CpuEngine::checkpoint_state() {
  if (!zero1_) return {&host_model(), optimizer_.get()};
  // ZeRO-1: dp rank 0 gathers every parameter and moment into a single-process model and AdamW
  // (the model itself when it holds every expert).
  const bool root = mesh_->coords().dp_rank == 0;
  if (root && !full_optimizer_) {
    if (expert_parallel_) full_model_ = std::make_unique<Transformer<float>>(config_.model);
    full_optimizer_ = std::make_unique<AdamW<float>>(
        config_.optim, (full_model_ ? *full_model_ : model_).params());
  }
  Transformer<float>* full = full_model_ ? full_model_.get() : &model_;
  zero1_->gather_full(root ? full : nullptr, root ? full_optimizer_.get() : nullptr);
  if (!root) return {};
  return {full, full_optimizer_.get()};
}

int64_t CpuEngine::peak_memory_bytes() const {
  return peak_rss_bytes();
}

}  // namespace frugal
