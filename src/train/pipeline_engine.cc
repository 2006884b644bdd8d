// The pipeline training engine (see pipeline_engine.h): a PipelineRunner step per training step
// over this dp rank's micro-batches, ZeRO-1 over each stage's dp group, and host copies of the
// whole model gathered by summing each tensor's counted copy over the pipeline ranks.
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

pipeline::Schedule engine_schedule(const Config& config, const Mesh& mesh) {
  const TrainConfig& t = config.train;
  FRUGAL_CHECK(mesh.shape().ep == t.ep, "the mesh has EP groups of {} but train.ep = {}",
               mesh.shape().ep, t.ep);
  FRUGAL_CHECK(config.batch_ramp.ramp_tokens <= 0,
               "train.pp = {}: the pipeline runs a fixed number of micro-batches per step "
               "(batch_ramp.ramp_tokens must be 0)",
               mesh.shape().pp);
  const int64_t micro_batches = t.batch_sequences / t.micro_batch, dp = mesh.shape().dp;
  FRUGAL_CHECK(micro_batches % dp == 0,
               "train.pp = {} with {} data-parallel ranks: the {} micro-batches of a step "
               "(train.batch_sequences / train.micro_batch) must split evenly over the dp ranks "
               "(every replica of the pipeline plays the same schedule)",
               mesh.shape().pp, dp, micro_batches);
  const auto kind = pipeline::parse_schedule_kind(t.pp_schedule, "train.pp_schedule");
  try {
    return pipeline::build_schedule(kind, pipeline::pipeline_stage_count(kind, mesh.shape().pp),
                                    static_cast<int>(micro_batches / dp));
  } catch (const Error& e) {
    fail("train.pp_schedule = \"{}\" with train.pp = {} and {} micro-batches per step over {} "
         "data-parallel ranks ({} per pipeline; train.batch_sequences / train.micro_batch / "
         "dp): {}",
         t.pp_schedule, mesh.shape().pp, micro_batches, dp, micro_batches / dp, e.what());
  }
}

// "model.layers.3.mlp.experts.5.up_proj.weight" with expert index `e` instead of 5.
std::string with_expert_index(const std::string& name, int64_t e) {
  const std::string key = ".experts.";
  const size_t at = name.find(key);
  FRUGAL_CHECK(at != std::string::npos, "{} is not a routed expert's tensor", name);
  const size_t begin = at + key.size(), end = name.find('.', begin);
  return name.substr(0, begin) + std::to_string(e) + name.substr(end);
}

// The whole model's tensors as ZeRO-1 sees this rank of the pipeline: local = this rank's copy;
// another EP rank's expert of a layer this rank holds is not local; the tensors of other stages
// are `elsewhere`; `counted` is the runner's choice of the copy the norm counts.
std::vector<GlobalParam> pipeline_layout(const Transformer<float>& whole,
                                         PipelineRunner<float>& runner, const ExpertShard& held) {
  std::vector<GlobalParam> layout = global_param_layout(whole);
  for (GlobalParam& g : layout) {
    g.local = runner.params().find(g.name);
    if (g.local == nullptr) {
      const bool peer_expert =
          g.expert >= 0 && runner.params().find(with_expert_index(g.name, held.first)) != nullptr;
      g.elsewhere = !peer_expert;
    }
    g.counted = !g.elsewhere && runner.counts_in_norm(g.name);
  }
  return layout;
}

}  // namespace

PipelineEngine::PipelineEngine(const Config& config, const Mesh& mesh)
    : config_(config), mesh_(mesh) {
  pipeline::Schedule schedule = engine_schedule(config, mesh);
  full_model_ = std::make_unique<Transformer<float>>(config.model);
  full_model_->init_weights(config.train.seed, config.train.init_std);
  full_optimizer_ = std::make_unique<AdamW<float>>(config.optim, full_model_->params());
  ExpertShard held;  // every expert, or this rank's EP slice
  if (mesh.shape().ep > 1)
    held = expert_shard(config.model.n_routed_experts, mesh.shape().ep, mesh.coords().ep_rank);
  const pipeline::ScheduleKind kind = schedule.kind;
  const int stages = schedule.stages;
  StageLayout stage_layout = resolve_stage_layout(config.train.pp_stage_layers, config.model, kind,
                                                  stages, config.train.seq_len);
  runner_ = std::make_unique<PipelineRunner<float>>(config.model, std::move(schedule), mesh.pp(),
                                                    held, std::move(stage_layout));
  if (mesh.shape().ep > 1) {
    expert_parallel_ = std::make_unique<ExpertParallel<float>>(mesh.ep());
    for (const auto& st : runner_->stages())
      for (MoE<float>* moe : st->moe_layers()) expert_parallel_->attach(*moe);
  }
  layout_ = pipeline_layout(*full_model_, *runner_, held);
  zero1_ = std::make_unique<Zero1Optimizer>(config.optim, layout_, mesh, mesh.world());
  upload_host_state();
  const double cores = std::max(1u, std::thread::hardware_concurrency());
  peak_flops_ = estimate_cpu_peak_flops() * std::min(1.0, omp_get_max_threads() / cores) *
                mesh.world().size();
}

PipelineEngine::~PipelineEngine() = default;

std::vector<Losses> run_dealt_micro_batches(
    const int32_t* tokens, const int32_t* targets, int64_t micro_batches, int64_t mine,
    int64_t rows, int64_t dp, int64_t dp_rank,
    const std::function<std::vector<Losses>(const int32_t*, const int32_t*)>& run) {
  FRUGAL_CHECK(micro_batches == mine * dp,
               "the pipeline schedule was built for {} micro-batches per step ({} per dp rank), "
               "this step has {}",
               mine * dp, mine, micro_batches);
  // This rank's micro-batches m = dp_rank + k * dp, contiguous: [mine, rows].
  std::vector<int32_t> my_tokens(static_cast<size_t>(mine * rows)), my_targets(my_tokens.size());
  for (int64_t k = 0; k < mine; ++k) {
    std::copy_n(tokens + (dp_rank + k * dp) * rows, rows, my_tokens.begin() + k * rows);
    std::copy_n(targets + (dp_rank + k * dp) * rows, rows, my_targets.begin() + k * rows);
  }
  const std::vector<Losses> ran = run(my_tokens.data(), my_targets.data());
  FRUGAL_CHECK(static_cast<int64_t>(ran.size()) == mine,
               "the pipeline returned {} micro-batches' losses, not {}", ran.size(), mine);
  std::vector<Losses> out(static_cast<size_t>(micro_batches));
  for (int64_t k = 0; k < mine; ++k) out[dp_rank + k * dp] = ran[k];
  return out;
}

std::unique_ptr<StepEngine> make_pipeline_engine(const Config& config, const Mesh& mesh) {
  return std::make_unique<PipelineEngine>(config, mesh);
}

std::string PipelineEngine::description() const {
  return fmt::format("cpu, fp32, {} threads per rank, {} ranks: {}; pipeline {} over {} stages, "
                     "{} micro-batches per step per pipeline",
                     omp_get_max_threads(), mesh_.world().size(), describe(mesh_.shape()),
                     pipeline::schedule_kind_name(runner_->schedule().kind),
                     runner_->schedule().stages, runner_->schedule().micro_batches) +
         "; " +
         describe_stage_layout(config_.train.pp_stage_layers, runner_->layout(), config_.model,
                               runner_->schedule().kind, config_.train.seq_len);
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
  return run_dealt_micro_batches(
      tokens, targets, micro_batches, runner_->schedule().micro_batches, batch * seq,
      mesh_.shape().dp, mesh_.coords().dp_rank, [&](const int32_t* mine, const int32_t* goals) {
        return runner_->step(mine, goals, batch, seq, weights, /*training=*/true,
                             1.0 / static_cast<double>(micro_batches));
      });
}

Losses PipelineEngine::evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                int64_t seq) {
  return runner_->evaluate(tokens, targets, batch, seq);
}

OptimizerStepInfo PipelineEngine::optimizer_step(double lr) {
  // Every MoE layer's load counters become their sum over the dp group (rank order; integers).
  for (const auto& st : runner_->stages())
    for (MoE<float>* moe : st->moe_layers()) {
      std::vector<int64_t> load = moe->expert_load();
      mesh_.dp().all_reduce_sum(load.data(), static_cast<int64_t>(load.size()), CommType::I64);
      moe->set_expert_load(load);
    }
  zero1_->reduce_gradients();
  const auto info = zero1_->step(lr);
  return {info.grad_norm, info.skipped};
}

std::vector<ExpertLoad> PipelineEngine::expert_load() {
  std::vector<StageLoads> stages;
  for (const auto& st : runner_->stages()) {
    StageLoads loads{st->stage(), st->layer_begin(), st->layer_end(), st->last(), {}};
    for (const MoE<float>* layer : st->moe_layers()) loads.layers.push_back(layer->expert_load());
    stages.push_back(std::move(loads));
  }
  return sum_pipeline_expert_load(*full_model_, stages, mesh_.pp());
}

std::vector<ExpertLoad> sum_pipeline_expert_load(Transformer<float>& model,
                                                 const std::vector<StageLoads>& stages,
                                                 Communicator& pp) {
  const std::vector<MoE<float>*> all_layers = model.moe_layers();
  const std::vector<ExpertLoad> names = model.expert_load();
  std::vector<std::string> layer_names;
  for (const ExpertLoad& load : names) layer_names.push_back(load.layer);
  std::vector<int64_t> offsets(all_layers.size() + 1, 0);
  for (size_t j = 0; j < all_layers.size(); ++j)
    offsets[j + 1] = offsets[j] + static_cast<int64_t>(all_layers[j]->expert_load().size());
  std::vector<int64_t> counts(static_cast<size_t>(offsets.back()), 0);
  const int64_t main_layers = model.config().num_hidden_layers;
  for (const StageLoads& st : stages) {
    // The stage's MoE layers as indices of all_layers.
    const std::vector<size_t> global =
        stage_moe_layers(layer_names, st.layer_begin, st.layer_end, st.last, main_layers);
    FRUGAL_CHECK(st.layers.size() == global.size(),
                 "stage {}: {} MoE layers, the model has {} there", st.stage, st.layers.size(),
                 global.size());
    for (size_t i = 0; i < global.size(); ++i) {
      const std::vector<int64_t>& load = st.layers[i];
      const int64_t experts = offsets[global[i] + 1] - offsets[global[i]];
      FRUGAL_CHECK(static_cast<int64_t>(load.size()) == experts,
                   "stage {}: {} counts {} experts, not {}", st.stage, names[global[i]].layer,
                   load.size(), experts);
      for (size_t e = 0; e < load.size(); ++e) counts[offsets[global[i]] + e] += load[e];
    }
  }
  pp.all_reduce_sum(counts.data(), static_cast<int64_t>(counts.size()), CommType::I64);
  for (size_t j = 0; j < all_layers.size(); ++j)
    all_layers[j]->set_expert_load(
        std::vector<int64_t>(counts.begin() + offsets[j], counts.begin() + offsets[j + 1]));
  return model.expert_load();
}

void PipelineEngine::update_balance_bias(double gamma) { runner_->update_balance_bias(gamma); }

void PipelineEngine::gather_host_state() {
  // Each stage's shards and experts to its dp rank 0, into the host copies (its tensors only).
  const bool root = mesh_.coords().dp_rank == 0;
  zero1_->gather_full(root ? full_model_.get() : nullptr, root ? full_optimizer_.get() : nullptr);
  if (!root) return;
  // Then one buffer over the dp-rank-0 pipeline: every tensor's values, then (trainable) its m and
  // v, in the whole model's order; each rank writes the tensors whose counted copy it holds and
  // zeros elsewhere.
  std::map<std::string, const AdamW<float>::ParamState*> states;
  for (const auto& st : full_optimizer_->state()) states[st.name] = &st;
  std::map<std::string, const GlobalParam*> mine;
  for (const GlobalParam& g : layout_)
    if (!g.elsewhere && runner_->counts_in_norm(g.name)) mine[g.name] = &g;
  std::vector<float> buffer;
  for (const auto& p : full_model_->params().all()) {
    const size_t n = p->value.size();
    const size_t at = buffer.size();
    buffer.resize(at + (p->trainable ? 3 * n : n), 0.0f);
    if (!mine.count(p->name)) continue;
    std::copy(p->value.begin(), p->value.end(), buffer.begin() + at);
    if (p->trainable) {
      const auto* state = states.at(p->name);
      std::copy(state->m.begin(), state->m.end(), buffer.begin() + at + n);
      std::copy(state->v.begin(), state->v.end(), buffer.begin() + at + 2 * n);
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
  full_optimizer_->set_step_count(zero1_->step_count());
}

Transformer<float>& PipelineEngine::host_model() { return *full_model_; }

AdamW<float>& PipelineEngine::host_optimizer() { return *full_optimizer_; }

void PipelineEngine::upload_host_state() {
  for (const auto& p : runner_->params().all())
    p->value = full_model_->params().get(p->name).value;
  zero1_->load_state(*full_optimizer_);
}

StepEngine::CheckpointState PipelineEngine::checkpoint_state() {
  gather_host_state();
  if (mesh_.world().rank() != 0) return {};
  return {full_model_.get(), full_optimizer_.get()};
}

int64_t PipelineEngine::peak_memory_bytes() const { return peak_rss_bytes(); }

}  // namespace frugal
