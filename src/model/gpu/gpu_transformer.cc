// GpuTransformer: the facade of gpu_transformer.h over GpuModel (gpu_model.h: one
// GpuPipelineStage holding the whole model), plus the parameter transfers to and from a CPU
// ParamStore.
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_transformer.h"

#include "core/cuda_check.h"
#include "core/error.h"
#include "io/hf_layout.h"
#include "model/gpu/gpu_model.h"
#include "parallel/communicator.h"

namespace frugal::gpu {

struct GpuTransformer::Impl {
  cuda::DeviceContext& ctx;
  ModelConfig cfg;
  Recipe recipe;
  bool expert_parallel;
  std::unique_ptr<GpuModelBase> model;
};

GpuTransformer::GpuTransformer(cuda::DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe,
                               Communicator* ep_comm)
    : impl_(std::make_unique<Impl>(Impl{ctx, cfg, recipe, ep_comm != nullptr && ep_comm->size() > 1,
                                        make_gpu_model(ctx, cfg, recipe, ep_comm)})) {}

GpuTransformer::~GpuTransformer() = default;

void GpuTransformer::upload(const ParamStore<float>& host) {
  std::vector<DeviceParam>& params = impl_->model->registry().params();
  // Expert-parallel: the host store is the whole model, the GPU holds a part (checked by name).
  FRUGAL_CHECK(impl_->expert_parallel ? host.size() >= params.size() : host.size() == params.size(),
               "GpuTransformer::upload: the host store has {} tensors, the GPU model {}",
               host.size(), params.size());
  impl_->model->registry().upload_values(host, "GpuTransformer::upload");
  impl_->ctx.synchronize();
  weights_updated();
  impl_->ctx.synchronize();
}

void GpuTransformer::download(ParamStore<float>& host) const {
  std::vector<DeviceParam>& params = impl_->model->registry().params();
  // Expert-parallel: the host store is the whole model, the GPU holds a part (checked by name).
  FRUGAL_CHECK(impl_->expert_parallel ? host.size() >= params.size() : host.size() == params.size(),
               "GpuTransformer::download: the host store has {} tensors, the GPU model {}",
               host.size(), params.size());
  impl_->ctx.synchronize();
  for (DeviceParam& p : params) {
    Param<float>& h = host.get(p.name);
    FRUGAL_CHECK(h.shape == p.shape,
                 "GpuTransformer::download: {} has shape {} on the host, {} here", p.name,
                 shape_text(h.shape), shape_text(p.shape));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(h.value.data(), p.value,
                                      static_cast<size_t>(p.count) * sizeof(float),
                                      cudaMemcpyDeviceToHost, impl_->ctx.stream));
    if (p.grad != nullptr && static_cast<int64_t>(h.grad.size()) == p.count)
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(h.grad.data(), p.grad,
                                        static_cast<size_t>(p.count) * sizeof(float),
                                        cudaMemcpyDeviceToHost, impl_->ctx.stream));
  }
  impl_->ctx.synchronize();
}

std::vector<DeviceParam>& GpuTransformer::params() {
  return impl_->model->registry().params();
}

Losses GpuTransformer::forward_backward(const int32_t* tokens, const int32_t* targets,
                                        int64_t batch, int64_t seq, const LossWeights& weights,
                                        double loss_scale,
                                        const GradientsFinal& gradients_final) {
  return impl_->model->run(tokens, targets, batch, seq, weights, /*training=*/true, loss_scale,
                           gradients_final);
}

Losses GpuTransformer::evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                int64_t seq, const LossWeights& weights) {
  return impl_->model->run(tokens, targets, batch, seq, weights, /*training=*/false, 0.0);
}

void GpuTransformer::zero_grad() {
  impl_->model->registry().zero_grad();
}

void GpuTransformer::weights_updated() {
  impl_->model->refresh();
}

void GpuTransformer::update_balance_bias(double gamma) {
  impl_->model->update_balance_bias(gamma);
}

std::vector<ExpertLoad> GpuTransformer::expert_load() const {
  return impl_->model->expert_load();
}

std::vector<DeviceLoadCounter> GpuTransformer::expert_load_counters() {
  return impl_->model->expert_load_counters();
}

bool GpuTransformer::expert_parallel() const {
  return impl_->expert_parallel;
}

const ModelConfig& GpuTransformer::config() const {
  return impl_->cfg;
}

Recipe GpuTransformer::recipe() const {
  return impl_->recipe;
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
