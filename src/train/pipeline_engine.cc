// The pipeline training engine (see pipeline_engine.h): a PipelineRunner step per training step,
// PipelineAdamW, and host copies of the whole model gathered by summing each tensor's counted copy
// over the pipeline ranks.
#include "train/pipeline_engine.h"

#include <omp.h>

#include <algorithm>
#include <map>
#include <thread>

#include "core/error.h"
#include "train/cpu_engine.h"
#include "train/metrics.h"

namespace frugal {

namespace {

// The layer index of a MoE name "model.layers.{i}.mlp".
int64_t moe_layer_index(const std::string& name) {
  const std::string prefix = "model.layers.";
  FRUGAL_CHECK(name.rfind(prefix, 0) == 0, "unexpected MoE layer name {}", name);
  return std::stoll(name.substr(prefix.size()));
}

pipeline::Schedule engine_schedule(const Config& config, const Mesh& mesh) {
  const TrainConfig& t = config.train;
  FRUGAL_CHECK(mesh.shape().dp == 1 && mesh.shape().ep == 1 && t.ep == 1,
               "train.pp = {} on {} ranks (dp {}, ep {}): pipeline parallelism runs with one rank "
               "per stage only (launch exactly train.pp ranks, train.ep = 1); pipeline with data "
               "or expert parallelism is not supported",
               mesh.shape().pp, mesh.world().size(), mesh.shape().dp, t.ep);
  FRUGAL_CHECK(t.eval_every == 0,
               "train.eval_every = {}: validation is not run through the pipeline; set "
               "train.eval_every = 0 with train.pp > 1",
               t.eval_every);
  FRUGAL_CHECK(config.batch_ramp.ramp_tokens <= 0,
               "train.pp = {}: the pipeline runs a fixed number of micro-batches per step "
               "(batch_ramp.ramp_tokens must be 0)",
               mesh.shape().pp);
  const auto kind = pipeline::parse_schedule_kind(t.pp_schedule, "train.pp_schedule");
  return pipeline::build_schedule(kind, pipeline::pipeline_stage_count(kind, mesh.shape().pp),
                                  static_cast<int>(t.batch_sequences / t.micro_batch));
}

}  // namespace

PipelineEngine::PipelineEngine(const Config& config, const Mesh& mesh)
    : config_(config), mesh_(mesh) {
  pipeline::Schedule schedule = engine_schedule(config, mesh);
  full_model_ = std::make_unique<Transformer<float>>(config.model);
  full_model_->init_weights(config.train.seed, config.train.init_std);
  full_optimizer_ = std::make_unique<AdamW<float>>(config.optim, full_model_->params());
  runner_ = std::make_unique<PipelineRunner<float>>(config.model, std::move(schedule), mesh.pp());
  optimizer_ = std::make_unique<PipelineAdamW<float>>(config.optim, *runner_);
  upload_host_state();
  const double cores = std::max(1u, std::thread::hardware_concurrency());
  peak_flops_ = estimate_cpu_peak_flops() * std::min(1.0, omp_get_max_threads() / cores) *
                mesh.world().size();
}

PipelineEngine::~PipelineEngine() = default;

std::unique_ptr<StepEngine> make_pipeline_engine(const Config& config, const Mesh& mesh) {
  return std::make_unique<PipelineEngine>(config, mesh);
}

std::string PipelineEngine::description() const {
  return fmt::format("cpu, fp32, {} threads per rank, {} ranks: pipeline {} over {} stages, {} "
                     "micro-batches per step",
                     omp_get_max_threads(), mesh_.world().size(),
                     pipeline::schedule_kind_name(runner_->schedule().kind),
                     runner_->schedule().stages, runner_->schedule().micro_batches);
}

void PipelineEngine::zero_grad() { runner_->params().zero_grad(); }

Losses PipelineEngine::forward_backward(const int32_t*, const int32_t*, int64_t, int64_t,
                                        const LossWeights&, double) {
  fail("the pipeline engine runs whole steps (forward_backward_step), not single micro-batches");
}

std::vector<Losses> PipelineEngine::forward_backward_step(const int32_t* tokens,
                                                          const int32_t* targets,
                                                          int64_t micro_batches, int64_t batch,
                                                          int64_t seq, const LossWeights& weights) {
  FRUGAL_CHECK(micro_batches == runner_->schedule().micro_batches,
               "the pipeline schedule was built for {} micro-batches per step, this step has {}",
               runner_->schedule().micro_batches, micro_batches);
  return runner_->step(tokens, targets, batch, seq, weights, /*training=*/true);
}

Losses PipelineEngine::evaluate(const int32_t*, const int32_t*, int64_t, int64_t) {
  fail("validation is not run through the pipeline (set train.eval_every = 0 with train.pp > 1)");
}

OptimizerStepInfo PipelineEngine::optimizer_step(double lr) {
  const auto info = optimizer_->step(lr);
  return {info.grad_norm, info.skipped};
}

std::vector<ExpertLoad> PipelineEngine::expert_load() {
  // Each rank adds the counters of its stages' MoE layers into the whole model's list (DualPipe's
  // two copies of a stage add up, as update_balance_bias sums them); integers, so exact.
  const std::vector<MoE<float>*> all_layers = full_model_->moe_layers();
  const std::vector<ExpertLoad> names = full_model_->expert_load();
  std::vector<int64_t> offsets(all_layers.size() + 1, 0);
  for (size_t j = 0; j < all_layers.size(); ++j)
    offsets[j + 1] = offsets[j] + static_cast<int64_t>(all_layers[j]->expert_load().size());
  std::vector<int64_t> counts(static_cast<size_t>(offsets.back()), 0);
  const int64_t main_layers = config_.model.num_hidden_layers;
  for (const auto& st : runner_->stages()) {
    std::vector<size_t> global;  // the stage's MoE layers as indices of all_layers
    for (size_t j = 0; j < names.size(); ++j) {
      const int64_t index = moe_layer_index(names[j].layer);
      if (index >= st->layer_begin() && index < st->layer_end()) global.push_back(j);
    }
    if (st->last())
      for (size_t j = 0; j < names.size(); ++j)
        if (moe_layer_index(names[j].layer) >= main_layers) global.push_back(j);
    const std::vector<MoE<float>*> layers = st->moe_layers();
    FRUGAL_CHECK(layers.size() == global.size(), "stage {}: {} MoE layers, the model has {} there",
                 st->stage(), layers.size(), global.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      const std::vector<int64_t>& load = layers[i]->expert_load();
      for (size_t e = 0; e < load.size(); ++e) counts[offsets[global[i]] + e] += load[e];
    }
  }
  mesh_.pp().all_reduce_sum(counts.data(), static_cast<int64_t>(counts.size()), CommType::I64);
  for (size_t j = 0; j < all_layers.size(); ++j)
    all_layers[j]->set_expert_load(
        std::vector<int64_t>(counts.begin() + offsets[j], counts.begin() + offsets[j + 1]));
  return full_model_->expert_load();
}

void PipelineEngine::update_balance_bias(double gamma) { runner_->update_balance_bias(gamma); }

void PipelineEngine::gather_host_state() {
  // One buffer: every tensor's values, then (trainable) its m and v, in the
  // whole model's order; each rank writes the copies it counts and zeros elsewhere.
  std::map<std::string, size_t> moment_index;  // name -> index in this rank's PipelineAdamW
  size_t k = 0;
  for (const auto& p : runner_->params().all())
    if (p->trainable) moment_index[p->name] = k++;
  std::vector<float> buffer;
  for (const auto& p : full_model_->params().all()) {
    const size_t n = p->value.size();
    const size_t at = buffer.size();
    buffer.resize(at + (p->trainable ? 3 * n : n), 0.0f);
    Param<float>* mine = runner_->params().find(p->name);
    if (mine == nullptr || !runner_->counts_in_norm(p->name)) continue;
    std::copy(mine->value.begin(), mine->value.end(), buffer.begin() + at);
    if (p->trainable) {
      const size_t i = moment_index.at(p->name);
      const auto& m = optimizer_->first_moments()[i];
      const auto& v = optimizer_->second_moments()[i];
      std::copy(m.begin(), m.end(), buffer.begin() + at + n);
      std::copy(v.begin(), v.end(), buffer.begin() + at + 2 * n);
    }
  }
  mesh_.pp().all_reduce_sum(buffer.data(), static_cast<int64_t>(buffer.size()), CommType::F32);
  size_t at = 0;
  for (const auto& p : full_model_->params().all()) {
    const size_t n = p->value.size();
    std::copy(buffer.begin() + at, buffer.begin() + at + n, p->value.begin());
    at += n;
    if (p->trainable) {
      full_optimizer_->set_state(
          p->name, std::vector<float>(buffer.begin() + at, buffer.begin() + at + n),
          std::vector<float>(buffer.begin() + at + n, buffer.begin() + at + 2 * n));
      at += 2 * n;
    }
  }
  full_optimizer_->set_step_count(optimizer_->step_count());
}

Transformer<float>& PipelineEngine::host_model() { return *full_model_; }

AdamW<float>& PipelineEngine::host_optimizer() { return *full_optimizer_; }

void PipelineEngine::upload_host_state() {
  std::map<std::string, const AdamW<float>::ParamState*> states;
  for (const auto& s : full_optimizer_->state()) states[s.name] = &s;
  size_t k = 0;
  for (const auto& p : runner_->params().all()) {
    const Param<float>& source = full_model_->params().get(p->name);
    p->value = source.value;
    if (!p->trainable) continue;
    optimizer_->first_moments()[k] = states.at(p->name)->m;
    optimizer_->second_moments()[k] = states.at(p->name)->v;
    ++k;
  }
  optimizer_->set_step_count(full_optimizer_->step_count());
}

StepEngine::CheckpointState PipelineEngine::checkpoint_state() {
  gather_host_state();
  if (mesh_.world().rank() != 0) return {};
  return {full_model_.get(), full_optimizer_.get()};
}

int64_t PipelineEngine::peak_memory_bytes() const { return peak_rss_bytes(); }

}  // namespace frugal
