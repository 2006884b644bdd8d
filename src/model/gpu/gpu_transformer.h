// The DeepSeek-V3 model of model/transformer.h on one GPU, for training: same parameters (the
// Hugging Face names, in the CPU ParamStore's order), same losses, same forward/backward split.
// Precision follows the recipe (spec §4):
//   fp32  every op in fp32, no TF32: the reference, equal to the CPU step within 1e-5
//   bf16  GEMMs and attention in BF16 with FP32 accumulation; residual stream, norms' statistics,
//         router (gate GEMM in fp32), softmax/loss and all gradients of parameters in FP32
//   fp8   as bf16, but every Linear of the blocks (attention projections, dense and expert FFNs)
//         runs Fprop, Dgrad and Wgrad in FP8 E4M3 with 1x128 / 128x128 scales; embedding, output
//         head, router and attention core stay BF16/FP32. Linear inputs are cached in FP8 for
//         Wgrad; the SwiGLU input cached in FP8 and its output recomputed; RMSNorm and MLA
//         up-projections recomputed in the backward (spec §4.4, §5.4).
// Master weights and their gradients are fp32 device arrays owned here; the optimizer
// (train/gpu_optimizer.h) updates them and then calls weights_updated(), which refreshes the
// BF16 copies / FP8 quantized weights once per optimizer step (not per micro-batch).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/device_context.h"
#include "core/param.h"
#include "model/config.h"
#include "model/transformer.h"
#include "train/recipe.h"  // enum class Recipe { Fp32, Bf16, Fp8 }, visible in CPU-only builds too

namespace frugal {

class Communicator;

namespace gpu {

struct WeightCopyState;  // model/gpu/gpu_linear.h

struct DeviceParam {
  std::string name;             // Hugging Face name, e.g. "model.layers.3.mlp.gate.weight"
  std::vector<int64_t> shape;
  int64_t count = 0;
  ParamKind kind = ParamKind::Matrix;
  bool trainable = true;        // routing biases are buffers (updated by the balance rule)
  bool weight_decay = true;
  float* value = nullptr;       // [count] fp32 master weights (device)
  float* grad = nullptr;        // [count] fp32 gradient (device); null when not trainable
  // The bf16 / fp8 copies the GEMMs read, of the GpuWeight whose storage holds this parameter
  // (shared by every parameter of that storage; model/gpu/gpu_linear.h); null for fp32 storage.
  std::shared_ptr<WeightCopyState> copies;
};

// One MoE layer's device counter of the tokens routed to each expert (int64 [experts]) since the
// last update_balance_bias: a data-parallel engine sums it over its ranks in place.
struct DeviceLoadCounter {
  int64_t* counts = nullptr;
  int64_t experts = 0;
};

class GpuTransformer {
 public:
  // ep_comm: null for one GPU; else an NCCL communicator over the expert-parallel group (input
  // stream = ctx.stream): every MoE layer then holds only this EP rank's routed experts
  // [r*E/ep, (r+1)*E/ep) (gpu_moe.h), params() lists only those, and every forward/backward is
  // collective over the group.
  GpuTransformer(cuda::DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe,
                 Communicator* ep_comm = nullptr);
  ~GpuTransformer();

  // Uploads from / downloads to a CPU parameter store of the same config (names and shapes
  // checked; a mismatch is an error naming the tensor). upload also calls weights_updated().
  // Expert-parallel: the store is the whole model, and only the tensors held here move.
  void upload(const ParamStore<float>& host);
  void download(ParamStore<float>& host) const;
  std::vector<DeviceParam>& params();

  // One micro-batch: forward then the whole backward; every trainable gradient accumulates
  // (+=) d(loss_scale * losses.total)/d(param). tokens/targets are host arrays [batch*seq]
  // (targets < 0 ignored). The returned losses need one device->host copy (at the end).
  // gradients_final (optional; the caller passes it for a step's LAST micro-batch only, since
  // gradients accumulate over micro-batches): called on the host, in stream order (every kernel
  // writing those gradients is queued on ctx.stream before the call), with layer i in
  // [0, num_hidden_layers) right after decoder layer i's backward (reverse layer order), its
  // parameters "model.layers.{i}.*" then final for this backward; and once with
  // kAllOtherGradients at the end, for every other parameter (embedding, final norm, head, MTP
  // modules: shared between the main and MTP paths, so final only then).
  using GradientsFinal = std::function<void(int64_t layer)>;
  static constexpr int64_t kAllOtherGradients = -1;
  Losses forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                          int64_t seq, const LossWeights& weights, double loss_scale,
                          const GradientsFinal& gradients_final = {});
  // Forward only (validation): losses, no gradient, no expert-load counting.
  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq,
                  const LossWeights& weights);

  void zero_grad();
  void weights_updated();
  // Spec §2.2 on the device from the load counted since the last call.
  void update_balance_bias(double gamma);
  std::vector<ExpertLoad> expert_load() const;
  // The MoE layers' load counters (CPU order: main layers, then MTP blocks).
  std::vector<DeviceLoadCounter> expert_load_counters();

  const ModelConfig& config() const;
  bool expert_parallel() const;
  Recipe recipe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gpu
}  // namespace frugal
