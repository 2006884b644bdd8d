// GpuModel: the GPU training model (see gpu_model.h), one GpuPipelineStage (stage 0 of 1,
// gpu_pipeline_stage.h) on a registry of its own, so the whole model and the pipeline stages run
// the very same forward and backward code.
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_model.h"

#include <memory>

#include "core/error.h"
#include "model/gpu/gpu_moe.h"
#include "model/gpu/gpu_pipeline_stage.h"

namespace frugal::gpu {
namespace {

class GpuModel final : public GpuModelBase {
 public:
  GpuModel(cuda::DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe, Communicator* ep_comm)
      : cfg_(cfg), registry_(ctx), stage_(build(ctx, registry_, cfg, recipe, ep_comm)) {}

  Losses run(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
             const LossWeights& weights, bool training, double loss_scale,
             const std::function<void(int64_t layer)>& gradients_final) override {
    StageLosses stage_losses;
    std::unique_ptr<GpuPipelineStage::Run> forward_state = stage_->forward(
        nullptr, tokens, targets, batch, seq, weights, training, nullptr, stage_losses);
    if (training) {
      // The callback is this backward's only (cleared after, also when the backward throws).
      struct Clear {
        GpuPipelineStage& stage;
        ~Clear() { stage.set_gradients_final_callback({}); }
      } clear{*stage_};
      stage_->set_gradients_final_callback(gradients_final);
      stage_->backward(forward_state, nullptr, nullptr, loss_scale);
    }
    // The single stage holds every entry of the record.
    return finish_losses(stage_losses, weights, cfg_.num_nextn_predict_layers);
  }
  void refresh() override { stage_->refresh(); }
  void update_balance_bias(double gamma) override { stage_->update_balance_bias(gamma); }
  std::vector<ExpertLoad> expert_load() override { return stage_->expert_load(); }
  std::vector<DeviceLoadCounter> expert_load_counters() override {
    return stage_->expert_load_counters();
  }
  ParamRegistry& registry() override { return registry_; }

 private:
  static std::unique_ptr<GpuPipelineStage> build(cuda::DeviceContext& ctx,
                                                 ParamRegistry& registry, const ModelConfig& cfg,
                                                 Recipe recipe, Communicator* ep_comm) {
    ExpertParallelScope expert_parallel(ep_comm);  // the MoE layers built here hold their EP slice
    return std::make_unique<GpuPipelineStage>(ctx, registry, cfg, recipe, /*stage=*/0,
                                              /*stages=*/1);
  }

  ModelConfig cfg_;
  ParamRegistry registry_;
  std::unique_ptr<GpuPipelineStage> stage_;
};

}  // namespace

std::unique_ptr<GpuModelBase> make_gpu_model(cuda::DeviceContext& ctx, const ModelConfig& cfg,
                                             Recipe recipe, Communicator* ep_comm) {
  return std::make_unique<GpuModel>(ctx, cfg, recipe, ep_comm);
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
