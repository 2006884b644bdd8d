// The GPU pipeline training engine (see gpu_pipeline_engine.h): a GpuPipelineRunner step per
// training step, GpuPipelineAdamW, and host copies of the whole model gathered by summing each
// tensor's counted copy over the pipeline ranks.
#include "train/gpu_pipeline_engine.h"

#include "core/error.h"
#include "parallel/mesh.h"

namespace frugal {

// In every build: make_step_engine refuses these settings before anything else.
void check_gpu_pipeline_mesh(const Config& config, const Mesh& mesh) {
  const MeshShape& shape = mesh.shape();
  FRUGAL_CHECK(shape.ep == config.train.ep, "the mesh has EP groups of {} but train.ep = {}",
               shape.ep, config.train.ep);
  FRUGAL_CHECK(config.train.micro_batch > 0 &&
                   config.train.batch_sequences % config.train.micro_batch == 0,
               "train.device = \"cuda\" with train.pp = {}: train.batch_sequences = {} must be a "
               "multiple of train.micro_batch = {} (the micro-batches of a step)",
               shape.pp, config.train.batch_sequences, config.train.micro_batch);
  const int64_t micro_batches = config.train.batch_sequences / config.train.micro_batch;
  FRUGAL_CHECK(micro_batches % shape.dp == 0,
               "train.device = \"cuda\" with train.pp = {} on {} ranks ({}): the {} micro-batches "
               "of a step (train.batch_sequences / train.micro_batch) must split evenly over the "
               "{} data-parallel ranks (every replica of the pipeline plays the same schedule)",
               shape.pp, mesh.world().size(), describe(shape), micro_batches, shape.dp);
}

}  // namespace frugal

#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL)

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <unordered_map>

#include "core/cuda_check.h"
#include "core/device_context.h"
#include "parallel/gpu_pipeline_runner.h"
#include "parallel/nccl_communicator.h"
#include "parallel/pipeline_timing.h"
#include "train/gpu_engine.h"
#include "train/pipeline_engine.h"
#include "train/recipe.h"

namespace frugal {

namespace {

// The GPU of this process: its rank on the node (the launcher's variable), else its world rank.
int pipeline_device(const Mesh& mesh) {
  const int local = node_local_rank();
  const int device = local >= 0 ? local : mesh.world().rank();
  int devices = 0;
  FRUGAL_CUDA_CHECK(cudaGetDeviceCount(&devices));
  FRUGAL_CHECK(device < devices,
               "rank {} would use GPU {} (its rank on this node) but only {} GPUs are visible: "
               "train.device = \"cuda\" with train.pp = {} needs one GPU per rank",
               mesh.world().rank(), device, devices, mesh.shape().pp);
  return device;
}

pipeline::Schedule gpu_pipeline_schedule(const Config& config, const Mesh& mesh) {
  const TrainConfig& t = config.train;
  check_gpu_pipeline_mesh(config, mesh);
  FRUGAL_CHECK(config.batch_ramp.ramp_tokens <= 0,
               "train.pp = {}: the pipeline runs a fixed number of micro-batches per step "
               "(batch_ramp.ramp_tokens must be 0)",
               mesh.shape().pp);
  const int64_t micro_batches = t.batch_sequences / t.micro_batch;
  const auto kind = pipeline::parse_schedule_kind(t.pp_schedule, "train.pp_schedule");
  try {
    return pipeline::build_schedule(kind, pipeline::pipeline_stage_count(kind, mesh.shape().pp),
                                    static_cast<int>(micro_batches / mesh.shape().dp));
  } catch (const Error& e) {
    fail("train.pp_schedule = \"{}\" with train.pp = {} and {} micro-batches per step over {} "
         "data-parallel ranks ({} per pipeline; train.batch_sequences / train.micro_batch / "
         "dp): {}",
         t.pp_schedule, mesh.shape().pp, micro_batches, mesh.shape().dp,
         micro_batches / mesh.shape().dp, e.what());
  }
}

class GpuPipelineEngine : public StepEngine {
 public:
  GpuPipelineEngine(const Config& config, const Mesh& mesh)
      : config_(config),
        mesh_(mesh),
        schedule_(gpu_pipeline_schedule(config, mesh)),
        ctx_(pipeline_device(mesh)),
        choice_(choose_recipe(parse_recipe(config.train.precision), ctx_.compute_capability)),
        host_(config.model),
        host_optimizer_(config.optim, host_.params()) {
    cudaDeviceProp properties{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&properties, ctx_.device));
    device_name_ = properties.name;
    host_.init_weights(config.train.seed, config.train.init_std);
    // The host model only carries values between the device and checkpoints.
    for (const auto& param : host_.params().all()) std::vector<float>().swap(param->grad);
    // NCCL communicators over the mesh's groups, made in the same order on every rank (each is
    // collective over its host group): pp, ep, dp, expert_dp.
    nccl_ = make_nccl_communicator(mesh.pp(), ctx_.device);
    gpu::GpuPipelineMesh groups;
    const MeshShape& shape = mesh.shape();
    if (shape.ep > 1) {
      ep_comm_ = make_nccl_communicator(mesh.ep(), ctx_.device);
      groups.ep = ep_comm_.get();
      groups.ep_host = &mesh.ep();
      groups.expert_count = config.model.n_routed_experts / shape.ep;
      groups.first_expert = mesh.coords().ep_rank * groups.expert_count;
    }
    if (shape.dp > 1) {
      dp_comm_ = make_nccl_communicator(mesh.dp(), ctx_.device);
      groups.dp = dp_comm_.get();
    }
    if (shape.ep > 1 && shape.expert_dp() > 1) {
      expert_dp_comm_ = make_nccl_communicator(mesh.expert_dp(), ctx_.device);
      groups.expert_dp = expert_dp_comm_.get();
    }
    runner_ = std::make_unique<gpu::GpuPipelineRunner>(
        ctx_, config.model, choice_.recipe, schedule_, *nccl_, mesh.pp(), groups,
        resolve_stage_layout(config.train.pp_stage_layers, config.model, schedule_.kind,
                             schedule_.stages, config.train.seq_len));
    optimizer_ = std::make_unique<gpu::GpuPipelineAdamW>(ctx_, config.optim, *runner_);
    // A host AdamW over this rank's trainable tensors: the GPU optimizer's checkpoint layout.
    for (const gpu::DeviceParam& p : runner_->params()) {
      if (!p.trainable) continue;
      Param<float>& local =
          local_store_.add(p.name, p.shape, p.weight_decay ? ParamKind::Matrix : ParamKind::Norm);
      std::vector<float>().swap(local.grad);
    }
    local_optimizer_ = std::make_unique<AdamW<float>>(config.optim, local_store_);
    for (const auto& param : local_store_.all()) std::vector<float>().swap(param->value);
    upload_host_state();
  }

  std::string description() const override {
    std::string text = fmt::format(
        "cuda:{} {} (sm_{}), {}, {} ranks: {}; pipeline {} over {} stages, {} micro-batches per "
        "step per pipeline",
        ctx_.device, device_name_, ctx_.compute_capability, recipe_name(choice_.recipe),
        mesh_.world().size(), describe(mesh_.shape()),
        pipeline::schedule_kind_name(schedule_.kind), schedule_.stages, schedule_.micro_batches);
    if (mesh_.shape().dp > 1)
      text += ", stage gradients all-reduced over dp through NCCL (no ZeRO-1 in the pipeline)";
    if (mesh_.shape().ep > 1) {
      const int64_t local = config_.model.n_routed_experts / mesh_.shape().ep;
      text += fmt::format(", experts {}..{} of {} here (EP {} of {}), tokens dispatched through "
                          "NCCL",
                          mesh_.coords().ep_rank * local, (mesh_.coords().ep_rank + 1) * local - 1,
                          config_.model.n_routed_experts, mesh_.coords().ep_rank,
                          mesh_.shape().ep);
    }
    text += "; " + describe_stage_layout(config_.train.pp_stage_layers, runner_->layout(),
                                         config_.model, schedule_.kind, config_.train.seq_len);
    return text;
  }
  std::string recipe_note() const override { return choice_.note; }

  void zero_grad() override { runner_->zero_grad(); }

  Losses forward_backward(const int32_t*, const int32_t*, int64_t, int64_t, const LossWeights&,
                          double) override {
    fail("the GPU pipeline engine runs whole steps (forward_backward_step), not single "
         "micro-batches");
  }
  bool runs_whole_step() const override { return true; }
  std::vector<Losses> forward_backward_step(const int32_t* tokens, const int32_t* targets,
                                            int64_t micro_batches, int64_t batch, int64_t seq,
                                            const LossWeights& weights) override {
    return run_dealt_micro_batches(
        tokens, targets, micro_batches, schedule_.micro_batches, batch * seq, mesh_.shape().dp,
        mesh_.coords().dp_rank, [&](const int32_t* mine, const int32_t* goals) {
          std::vector<Losses> ran =
              runner_->step(mine, goals, batch, seq, weights, /*training=*/true,
                            1.0 / static_cast<double>(micro_batches));
          log_timing();
          return ran;
        });
  }

  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                  int64_t seq) override {
    return runner_->evaluate(tokens, targets, batch, seq);
  }

  OptimizerStepInfo optimizer_step(double lr) override {
    // The MoE load counters summed over dp first (integers: exact), so every replica's bias
    // update and the logged loads agree; the gradients were summed over dp by the runner's step.
    runner_->sum_expert_loads_over_data_parallel();
    const auto info = optimizer_->step(lr);
    return {info.grad_norm, info.skipped};
  }

  // Every stage's device counters as the host model's loads, summed over the pipeline ranks
  // (sum_pipeline_expert_load).
  std::vector<ExpertLoad> expert_load() override {
    ctx_.synchronize();
    std::vector<StageLoads> stages;
    for (const auto& st : runner_->stages()) {
      StageLoads loads{st->stage(), st->layer_begin(), st->layer_end(), st->last(), {}};
      for (const gpu::DeviceLoadCounter& counter : st->expert_load_counters()) {
        std::vector<int64_t> load(static_cast<size_t>(counter.experts));
        FRUGAL_CUDA_CHECK(cudaMemcpy(load.data(), counter.counts, load.size() * sizeof(int64_t),
                                     cudaMemcpyDeviceToHost));
        loads.layers.push_back(std::move(load));
      }
      stages.push_back(std::move(loads));
    }
    return sum_pipeline_expert_load(host_, stages, mesh_.pp());
  }

  void update_balance_bias(double gamma) override { runner_->update_balance_bias(gamma); }
  void synchronize() override { ctx_.synchronize(); }

  Transformer<float>& host_model() override { return host_; }
  AdamW<float>& host_optimizer() override { return host_optimizer_; }

  // The host copies into the stages (weights, routing biases) and the local GpuAdamW (moments of
  // the tensors held here, the update count).
  void upload_host_state() override {
    runner_->upload(host_.params());
    copy_moments_by_name(*local_optimizer_, {&host_optimizer_});
    optimizer_->local().upload(*local_optimizer_);
  }

  // Collective over the pipeline: the weights (GpuPipelineRunner::download) and the moments, each
  // tensor's from the rank whose copy the norm counts, zeros from the others, summed on the host;
  // world rank 0 alone returns the state.
  CheckpointState checkpoint_state() override {
    gather_host_state();
    if (mesh_.world().rank() != 0) return {};
    return {&host_, &host_optimizer_};
  }

  double flops_per_token(int64_t seq) const override { return host_.flops_per_token(seq); }
  double peak_flops() const override {
    return gpu_peak_flops(device_name_, ctx_.compute_capability, choice_.recipe) *
           mesh_.world().size();
  }
  int64_t peak_memory_bytes() const override {
    return static_cast<int64_t>(ctx_.allocator.peak_bytes_in_use());
  }
  int64_t device_malloc_calls() const override { return ctx_.allocator.cuda_malloc_calls(); }

 private:
  void gather_host_state() {
    runner_->download(host_.params());
    optimizer_->local().download(*local_optimizer_);
    // Each tensor's moments from one rank of the mesh: the pipeline rank whose copy the norm
    // counts, and there (EP) a routed expert's owner, a dense tensor's EP rank 0; the others add
    // zeros to the sums over the EP group and then the pipeline.
    const bool ep = mesh_.shape().ep > 1;
    std::unordered_map<std::string, const AdamW<float>::ParamState*> mine;
    for (const auto& state : local_optimizer_->state()) {
      const bool expert = state.name.find(".mlp.experts.") != std::string::npos;
      if (runner_->counts_in_norm(state.name) && (!ep || expert || mesh_.coords().ep_rank == 0))
        mine[state.name] = &state;
    }
    std::vector<float> buffer;
    for (const auto& state : host_optimizer_.state()) {
      const size_t n = state.m.size(), at = buffer.size();
      buffer.resize(at + 2 * n, 0.0f);
      const auto it = mine.find(state.name);
      if (it == mine.end()) continue;
      FRUGAL_CHECK(it->second->m.size() == n, "{}: {} moments here, {} in the whole model",
                   state.name, it->second->m.size(), n);
      std::copy(it->second->m.begin(), it->second->m.end(), buffer.begin() + at);
      std::copy(it->second->v.begin(), it->second->v.end(), buffer.begin() + at + n);
    }
    if (ep)
      mesh_.ep().all_reduce_sum(buffer.data(), static_cast<int64_t>(buffer.size()),
                                CommType::F32);
    mesh_.pp().all_reduce_sum(buffer.data(), static_cast<int64_t>(buffer.size()), CommType::F32);
    size_t at = 0;
    std::vector<std::pair<std::string, size_t>> layout;  // (name, size) in state order
    for (const auto& state : host_optimizer_.state()) layout.emplace_back(state.name, state.m.size());
    for (const auto& [name, n] : layout) {
      host_optimizer_.set_state(
          name, std::vector<float>(buffer.begin() + at, buffer.begin() + at + n),
          std::vector<float>(buffer.begin() + at + n, buffer.begin() + at + 2 * n));
      at += 2 * n;
    }
    host_optimizer_.set_step_count(optimizer_->step_count());
  }

  // FRUGAL_PIPELINE_TIMING=1: every pipeline rank's measured step (collective over pp), printed
  // by the dp rank 0 pipeline's rank 0 next to the schedule's expected bubble with the measured
  // F, B and deferred W (0 when every W ran inside its B).
  void log_timing() {
    if (!runner_->timing()) return;
    const std::vector<pipeline::PipelineTiming> all = runner_->gather_timing();
    if (mesh_.world().rank() != 0) return;
    double f = 0, b = 0, w = 0;
    int fn = 0, bn = 0, wn = 0;
    for (const auto& t : all) {
      f += t.f_ms * t.f_count, fn += t.f_count;
      b += t.b_ms * t.b_count, bn += t.b_count;
      w += t.w_ms * t.w_count, wn += t.w_count;
    }
    f = fn ? f / fn : 0;
    b = bn ? b / bn : 0;
    w = wn ? w / wn : 0;
    const pipeline::ExpectedBubble expected = pipeline::expected_bubble(schedule_, f, b, w);
    for (size_t r = 0; r < all.size(); ++r)
      std::printf("pipeline timing rank %zu: step %.2f ms, busy %.2f ms, idle %.2f ms; F %.3f ms "
                  "x%d, B %.3f ms x%d, W %.3f ms x%d; expected idle %.2f ms (simulated), Table 2 "
                  "bubble %.2f ms (mean F %.3f, B %.3f, W %.3f)\n",
                  r, all[r].step_ms, all[r].busy_ms, all[r].idle_ms, all[r].f_ms, all[r].f_count,
                  all[r].b_ms, all[r].b_count, all[r].w_ms, all[r].w_count,
                  expected.simulated[r], expected.table2, f, b, w);
    std::fflush(stdout);
  }

  Config config_;
  const Mesh& mesh_;
  pipeline::Schedule schedule_;
  cuda::DeviceContext ctx_;
  RecipeChoice choice_;
  std::string device_name_;
  Transformer<float> host_;
  AdamW<float> host_optimizer_;
  std::unique_ptr<Communicator> nccl_;
  std::unique_ptr<Communicator> ep_comm_, dp_comm_, expert_dp_comm_;  // mesh groups (NCCL), or null
  std::unique_ptr<gpu::GpuPipelineRunner> runner_;
  std::unique_ptr<gpu::GpuPipelineAdamW> optimizer_;
  ParamStore<float> local_store_;  // this rank's trainable tensors (shapes only)
  std::unique_ptr<AdamW<float>> local_optimizer_;
};

}  // namespace

std::unique_ptr<StepEngine> make_gpu_pipeline_engine(const Config& config, const Mesh& mesh) {
  return std::make_unique<GpuPipelineEngine>(config, mesh);
}

}  // namespace frugal

#endif  // FRUGAL_HAVE_CUDA && FRUGAL_HAVE_NCCL
