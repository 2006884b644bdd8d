// What the training loop (train/trainer.h) asks of the device it trains on. The loop itself (data,
// schedules, batch ramp, gradient accumulation, logging, checkpoints) is the same everywhere; an
// engine owns the model and the optimizer state and runs the numeric work:
//   CpuEngine (train/cpu_engine.h)  Transformer<float> + AdamW<float>, the reference; also one
//                                   rank of a multi-process run (ZeRO-1 data parallelism, expert
//                                   parallelism: train/zero1.h, parallel/expert_parallel.h)
//   GpuEngine (train/gpu_engine.h)  GpuTransformer + GpuAdamW on one GPU (train.device = "cuda");
//                                   also one rank of a multi-GPU run (data parallelism through
//                                   NCCL, expert parallelism: parallel/gpu_expert_dispatch.h)
//   PipelineEngine (train/pipeline_engine.h)  the CPU pipeline (train.pp > 1) over pp x dp (x ep)
//   GpuPipelineEngine (train/gpu_pipeline_engine.h)  the GPU pipeline (train.device = "cuda",
//                                   train.pp > 1; one pipeline, dp = ep = 1)
//
// One optimizer step, as the trainer runs it:
//   zero_grad(); set_last_micro_batch(is it the last?) and forward_backward(micro-batch,
//   loss_scale = 1/micro_batches) per micro-batch (parameter gradients accumulate); optimizer_step(lr) (skips the update when the gradient norm
//   is not finite); expert_load(); update_balance_bias(gamma, or 0 after a skipped step);
//   synchronize() before the step's clock stops.
// In a multi-process run the trainer deals the micro-batches out to the data-parallel ranks (each
// rank calls forward_backward for its own, with the same loss scale); optimizer_step is then
// collective and sums the gradients and the MoE load counters over the ranks first.
//
// Host copies: host_model() and host_optimizer() are the CPU Transformer and AdamW holding the
// engine's current weights, routing biases, moments and update count, in the checkpoint format
// (fp32). The CPU engine trains them directly; the GPU engine downloads into them on request (when
// the device state may differ: after a step, a bias update or an upload). After editing them
// (resume from a checkpoint, a test poisoning a weight) call upload_host_state() so the device
// trains from them; a later read returns what the device holds. Checkpoints go through
// load_checkpoint and checkpoint_state, which an engine holding only part of the state (ZeRO-1
// shards, a slice of the experts) overrides.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "train/adamw.h"
#include "train/train_config.h"

namespace frugal {

class Mesh;

struct OptimizerStepInfo {
  double grad_norm = 0;  // global L2 norm of the gradients before clipping
  bool skipped = false;  // the norm was not finite: nothing was updated
};

class StepEngine {
 public:
  virtual ~StepEngine() = default;

  // One line for the log: "cpu, fp32, 2 threads" or "cuda:0 NVIDIA H200 (sm_90), bf16".
  virtual std::string description() const = 0;
  // Set when the requested precision could not be granted (e.g. fp8 on an older GPU), else "".
  virtual std::string recipe_note() const { return ""; }

  virtual void zero_grad() = 0;
  // One micro-batch: forward, then the whole backward; every trainable gradient accumulates (+=)
  // d(loss_scale * losses.total)/d(param). tokens/targets: host arrays [batch * seq].
  virtual Losses forward_backward(const int32_t* tokens, const int32_t* targets, int64_t batch,
                                  int64_t seq, const LossWeights& weights, double loss_scale) = 0;
  // The trainer calls this before every forward_backward: true when that micro-batch is this
  // rank's last of the step AND every data-parallel rank runs at least one micro-batch this step
  // (so every rank's last backward makes the same collective calls). An engine may then start
  // summing the gradients over the ranks during that backward (GpuEngine under ZeRO-1: buckets
  // reduce-scattered as the backward finishes them). It applies to the next forward_backward
  // only. Default: ignored.
  virtual void set_last_micro_batch(bool last) {}
  // Engines that run a whole step's micro-batches together (the pipeline, train/pipeline_engine.h)
  // return true: the trainer then calls forward_backward_step once per step instead of
  // forward_backward per micro-batch.
  virtual bool runs_whole_step() const { return false; }
  // tokens/targets: [micro_batches, batch, seq]. The same gradients as forward_backward per
  // micro-batch with loss_scale 1/micro_batches; returns each micro-batch's Losses.
  virtual std::vector<Losses> forward_backward_step(const int32_t* tokens, const int32_t* targets,
                                                    int64_t micro_batches, int64_t batch,
                                                    int64_t seq, const LossWeights& weights);
  // Forward only, without loss weights (validation): no gradient, no expert-load counting.
  virtual Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch,
                          int64_t seq) = 0;
  // AdamW with global-norm clipping at `lr`; the gradients are read, not cleared.
  virtual OptimizerStepInfo optimizer_step(double lr) = 0;
  // Per MoE layer, the load counted since the last update_balance_bias.
  virtual std::vector<ExpertLoad> expert_load() = 0;
  virtual void update_balance_bias(double gamma) = 0;
  // Waits for queued device work (a no-op on the CPU).
  virtual void synchronize() {}

  virtual Transformer<float>& host_model() = 0;
  virtual AdamW<float>& host_optimizer() = 0;
  virtual void upload_host_state() = 0;

  // Reads the weights, routing biases, optimizer moments and update count of a checkpoint
  // directory (train/checkpoint.h; written by either engine and any mesh) into the engine. Not the
  // trainer state. Default: into the host copies, then upload_host_state().
  virtual void load_checkpoint(const std::string& checkpoint_dir);
  // The whole model and optimizer state as single-process objects, for save_checkpoint. Collective
  // in a multi-process run (the state is gathered to data-parallel rank 0, which alone gets it;
  // the other ranks get nulls). Default: the host copies.
  struct CheckpointState {
    Transformer<float>* model = nullptr;
    AdamW<float>* optimizer = nullptr;
  };
  virtual CheckpointState checkpoint_state() { return {&host_model(), &host_optimizer()}; }

  // Forward FLOPs per token of the main model at sequence length seq
  // (Transformer::flops_per_token).
  virtual double flops_per_token(int64_t seq) const = 0;
  // Peak FLOP/s of the hardware at this engine's precision; 0 when unknown (MFU prints "-").
  virtual double peak_flops() const = 0;
  // Peak memory of the run: device bytes in use (GPU), resident set size (CPU).
  virtual int64_t peak_memory_bytes() const = 0;
  // How often the device memory pool has grown (cudaMalloc) so far; 0 on the CPU. A step that
  // repeats the previous steps' shapes adds none.
  virtual int64_t device_malloc_calls() const { return 0; }
};

// The engine train.device names: "cpu" (train.precision must be fp32) or "cuda" (needs a build with
// the CUDA backend; fp8 falls back to bf16 on GPUs before sm_90). Weights are initialized from
// train.seed and train.init_std identically on both, so a CPU and a GPU run start from the same
// model. `mesh`: this process's place in a multi-process run (collective: every rank builds its
// engine), null for a single process. Several GPU ranks: data/expert parallelism, or with
// train.pp > 1 one GPU pipeline (dp = ep = 1).
// Errors name the setting.
std::unique_ptr<StepEngine> make_step_engine(const Config& config, const Mesh* mesh = nullptr);

}  // namespace frugal
