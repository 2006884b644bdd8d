// One pipeline stage of the GPU training model (spec §5.1), the GPU counterpart of
// parallel/pipeline_stage.h: decoder layers [layer_begin, layer_end) of stage `stage` of a
// StageLayout (parallel/stage_layout.h: even, explicit or cost-balanced), plus the token embedding on the first stage and the final RMSNorm, output head,
// cross-entropy and MTP modules on the last stage. Stage 0 of 1 is the whole model: GpuModel
// (gpu_model.h) is one such stage, so every single-GPU test also checks this code.
//   first stage   tokens [rows]          -> embed -> layers[begin, end) -> output [rows, hidden]
//   middle stage  input [rows, hidden]   -> layers[begin, end)           -> output [rows, hidden]
//   last stage    input [rows, hidden]   -> layers[begin, end) -> norm -> head -> CE (+ MTP)
// rows = batch * seq; the stream between stages is fp32 (the residual stream), device memory.
//
// Parameters are registered into the ParamRegistry the caller passes (the CPU Transformer's names,
// in its order restricted to this stage), so a rank holding two stages (DualPipe, DualPipeV)
// registers both into one registry. The MTP modules need the token embedding: the last stage uses
// the registry's "model.embed_tokens.weight" when the first stage already registered it there (one
// rank holds both: physically shared), else registers its own copy under the same name, whose
// gradient the pipeline runner sums with the first stage's.
//
// Precision follows the recipe exactly as GpuModel (gpu_transformer.h). Expert parallelism: the
// MoE layers built while an ExpertParallelScope is open hold their EP slice (gpu_moe.h).
//
// Accumulation rule: parameter gradients accumulate (+=) d(loss_scale * total)/d(param); dinput is
// assigned. backward computes the input and weight gradients together and releases the Run.
// Zero-bubble split (the pipeline's B and W steps): backward_input(..., defer_weights = true)
// computes dinput and every weight gradient that stays in B (RMSNorm weights, the MoE router gates,
// the token embedding, the output head), frees the activations and leaves the Run holding only
// the Linear / grouped-expert weight-gradient GEMMs with their operands (Run::weight_grads,
// gpu_weight_grad.h); backward_weight(run) runs them and releases the Run. The gradients are
// bitwise those of backward when the stage's W steps run in the order of its B steps.
// CUDA builds only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/gpu/gpu_common.h"
#include "model/gpu/gpu_weight_grad.h"
#include "parallel/pipeline_stage.h"  // StageLayout, StageLosses, finish_losses

namespace frugal::gpu {

class GpuPipelineStage {
 public:
  // The forward state of one micro-batch (activations kept for the backward). Its contents are
  // private to gpu_pipeline_stage.cc; the type is complete here so that callers can hold and drop
  // a std::unique_ptr<Run> (an evaluation forward's Run is simply dropped).
  struct Run {
    virtual ~Run();
    // After backward_input(..., defer_weights = true): the deferred weight-gradient GEMMs (the
    // only memory the Run still holds: weight_grads.bytes_held()).
    WeightGradQueue weight_grads;
  };

  // Stage `stage` of `layout` (its layer counts must fit cfg; a first or last stage may hold 0).
  GpuPipelineStage(cuda::DeviceContext& ctx, ParamRegistry& registry, const ModelConfig& cfg,
                   Recipe recipe, const StageLayout& layout, int stage);
  // Stage `stage` of `stages` under the even split.
  GpuPipelineStage(cuda::DeviceContext& ctx, ParamRegistry& registry, const ModelConfig& cfg,
                   Recipe recipe, int stage, int stages);
  ~GpuPipelineStage();
  GpuPipelineStage(const GpuPipelineStage&) = delete;
  GpuPipelineStage& operator=(const GpuPipelineStage&) = delete;

  // input: device fp32 [rows, hidden] (ignored on the first stage); tokens, targets: host [rows]
  // (the first stage reads tokens, the last both; targets < 0 ignored). output: device fp32
  // [rows, hidden], written on every stage but the last (nullptr there). Returns this stage's
  // StageLosses (host; layer_balance sized L + D, zero outside this stage): one device->host copy
  // at the end of the call. training = false: no load counting, and the Run is only for losses.
  std::unique_ptr<Run> forward(const float* input, const int32_t* tokens, const int32_t* targets,
                               int64_t batch, int64_t seq, const LossWeights& weights,
                               bool training, float* output, StageLosses& losses);
  // doutput: device fp32 [rows, hidden] (ignored on the last stage, which starts from its losses
  // times loss_scale); dinput: device fp32 [rows, hidden], assigned (nullptr on the first stage).
  // Gradients accumulate; `run` is released (reset) by the call.
  void backward(std::unique_ptr<Run>& run, const float* doutput, float* dinput,
                double loss_scale);
  // backward's input half (B): doutput, dinput and loss_scale as there. defer_weights false: the
  // whole backward (= backward). true: the weight-gradient GEMMs of the Linears and the routed /
  // shared experts are queued in run->weight_grads, every activation of the Run is freed, and
  // `run` stays until backward_weight.
  void backward_input(std::unique_ptr<Run>& run, const float* doutput, float* dinput,
                      double loss_scale, bool defer_weights);
  // The weight half (W) of a deferred backward_input: runs run->weight_grads in order on the
  // stage's stream and releases `run`. Returns the number of GEMMs run (0 when nothing was left).
  int64_t backward_weight(std::unique_ptr<Run>& run);

  // Gradients-final notifications of the whole backward (backward, or backward_input without
  // defer_weights; a deferred backward reports nothing): `callback(layer)` runs on the host right
  // after decoder layer `layer` (global index) has queued its whole backward on the stage's stream
  // (its parameter gradients are then final for this backward, in stream order), layers in
  // reverse order, and `callback(kAllOtherGradients)` once at the end, after the embedding's
  // backward (the embedding, final norm, head and MTP modules are only final then: the main and
  // MTP paths share some of them). An empty function: none (the default).
  static constexpr int64_t kAllOtherGradients = -1;
  void set_gradients_final_callback(std::function<void(int64_t layer)> callback);

  // Rebuilds the bf16 / fp8 weight copies of this stage from the fp32 masters.
  void refresh();
  // Spec §2.2 on this stage's MoE layers (main layers, then MTP blocks).
  void update_balance_bias(double gamma);
  std::vector<DeviceLoadCounter> expert_load_counters();
  std::vector<ExpertLoad> expert_load();

  int stage() const;
  bool first() const;
  bool last() const;
  int64_t layer_begin() const;
  int64_t layer_end() const;
  // True when this (last) stage registered its own copy of the embedding (see above).
  bool owns_embedding_copy() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace frugal::gpu
