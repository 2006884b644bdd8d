// The GPU training engine (see gpu_engine.h): a DeviceContext, the GPU model and optimizer, and
// the host copies the checkpoint code reads and writes.
#include "train/gpu_engine.h"

#include "core/error.h"

namespace frugal {

double gpu_peak_flops(const std::string& device_name, int compute_capability, Recipe recipe) {
  if (compute_capability != 90) return 0;
  struct Peaks {
    double bf16, fp8, fp32;
  };
  Peaks peaks{989e12, 1979e12, 67e12};  // SXM
  if (device_name.find("PCIe") != std::string::npos)
    peaks = {756e12, 1513e12, 51e12};
  else if (device_name.find("NVL") != std::string::npos)
    peaks = {835e12, 1671e12, 60e12};
  else if (device_name.find("H100") == std::string::npos &&
           device_name.find("H200") == std::string::npos &&
           device_name.find("H800") == std::string::npos)
    return 0;  // another sm_90 part (H20, ...): not in this table
  switch (recipe) {
    case Recipe::Fp32:
      return peaks.fp32;
    case Recipe::Bf16:
      return peaks.bf16;
    case Recipe::Fp8:
      return peaks.fp8;
  }
  return 0;
}

}  // namespace frugal

#ifdef FRUGAL_HAVE_CUDA

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/cuda_check.h"
#include "core/device_context.h"
#include "kernels/adamw/adamw_cuda.h"
#include "model/gpu/gpu_transformer.h"
#include "parallel/gpu_data_parallel.h"
#include "parallel/gpu_expert_dispatch.h"
#include "parallel/gpu_zero1.h"
#include "parallel/mesh.h"
#include "train/gpu_engine_kernels.h"
#include "train/checkpoint.h"
#include "train/gpu_optimizer.h"
#ifdef FRUGAL_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace frugal {
namespace {

// The GPU of this process: 0 alone; in a data-parallel run, the node-local rank's. Checks the
// mesh before anything is allocated (every rank fails alike).
int engine_device(const Config& config, const Mesh* mesh) {
  if (mesh == nullptr) return 0;
  FRUGAL_CHECK(mesh->shape().pp == 1 && mesh->shape().ep == config.train.ep,
               "train.device = \"cuda\" on several ranks runs data and expert parallelism only "
               "(train.pp = {} must be 1; the mesh's ep {} must be train.ep = {})",
               mesh->shape().pp, mesh->shape().ep, config.train.ep);
#ifndef FRUGAL_HAVE_NCCL
  fail("train.device = \"cuda\" on {} ranks needs NCCL: this frugal was built without it "
       "(install NCCL and reconfigure), or train one GPU in one process",
       mesh->world().size());
#endif
  int devices = 0;
  FRUGAL_CUDA_CHECK(cudaGetDeviceCount(&devices));
  const int local = node_local_rank();
  const int device = local >= 0 ? local : mesh->world().rank();
  FRUGAL_CHECK(device < devices,
               "rank {} would use GPU {} (its rank on this node) but only {} GPUs are visible: "
               "train.device = \"cuda\" needs one GPU per rank (launch at most {} ranks per node)",
               mesh->world().rank(), device, devices, devices);
  return device;
}

// The routed expert a parameter of an MoE layer belongs to ("...mlp.experts.{e}...."), else -1.
int64_t routed_expert_of(const std::string& name) {
  static const std::string marker = ".mlp.experts.";
  const size_t at = name.find(marker);
  if (at == std::string::npos) return -1;
  return std::stoll(name.substr(at + marker.size()));
}

// The decoder layer "model.layers.{i}.*" a parameter belongs to, else -1 (MTP modules are layers
// i >= num_hidden_layers under the same prefix: the caller tells them apart).
int64_t decoder_layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  const size_t digits = name.find('.', prefix.size());
  if (digits == std::string::npos || digits == prefix.size()) return -1;
  const std::string number = name.substr(prefix.size(), digits - prefix.size());
  if (number.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(number);
}

// ZeRO-1's bucket size in elements: FRUGAL_ZERO1_BUCKET_ELEMENTS (a positive integer; tests and
// tuning) or the optimizer's default.
int64_t zero1_bucket_elements() {
  const char* value = std::getenv("FRUGAL_ZERO1_BUCKET_ELEMENTS");
  if (value == nullptr || *value == '\0') return gpu::GpuZero1Optimizer::kDefaultBucketElements;
  char* end = nullptr;
  const long long elements = std::strtoll(value, &end, 10);
  FRUGAL_CHECK(end != nullptr && *end == '\0' && elements > 0,
               "FRUGAL_ZERO1_BUCKET_ELEMENTS={} is not a positive integer", value);
  return static_cast<int64_t>(elements);
}

// Expert parallelism (mesh ep > 1): the NCCL communicator over this rank's EP group, reading the
// compute stream; null otherwise.
std::unique_ptr<Communicator> make_ep_communicator(const Mesh* mesh, cuda::DeviceContext& ctx) {
  if (mesh == nullptr || mesh->shape().ep <= 1) return nullptr;
#ifdef FRUGAL_HAVE_NCCL
  std::unique_ptr<Communicator> comm = make_nccl_communicator(mesh->ep(), ctx.device);
  set_input_stream(*comm, ctx.stream);
  return comm;
#else
  (void)ctx;
  fail("train.ep = {} on GPUs needs NCCL: this frugal was built without it", mesh->shape().ep);
#endif
}

// Under expert parallelism the engine clips against the global norm itself (every rank must
// scale alike, and GpuAdamW sees only this rank's experts): its AdamW runs without a clip.
OptimConfig local_optimizer_config(OptimConfig optim, const Mesh* mesh) {
  if (mesh != nullptr && mesh->shape().ep > 1) optim.grad_clip = 0;
  return optim;
}

// ZeRO-1 data parallelism (train.gpu_zero1, several ranks): the optimizer state is sharded
// (GpuZero1Optimizer) instead of a whole GpuAdamW on every rank. Under expert parallelism it
// shards the tensors every dp rank holds (all but the routed experts); each rank's experts keep a
// GpuAdamW of their own (they are not replicated over dp when expert_dp = 1, and replicated
// expert_dp times otherwise, updated alike after their all-reduce).
bool uses_zero1(const Config& config, const Mesh* mesh) {
  return mesh != nullptr && config.train.gpu_zero1;
}

class GpuEngine : public StepEngine {
 public:
  GpuEngine(const Config& config, const Mesh* mesh)
      : config_(config),
        mesh_(mesh),
        ctx_(engine_device(config, mesh)),
        choice_(choose_recipe(parse_recipe(config.train.precision), ctx_.compute_capability)),
        host_(config.model),
        ep_comm_(make_ep_communicator(mesh, ctx_)),
        model_(ctx_, config.model, choice_.recipe, ep_comm_.get()),
        optimizer_(uses_zero1(config, mesh) ? nullptr
                                            : std::make_unique<gpu::GpuAdamW>(
                                                  ctx_, local_optimizer_config(config.optim, mesh),
                                                  model_)) {
    cudaDeviceProp properties{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&properties, ctx_.device));
    device_name_ = properties.name;
    host_.init_weights(config.train.seed, config.train.init_std);
    model_.upload(host_.params());
    // The host model only carries values between the device and checkpoints: drop its gradients.
    for (const auto& param : host_.params().all()) std::vector<float>().swap(param->grad);
    if (mesh_ != nullptr) start_data_parallel();
    if (ep_comm_ != nullptr) start_expert_parallel();
  }

  std::string description() const override {
    std::string text = fmt::format("cuda:{} {} (sm_{}), {}", ctx_.device, device_name_,
                                   ctx_.compute_capability, recipe_name(choice_.recipe));
    if (zero1_ != nullptr)
      text += fmt::format(
          ", {} ranks: {}, ZeRO-1{}: gradients reduce-scattered and weights all-gathered through "
          "NCCL ({} buckets per step), optimizer state sharded ({} of {} elements here)",
          mesh_->world().size(), describe(mesh_->shape()),
          ep_comm_ != nullptr ? " over the tensors outside the routed experts" : "",
          zero1_->buckets(), zero1_->shard_elements(), zero1_->total_elements());
    else if (mesh_ != nullptr)
      text += fmt::format(", {} ranks: {}, gradients all-reduced through NCCL ({} collectives per "
                          "step)",
                          mesh_->world().size(), describe(mesh_->shape()),
                          reducer_->collectives_per_call());
    if (ep_comm_ != nullptr)
      text += fmt::format(
          ", experts {}..{} of {} here (EP {} of {}), tokens dispatched through "
          "NCCL",
          first_local_expert_, first_local_expert_ + local_experts_ - 1,
          config_.model.n_routed_experts, mesh_->coords().ep_rank, mesh_->shape().ep);
    return text;
  }
  std::string recipe_note() const override { return choice_.note; }

  void zero_grad() override { model_.zero_grad(); }

  void set_last_micro_batch(bool last) override { last_micro_batch_ = last; }

  // ZeRO-1 without expert parallelism, on the step's last micro-batch (set_last_micro_batch) and
  // with the overlap on (FRUGAL_ZERO1_OVERLAP): the backward reports each decoder layer's
  // gradients final as it finishes them, then the rest, and GpuZero1Optimizer reduce-scatters
  // every bucket that becomes ready at once (gpu_zero1.h, "Overlap"); optimizer_step does the
  // others. Under expert parallelism the backward also runs the EP group's all-to-alls on
  // another NCCL communicator, whose operations would then interleave with the dp group's in a
  // timing-dependent order: no overlap there.
  Losses forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                          const LossWeights& weights, double loss_scale) override {
    const bool last = last_micro_batch_;
    last_micro_batch_ = false;  // applies to this call only
#ifdef FRUGAL_HAVE_NCCL
    if (last && zero1_ != nullptr && ep_comm_ == nullptr && gpu::zero1_overlap_enabled())
      return model_.forward_backward(tokens, targets, batch, seq, weights, loss_scale,
                                     [this](int64_t layer) { report_final_gradients(layer); });
#else
    (void)last;
#endif
    return model_.forward_backward(tokens, targets, batch, seq, weights, loss_scale);
  }

  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                  int64_t seq) override {
    const Losses losses = model_.evaluate(tokens, targets, batch, seq, {0.0, 0.0});
    // The overlap log covers training steps: validation's exchanges are left out.
    if (ep_comm_ != nullptr && gpu::ep_overlap_stats_enabled()) gpu::take_ep_overlap_stats();
    return losses;
  }

  OptimizerStepInfo optimizer_step(double lr) override {
    if (mesh_ != nullptr) {
      // Every MoE layer's load counters become their sum over the dp group (integers: exact), so
      // every rank's bias update agrees; then the gradients.
      for (const gpu::DeviceLoadCounter& counter : model_.expert_load_counters())
        dp_comm_->all_reduce_sum(counter.counts, counter.experts, CommType::I64);
      if (zero1_ != nullptr && ep_comm_ == nullptr) {
        zero1_->reduce_scatter();
        host_model_current_ = host_optimizer_current_ = false;
        const auto info = zero1_->step(lr);
        return {info.grad_norm, info.skipped};
      }
      if (zero1_ != nullptr)
        zero1_->reduce_scatter();
      else
        reducer_->all_reduce();
      if (expert_reducer_ != nullptr) expert_reducer_->all_reduce();
    }
    // Even a skipped step invalidates the host copies: they are re-read rather than assumed equal.
    host_model_current_ = host_optimizer_current_ = false;
    if (ep_comm_ != nullptr) {
      log_overlap_stats();
      return expert_parallel_step(lr);
    }
    const auto info = optimizer_->step(lr);
    return {info.grad_norm, info.skipped};
  }

  std::vector<ExpertLoad> expert_load() override { return model_.expert_load(); }

  void update_balance_bias(double gamma) override {
    model_.update_balance_bias(gamma);
    host_model_current_ = false;
  }

  void synchronize() override { ctx_.synchronize(); }

  // Expert-parallel: collective over the EP group (every rank calls it): the other ranks' experts
  // arrive from their owners, so every rank's host model is the whole model.
  Transformer<float>& host_model() override {
    if (!host_model_current_) {
      ctx_.synchronize();
      model_.download(host_.params());
      if (ep_comm_ != nullptr) share_experts_values();
      host_model_current_ = true;
    }
    return host_;
  }

  // Expert-parallel: collective over the EP group, like host_model(); ZeRO-1: collective over the
  // dp group (the moment shards are all-gathered).
  AdamW<float>& host_optimizer() override {
    if (!host_optimizer_) {
      host_optimizer_ = std::make_unique<AdamW<float>>(config_.optim, host_.params());
      host_optimizer_current_ = false;
    }
    if (!host_optimizer_current_) {
      if (ep_comm_ != nullptr) {
        download_local_moments();
        share_experts_moments();
      } else if (zero1_ != nullptr) {
        zero1_->download(*host_optimizer_);
      } else {
        optimizer_->download(*host_optimizer_);
      }
      host_optimizer_current_ = true;
    }
    return *host_optimizer_;
  }

  // Uploads the host copies that are current (read since the device last changed, and maybe
  // edited since); a stale copy is older than the device state and must not replace it. From
  // then on the device is the reference: the next read downloads again (so what a caller reads
  // back is what the device trains with).
  void upload_host_state() override {
    if (host_model_current_) model_.upload(host_.params());  // the slice held here
    if (host_optimizer_ && host_optimizer_current_) {
      if (ep_comm_ != nullptr) {  // this rank's slice of the whole host optimizer
        copy_moments_by_name(*local_optimizer_, {host_optimizer_.get()});
        upload_local_moments();
      } else if (zero1_ != nullptr) {
        zero1_->upload(*host_optimizer_);  // this rank's shard
      } else {
        optimizer_->upload(*host_optimizer_);
      }
    }
    // Expert parallelism: the fp32 weights went up exactly, so a current host model stays current
    // (reading it again would be collective, and a caller may read it on one rank alone: the
    // parameter count frugal train prints); BF16 moments may have been rounded, so the optimizer
    // copy is read again.
    if (ep_comm_ == nullptr) host_model_current_ = false;
    host_optimizer_current_ = false;
  }

  // Data parallelism: dp rank 0 writes the checkpoint (every replica holds the same state).
  // Expert parallelism: every rank takes part in gathering the experts (collective), then dp rank
  // 0 alone returns the whole state.
  CheckpointState checkpoint_state() override {
    if (ep_comm_ != nullptr || zero1_ != nullptr) {  // collective reads on every rank
      host_model();
      host_optimizer();
    }
    if (mesh_ != nullptr && mesh_->coords().dp_rank != 0) return {};
    return {&host_model(), &host_optimizer()};
  }

  // ZeRO-1: straight into the host copies and up to this rank's shard (the default would first
  // gather the moments that the checkpoint then replaces). Every rank loads (collective as before).
  void load_checkpoint(const std::string& checkpoint_dir) override {
    if (zero1_ == nullptr) return StepEngine::load_checkpoint(checkpoint_dir);
    load_checkpoint_model(checkpoint_dir, host_model());
    if (!host_optimizer_)
      host_optimizer_ = std::make_unique<AdamW<float>>(config_.optim, host_.params());
    load_checkpoint_optimizer(checkpoint_dir, *host_optimizer_);
    host_optimizer_current_ = true;
    upload_host_state();
  }

  // ZeRO-1's bucket counts (gpu_engine.h); zeros without ZeRO-1.
  GpuZero1BucketCounts zero1_bucket_counts() const {
    GpuZero1BucketCounts counts;
#ifdef FRUGAL_HAVE_NCCL
    if (zero1_ != nullptr) {
      counts.buckets = zero1_->buckets();
      counts.early_last_step = zero1_->early_buckets_last_step();
      counts.early_total = zero1_->early_buckets_total();
      counts.on_layers_last_step = counts.early_last_step > 0 ? zero1_on_layers_last_step_ : 0;
    }
#endif
    return counts;
  }

  // Device bytes of the optimizer moments held by this rank.
  int64_t optimizer_state_bytes() const {
    return (zero1_ != nullptr ? zero1_->state_bytes() : 0) +
           (optimizer_ != nullptr ? optimizer_->state_bytes() : 0);
  }

  double flops_per_token(int64_t seq) const override { return host_.flops_per_token(seq); }
  double peak_flops() const override {
    const double one = gpu_peak_flops(device_name_, ctx_.compute_capability, choice_.recipe);
    return mesh_ != nullptr ? one * mesh_->world().size() : one;
  }
  int64_t peak_memory_bytes() const override {
    return static_cast<int64_t>(ctx_.allocator.peak_bytes_in_use());
  }
  int64_t device_malloc_calls() const override { return ctx_.allocator.cuda_malloc_calls(); }

 private:
  // The NCCL communicator over the dp group (bootstrapped through the mesh's host dp group; every
  // operation waits for the compute stream's queued work) and the gradient reducer.
  void start_data_parallel() {
#ifdef FRUGAL_HAVE_NCCL
    dp_comm_ = make_nccl_communicator(mesh_->dp(), ctx_.device);
    set_input_stream(*dp_comm_, ctx_.stream);
    // Under expert parallelism the routed experts' gradients are summed over expert_dp instead
    // (start_expert_parallel): an expert lives on one rank of each EP group.
    const bool ep = ep_comm_ != nullptr;
    std::vector<gpu::DeviceSpan> grads;
    for (const gpu::DeviceParam& p : model_.params())
      if (p.trainable && p.grad != nullptr && !(ep && routed_expert_of(p.name) >= 0))
        grads.push_back({p.grad, p.count});
    if (uses_zero1(config_, mesh_) && !ep) {
      zero1_ = std::make_unique<gpu::GpuZero1Optimizer>(
          ctx_, config_.optim, model_.params(), choice_.recipe,
          [this] { model_.weights_updated(); }, *dp_comm_, mesh_->dp(), zero1_bucket_elements());
      // The overlap's notifications in parameter indices (model_.params() is zero1_'s list).
      layer_params_.assign(static_cast<size_t>(config_.model.num_hidden_layers), {});
      const std::vector<gpu::DeviceParam>& params = model_.params();
      for (size_t i = 0; i < params.size(); ++i) {
        const int64_t layer = decoder_layer_of(params[i].name);
        if (layer >= 0 && layer < config_.model.num_hidden_layers)
          layer_params_[static_cast<size_t>(layer)].push_back(i);
        else
          other_params_.push_back(i);
      }
    } else if (uses_zero1(config_, mesh_)) {
      // The tensors outside the routed experts; the experts' GpuAdamW (start_expert_parallel)
      // refreshes every weight copy after both updates, so this one refreshes nothing.
      for (const gpu::DeviceParam& p : model_.params())
        if (routed_expert_of(p.name) < 0) dense_params_.push_back(p);
      zero1_ = std::make_unique<gpu::GpuZero1Optimizer>(ctx_, config_.optim, dense_params_,
                                                        choice_.recipe, [] {}, *dp_comm_,
                                                        mesh_->dp(), zero1_bucket_elements());
    } else {
      reducer_ = std::make_unique<gpu::GradientAllReducer>(ctx_, *dp_comm_, std::move(grads));
    }
#endif
  }

  // The backward's gradients-final notification (GpuTransformer::forward_backward): layer
  // `layer`'s parameters, or (kAllOtherGradients) every other one, go to ZeRO-1's overlap.
  void report_final_gradients(int64_t layer) {
#ifdef FRUGAL_HAVE_NCCL
    if (layer == gpu::GpuTransformer::kAllOtherGradients) {
      zero1_on_layers_last_step_ = zero1_->early_buckets_this_step();
      zero1_->reduce_scatter_ready(other_params_);
      return;
    }
    FRUGAL_CHECK(layer >= 0 && layer < static_cast<int64_t>(layer_params_.size()),
                 "GpuEngine: the backward reported decoder layer {} of {}", layer,
                 layer_params_.size());
    zero1_->reduce_scatter_ready(layer_params_[static_cast<size_t>(layer)]);
#else
    (void)layer;
#endif
  }

  // Expert parallelism: the expert_dp reducer (when expert_dp > 1), the local experts' range, the
  // host AdamW over this rank's tensors (the GPU optimizer's checkpoint layout) and the gradient
  // sets of the global norm.
  void start_expert_parallel() {
    const int64_t E = config_.model.n_routed_experts, ep = mesh_->shape().ep;
    local_experts_ = E / ep;
    first_local_expert_ = mesh_->coords().ep_rank * local_experts_;
    std::vector<gpu::DeviceSpan> expert_grads;
    local_names_.clear();
    for (const gpu::DeviceParam& p : model_.params()) {
      const int64_t e = routed_expert_of(p.name);
      FRUGAL_CHECK(e < 0 || (e >= first_local_expert_ && e < first_local_expert_ + local_experts_),
                   "EP rank {} holds {}, outside its experts [{}, {})", mesh_->coords().ep_rank,
                   p.name, first_local_expert_, first_local_expert_ + local_experts_);
      local_names_.push_back(p.name);
      if (!p.trainable || p.grad == nullptr) continue;
      (e >= 0 ? expert_norm_tensors_ : dense_norm_tensors_).push_back({p.grad, p.count});
      if (e >= 0) expert_grads.push_back({p.grad, p.count});
    }
#ifdef FRUGAL_HAVE_NCCL
    if (mesh_->shape().expert_dp() > 1) {
      expert_dp_comm_ = make_nccl_communicator(mesh_->expert_dp(), ctx_.device);
      set_input_stream(*expert_dp_comm_, ctx_.stream);
      expert_reducer_ = std::make_unique<gpu::GradientAllReducer>(ctx_, *expert_dp_comm_,
                                                                  std::move(expert_grads));
    }
#endif
    // The host store of this rank's tensors (shapes only matter) and its AdamW.
    local_optimizer_ = host_optimizer_of(local_names_, local_store_);
    if (zero1_ != nullptr) {
      // ZeRO-1 holds the other tensors (start_data_parallel); the experts get a GpuAdamW (no clip:
      // expert_parallel_step clips), whose refresh rebuilds every weight copy, and host AdamWs of
      // both parts carry their moments to and from local_optimizer_'s layout.
      std::vector<std::string> dense_names, expert_names;
      for (const gpu::DeviceParam& p : model_.params()) {
        (routed_expert_of(p.name) >= 0 ? expert_names : dense_names).push_back(p.name);
        if (routed_expert_of(p.name) >= 0) expert_params_.push_back(p);
      }
      optimizer_ = std::make_unique<gpu::GpuAdamW>(
          ctx_, local_optimizer_config(config_.optim, mesh_), expert_params_, choice_.recipe,
          [this] { model_.weights_updated(); });
      dense_host_optimizer_ = host_optimizer_of(dense_names, dense_store_);
      expert_host_optimizer_ = host_optimizer_of(expert_names, expert_store_);
    }
    for (const auto* set : {&dense_norm_tensors_, &expert_norm_tensors_})
      norm_workspace_bytes_ = std::max(
          norm_workspace_bytes_,
          set->empty()
              ? 0
              : cuda::grad_norm_workspace_bytes(set->data(), static_cast<int64_t>(set->size())));
    norm_workspace_ = cuda::DeviceArray<uint8_t>(
        ctx_, static_cast<int64_t>(std::max<size_t>(norm_workspace_bytes_, 1)));
    // The gradients the engine clips: all of them, or under ZeRO-1 the experts' (ZeRO-1 clips
    // the others).
    std::vector<gpu::DeviceSpan> clipped;
    for (const gpu::DeviceParam& p : model_.params())
      if (p.trainable && p.grad != nullptr && (zero1_ == nullptr || routed_expert_of(p.name) >= 0))
        clipped.push_back({p.grad, p.count});
    clip_spans_ = gpu::merge_device_spans(std::move(clipped));
    norm_scalars_ = cuda::DeviceArray<float>(ctx_, 4);
    norm_flags_ = cuda::DeviceArray<int32_t>(ctx_, 2);
  }

  // FRUGAL_OVERLAP_STATS=1: the step's all-to-all time and the part hidden under computation
  // (gpu_expert_dispatch.h), measured on this rank, logged by world rank 0 once per step.
  void log_overlap_stats() {
    if (!gpu::ep_overlap_stats_enabled()) return;
    const ExchangeOverlap step = gpu::take_ep_overlap_stats();
    ++overlap_steps_;
    overlap_total_ += step;
    if (mesh_->world().rank() != 0) return;
    std::printf("overlap step %lld (%s): %s; mean over %lld steps: %.1f%% hidden\n",
                static_cast<long long>(overlap_steps_),
                gpu::ep_overlap_enabled() ? "overlap on" : "overlap off",
                describe_overlap(step, 1).c_str(), static_cast<long long>(overlap_steps_),
                100.0 * overlap_total_.total().hidden_fraction());
    std::fflush(stdout);
  }

  static ParamKind kind_of(const Param<float>& p) {
    if (!p.trainable) return ParamKind::Buffer;
    return p.weight_decay ? ParamKind::Matrix : ParamKind::Norm;
  }

  // A host AdamW over `names` of the whole model (their shapes and flags added to `store`, whose
  // values are released again: the AdamW keeps its own moments, the store only sized them).
  std::unique_ptr<AdamW<float>> host_optimizer_of(const std::vector<std::string>& names,
                                                  ParamStore<float>& store) const {
    for (const std::string& name : names) {
      const Param<float>& whole = host_.params().get(name);
      Param<float>& local = store.add(name, whole.shape, kind_of(whole));
      local.trainable = whole.trainable;
      local.weight_decay = whole.weight_decay;
      std::vector<float>().swap(local.grad);
    }
    auto optimizer = std::make_unique<AdamW<float>>(config_.optim, store);
    for (const auto& param : store.all()) std::vector<float>().swap(param->value);
    return optimizer;
  }

  // Expert parallelism: this rank's moments (its dense tensors and experts) into
  // local_optimizer_; under ZeRO-1 the dense shards are all-gathered (collective over dp).
  void download_local_moments() {
    if (zero1_ == nullptr) return optimizer_->download(*local_optimizer_);
    zero1_->download(*dense_host_optimizer_);
    optimizer_->download(*expert_host_optimizer_);
    copy_moments_by_name(*local_optimizer_, {dense_host_optimizer_.get(),
                                             expert_host_optimizer_.get()});
  }
  // And back: local_optimizer_'s moments up to this rank's optimizers (ZeRO-1: its shard).
  void upload_local_moments() {
    if (zero1_ == nullptr) return optimizer_->upload(*local_optimizer_);
    copy_moments_by_name(*dense_host_optimizer_, {local_optimizer_.get()});
    copy_moments_by_name(*expert_host_optimizer_, {local_optimizer_.get()});
    zero1_->upload(*dense_host_optimizer_);
    optimizer_->upload(*expert_host_optimizer_);
  }

  // The L2 norm of every gradient of the whole model (dense tensors: equal on every rank after
  // the dp sum; routed experts: this rank's squares summed over the EP group on the host), then
  // the clip of the CPU rule, scale = min(1, grad_clip / (norm + 1e-6)), applied to this rank's
  // gradients, then the unclipped GpuAdamW. A non-finite norm skips the step on every rank alike.
  // Under ZeRO-1 the dense part is ZeRO-1's: its shards' squares summed over dp plus the experts'
  // give the same global norm, ZeRO-1 updates its shard with that clip and the experts follow.
  OptimizerStepInfo expert_parallel_step(double lr) {
    double squares[2] = {0, 0};  // dense, experts (this rank)
    const std::vector<cuda::GradTensor>* sets[2] = {&dense_norm_tensors_, &expert_norm_tensors_};
    for (int i = zero1_ != nullptr ? 1 : 0; i < 2; ++i) {
      if (sets[i]->empty()) continue;
      cuda::grad_norm_and_clip(norm_scalars_.data() + 2 * i, norm_scalars_.data() + 2 * i + 1,
                               norm_flags_.data() + i, sets[i]->data(),
                               static_cast<int64_t>(sets[i]->size()), 0.0f, norm_workspace_.data(),
                               ctx_.stream);
      float host[2] = {0, 0};
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(host, norm_scalars_.data() + 2 * i, sizeof(host),
                                        cudaMemcpyDeviceToHost, ctx_.stream));
      ctx_.synchronize();
      squares[i] = static_cast<double>(host[0]) * static_cast<double>(host[0]);
    }
    mesh_->ep().all_reduce_sum(&squares[1], 1, CommType::F64);
    double norm = std::sqrt(squares[0] + squares[1]);
    float scale = 1.0f;
    if (zero1_ != nullptr) {
      const auto dense = zero1_->step(lr, squares[1]);
      if (dense.skipped) return {dense.grad_norm, true};  // every rank sees the same norm
      norm = dense.grad_norm;
      scale = static_cast<float>(dense.clip_scale);
    } else {
      if (!std::isfinite(norm)) return {norm, true};  // every rank sees the same norm
      scale = gpu::clip_scale_for_norm(norm, config_.optim.grad_clip);
    }
    if (scale < 1.0f)  // over disjoint spans: a gradient array is scaled once
      for (const gpu::DeviceSpan& span : clip_spans_)
        cuda::scale_in_place(span.data, span.count, scale, ctx_.stream);
    const auto info = optimizer_->step(lr);
    FRUGAL_CHECK(!info.skipped,
                 "EP rank {}: the local AdamW skipped a step whose global gradient norm {} is "
                 "finite",
                 mesh_->coords().ep_rank, norm);
    return {norm, false};
  }

  // Every routed expert's host values from its owner (EP rank e / local_experts_), in the host
  // store's order on every rank.
  void share_experts_values() {
    for (const auto& param : host_.params().all()) {
      const int64_t e = routed_expert_of(param->name);
      if (e < 0) continue;
      mesh_->ep().broadcast(param->value.data(), param->numel(), CommType::F32,
                            static_cast<int>(e / local_experts_));
    }
  }

  // The whole host AdamW from this rank's (dense and local experts) and the owners' moments.
  void share_experts_moments() {
    std::unordered_map<std::string, const AdamW<float>::ParamState*> local;
    for (const auto& state : local_optimizer_->state()) local[state.name] = &state;
    std::vector<float> m, v;
    for (const auto& state : host_optimizer_->state()) {
      const int64_t e = routed_expert_of(state.name);
      const auto it = local.find(state.name);
      if (it != local.end()) {
        m = it->second->m;
        v = it->second->v;
      } else {
        FRUGAL_CHECK(e >= 0, "the GPU optimizer has no moments for {}", state.name);
        m.assign(state.m.size(), 0.0f);
        v.assign(state.v.size(), 0.0f);
      }
      if (e >= 0) {
        const int owner = static_cast<int>(e / local_experts_);
        mesh_->ep().broadcast(m.data(), static_cast<int64_t>(m.size()), CommType::F32, owner);
        mesh_->ep().broadcast(v.data(), static_cast<int64_t>(v.size()), CommType::F32, owner);
      }
      host_optimizer_->set_state(state.name, m, v);
    }
    host_optimizer_->set_step_count(local_optimizer_->step_count());
  }

  // Declaration order is construction order: the context outlives everything allocated from it.
  Config config_;
  const Mesh* mesh_;
  cuda::DeviceContext ctx_;
  RecipeChoice choice_;
  Transformer<float> host_;
  std::unique_ptr<Communicator> ep_comm_;  // expert parallelism: NCCL over the EP group
  gpu::GpuTransformer model_;
  // ZeRO-1 under expert parallelism: its tensors (all but the routed experts) and the experts',
  // which optimizer_ updates (copies of model_.params() entries: the model's pointers are fixed).
  // Declared before the optimizers that keep references to them.
  std::vector<gpu::DeviceParam> dense_params_, expert_params_;
  // Null under ZeRO-1 without expert parallelism (zero1_); the experts' only under ZeRO-1 with it.
  std::unique_ptr<gpu::GpuAdamW> optimizer_;
  std::unique_ptr<AdamW<float>> host_optimizer_;  // made on first use (checkpoints)
  bool host_model_current_ = true;                // host_ holds what the device holds
  bool host_optimizer_current_ = false;
  std::string device_name_;
  std::unique_ptr<Communicator> dp_comm_;               // data parallelism only
  std::unique_ptr<gpu::GradientAllReducer> reducer_;  // (declared after ctx_: freed first)
  std::unique_ptr<gpu::GpuZero1Optimizer> zero1_;      // ZeRO-1 instead of reducer_/optimizer_
  // ZeRO-1 without EP: model_.params() indices of each decoder layer's tensors and of the others.
  std::vector<std::vector<size_t>> layer_params_;
  std::vector<size_t> other_params_;
  bool last_micro_batch_ = false;  // set_last_micro_batch, for the next forward_backward
  int64_t zero1_on_layers_last_step_ = 0;  // buckets launched before the end-of-backward report
  // Expert parallelism only (ep_comm_ is declared before model_, which uses it).
  std::unique_ptr<Communicator> expert_dp_comm_;             // expert_dp > 1
  std::unique_ptr<gpu::GradientAllReducer> expert_reducer_;  // expert_dp > 1
  int64_t first_local_expert_ = 0, local_experts_ = 0;
  std::vector<std::string> local_names_;  // model_.params() names, in order
  ParamStore<float> local_store_;         // this rank's names and shapes (values released), for
                                          // local_optimizer_
  std::unique_ptr<AdamW<float>> local_optimizer_;  // the GPU optimizer's checkpoint layout
  ParamStore<float> dense_store_, expert_store_;    // ZeRO-1 under EP: the two parts' layouts
  std::unique_ptr<AdamW<float>> dense_host_optimizer_, expert_host_optimizer_;
  std::vector<cuda::GradTensor> dense_norm_tensors_, expert_norm_tensors_;  // as GpuAdamW counts
  std::vector<gpu::DeviceSpan> clip_spans_;  // every trainable gradient, disjoint
  size_t norm_workspace_bytes_ = 0;
  cuda::DeviceArray<uint8_t> norm_workspace_;
  cuda::DeviceArray<float> norm_scalars_;  // [dense norm, clip, expert norm, clip]
  cuda::DeviceArray<int32_t> norm_flags_;  // [2] non-finite flags
  int64_t overlap_steps_ = 0;              // FRUGAL_OVERLAP_STATS: steps measured
  ExchangeOverlap overlap_total_;          // and their sum
};

}  // namespace

std::unique_ptr<StepEngine> make_gpu_engine(const Config& config, const Mesh* mesh) {
  return std::make_unique<GpuEngine>(config, mesh);
}

int64_t gpu_optimizer_state_bytes(const StepEngine& engine) {
  const auto* gpu = dynamic_cast<const GpuEngine*>(&engine);
  FRUGAL_CHECK(gpu != nullptr, "gpu_optimizer_state_bytes: the engine is not the GPU engine ({})",
               engine.description());
  return gpu->optimizer_state_bytes();
}

GpuZero1BucketCounts gpu_zero1_bucket_counts(const StepEngine& engine) {
  const auto* gpu = dynamic_cast<const GpuEngine*>(&engine);
  FRUGAL_CHECK(gpu != nullptr, "gpu_zero1_bucket_counts: the engine is not the GPU engine ({})",
               engine.description());
  return gpu->zero1_bucket_counts();
}

}  // namespace frugal

#endif  // FRUGAL_HAVE_CUDA
