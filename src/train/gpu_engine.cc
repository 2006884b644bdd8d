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

#include <cstdlib>

#include "core/cuda_check.h"
#include "core/device_context.h"
#include "model/gpu/gpu_transformer.h"
#include "parallel/gpu_data_parallel.h"
#include "parallel/mesh.h"
#include "train/gpu_optimizer.h"
#ifdef FRUGAL_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace frugal {
namespace {

// This process's rank among the ranks the launcher started on its node (-1 when unknown).
int node_local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* value = std::getenv(name); value && *value) return std::atoi(value);
  return -1;
}

// The GPU of this process: 0 alone; in a data-parallel run, the node-local rank's. Checks the
// mesh before anything is allocated (every rank fails alike).
int engine_device(const Config& config, const Mesh* mesh) {
  if (mesh == nullptr) return 0;
  FRUGAL_CHECK(mesh->shape().pp == 1 && mesh->shape().ep == 1 && config.train.ep == 1,
               "train.device = \"cuda\" on several ranks runs data parallelism only (train.pp = {}, "
               "train.ep = {})",
               mesh->shape().pp, mesh->shape().ep);
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

class GpuEngine : public StepEngine {
 public:
  GpuEngine(const Config& config, const Mesh* mesh)
      : config_(config),
        mesh_(mesh),
        ctx_(engine_device(config, mesh)),
        choice_(choose_recipe(parse_recipe(config.train.precision), ctx_.compute_capability)),
        host_(config.model),
        model_(ctx_, config.model, choice_.recipe),
        optimizer_(ctx_, config.optim, model_) {
    cudaDeviceProp properties{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&properties, ctx_.device));
    device_name_ = properties.name;
    host_.init_weights(config.train.seed, config.train.init_std);
    model_.upload(host_.params());
    // The host model only carries values between the device and checkpoints: drop its gradients.
    for (const auto& param : host_.params().all()) std::vector<float>().swap(param->grad);
    if (mesh_ != nullptr) start_data_parallel();
  }

  std::string description() const override {
    std::string text = fmt::format("cuda:{} {} (sm_{}), {}", ctx_.device, device_name_,
                                   ctx_.compute_capability, recipe_name(choice_.recipe));
    if (mesh_ != nullptr)
      text += fmt::format(", {} ranks: {}, gradients all-reduced through NCCL ({} collectives per "
                          "step)",
                          mesh_->world().size(), describe(mesh_->shape()),
                          reducer_->collectives_per_call());
    return text;
  }
  std::string recipe_note() const override { return choice_.note; }

  void zero_grad() override { model_.zero_grad(); }

  Losses forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                          const LossWeights& weights, double loss_scale) override {
    return model_.forward_backward(tokens, targets, batch, seq, weights, loss_scale);
  }

  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                  int64_t seq) override {
    return model_.evaluate(tokens, targets, batch, seq, {0.0, 0.0});
  }

  OptimizerStepInfo optimizer_step(double lr) override {
    if (mesh_ != nullptr) {
      // Every MoE layer's load counters become their sum over the dp group (integers: exact), so
      // every rank's bias update agrees; then the gradients.
      for (const gpu::DeviceLoadCounter& counter : model_.expert_load_counters())
        dp_comm_->all_reduce_sum(counter.counts, counter.experts, CommType::I64);
      reducer_->all_reduce();
    }
    const auto info = optimizer_.step(lr);
    // Even a skipped step invalidates the host copies: they are re-read rather than assumed equal.
    host_model_current_ = host_optimizer_current_ = false;
    return {info.grad_norm, info.skipped};
  }

  std::vector<ExpertLoad> expert_load() override { return model_.expert_load(); }

  void update_balance_bias(double gamma) override {
    model_.update_balance_bias(gamma);
    host_model_current_ = false;
  }

  void synchronize() override { ctx_.synchronize(); }

  Transformer<float>& host_model() override {
    if (!host_model_current_) {
      ctx_.synchronize();
      model_.download(host_.params());
      host_model_current_ = true;
    }
    return host_;
  }

  AdamW<float>& host_optimizer() override {
    if (!host_optimizer_) {
      host_optimizer_ = std::make_unique<AdamW<float>>(config_.optim, host_.params());
      host_optimizer_current_ = false;
    }
    if (!host_optimizer_current_) {
      optimizer_.download(*host_optimizer_);
      host_optimizer_current_ = true;
    }
    return *host_optimizer_;
  }

  // Uploads the host copies that are current (read since the device last changed, and maybe
  // edited since); a stale copy is older than the device state and must not replace it. From
  // then on the device is the reference: the next read downloads again (so what a caller reads
  // back is what the device trains with).
  void upload_host_state() override {
    if (host_model_current_) model_.upload(host_.params());
    if (host_optimizer_ && host_optimizer_current_) optimizer_.upload(*host_optimizer_);
    host_model_current_ = host_optimizer_current_ = false;
  }

  // Data parallelism: dp rank 0 writes the checkpoint (every replica holds the same state).
  CheckpointState checkpoint_state() override {
    if (mesh_ != nullptr && mesh_->coords().dp_rank != 0) return {};
    return {&host_model(), &host_optimizer()};
  }

  double flops_per_token(int64_t seq) const override { return host_.flops_per_token(seq); }
  double peak_flops() const override {
    const double one = gpu_peak_flops(device_name_, ctx_.compute_capability, choice_.recipe);
    return mesh_ != nullptr ? one * mesh_->world().size() : one;
  }
  int64_t peak_memory_bytes() const override {
    return static_cast<int64_t>(ctx_.allocator.peak_bytes_in_use());
  }

 private:
  // The NCCL communicator over the dp group (bootstrapped through the mesh's host dp group; every
  // operation waits for the compute stream's queued work) and the gradient reducer.
  void start_data_parallel() {
#ifdef FRUGAL_HAVE_NCCL
    dp_comm_ = make_nccl_communicator(mesh_->dp(), ctx_.device);
    set_input_stream(*dp_comm_, ctx_.stream);
    std::vector<gpu::DeviceSpan> grads;
    for (const gpu::DeviceParam& p : model_.params())
      if (p.trainable && p.grad != nullptr) grads.push_back({p.grad, p.count});
    reducer_ = std::make_unique<gpu::GradientAllReducer>(ctx_, *dp_comm_, std::move(grads));
#endif
  }

  // Declaration order is construction order: the context outlives everything allocated from it.
  Config config_;
  const Mesh* mesh_;
  cuda::DeviceContext ctx_;
  RecipeChoice choice_;
  Transformer<float> host_;
  gpu::GpuTransformer model_;
  gpu::GpuAdamW optimizer_;
  std::unique_ptr<AdamW<float>> host_optimizer_;  // made on first use (checkpoints)
  bool host_model_current_ = true;                // host_ holds what the device holds
  bool host_optimizer_current_ = false;
  std::string device_name_;
  std::unique_ptr<Communicator> dp_comm_;               // data parallelism only
  std::unique_ptr<gpu::GradientAllReducer> reducer_;  // (declared after ctx_: freed first)
};

}  // namespace

std::unique_ptr<StepEngine> make_gpu_engine(const Config& config, const Mesh* mesh) {
  return std::make_unique<GpuEngine>(config, mesh);
}

}  // namespace frugal

#endif  // FRUGAL_HAVE_CUDA
