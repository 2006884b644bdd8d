// The whole DeepSeek-V3 training model on one GPU, behind the GpuTransformer facade
// (gpu_transformer.h): embedding, decoder blocks, final norm, output head, MTP modules,
// cross-entropy and balance losses, for one activation type T chosen by the recipe (float for
// fp32, __nv_bfloat16 for bf16/fp8). Mirrors model/transformer.h:
//   x = embed_tokens(tokens)                  fp32 stream [batch*seq, hidden]
//   x = layers[0..L)(x); normed = norm(x)     normed fp32 (h^0 of MTP), rounded to T for the head
//   logits = lm_head(normed) [rows, vocab] T; CE over valid targets
//   MTP depth k: tokens and targets shifted by k, h_prev = previous depth's rows [0, seq-k)
//   loss = CE + lambda/D * sum_k CE_k + sum of the MoE layers' balance losses
// Losses are summed on the device (no sync except the MoE layers' offsets copies) and read back
// with one device->host copy at the end of the forward. The model is one GpuPipelineStage (stage 0
// of 1, gpu_pipeline_stage.h): the pipeline stages and the whole model share one implementation.
//
// Accumulation rule: every trainable gradient accumulates (+=) d(loss_scale * total)/d(param).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/gpu/gpu_common.h"
#include "model/transformer.h"
#include "parallel/communicator.h"

namespace frugal::gpu {

class GpuModelBase {
 public:
  virtual ~GpuModelBase() = default;
  // One micro-batch: forward, then (training) the whole backward with gradients scaled by
  // loss_scale. tokens/targets are host arrays [batch*seq]. gradients_final (training only; may
  // be empty): the notifications of GpuPipelineStage::set_gradients_final_callback for this
  // backward.
  virtual Losses run(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                     const LossWeights& weights, bool training, double loss_scale,
                     const std::function<void(int64_t layer)>& gradients_final = {}) = 0;
  // Rebuilds the bf16 / fp8 weight copies from the fp32 masters.
  virtual void refresh() = 0;
  virtual void update_balance_bias(double gamma) = 0;
  virtual std::vector<ExpertLoad> expert_load() = 0;
  virtual std::vector<DeviceLoadCounter> expert_load_counters() = 0;
  virtual ParamRegistry& registry() = 0;
};

// ep_comm: null for one GPU; else an NCCL communicator over the EP group, and every MoE layer
// holds only this EP rank's routed experts (gpu_moe.h, ExpertParallelScope).
std::unique_ptr<GpuModelBase> make_gpu_model(cuda::DeviceContext& ctx, const ModelConfig& cfg,
                                             Recipe recipe, Communicator* ep_comm = nullptr);

}  // namespace frugal::gpu
