// Pipeline parallelism on GPUs: the GPU counterpart of parallel/pipeline_runner.h. Executes this
// rank's actions of pipeline::plan_communication (pipeline_plan.h) for one training step with the
// GPU stages (model/gpu/gpu_pipeline_stage.h), one GPU per pipeline rank:
//   F   forward of (micro_batch, stage): input from the previous stage (device fp32 [rows, hidden],
//       received or produced by this rank's other stage), output kept for the send or the next
//       stage here
//   B   the input half of the backward of (micro_batch, stage) (GpuPipelineStage::backward_input
//       with defer_weights): the input gradient and the small weight gradients (RMSNorms, router
//       gates, embedding, head); the weight-gradient GEMMs of the Linears and experts stay queued
//       in the stage's Run with their operands (model/gpu/gpu_weight_grad.h). When the rank's
//       next compute step is this B's own W (1F1B, and the schedules' non-deferred backwards), B
//       runs the whole backward instead: deferring would only copy operands.
//   W   the deferred weight-gradient GEMMs of (micro_batch, stage) (backward_weight), in the order
//       B queued them; nothing when B ran the whole backward. The W steps of a stage come in the
//       order of its B steps, so every gradient is bitwise the immediate backward's.
//   FB  DualPipe's overlapped pair, run as F then the whole backward (no overlap yet)
// Messages: device fp32 [rows, hidden] activations and gradients (rows = micro-batch sequences *
// seq), sent with NCCL point-to-point calls on `nccl`; an exchange (two opposite sends fused by the
// plan) is one all_to_all_v in an NCCL group of the two ranks (ncclSend + ncclRecv in one grouped
// call). Every NCCL call waits on the device for the compute stream's queued work and returns
// complete (nccl_communicator.h), so buffers are reused safely.
//
// Parameters: rank r holds the stages the schedule gives it, in ONE ParamRegistry (the CPU
// Transformer's names): 1F1B/ZB1P stage r; DualPipeV stages r and 2P-1-r (the embedding shared by
// stages 0 and 2P-1 on rank 0); DualPipe stages min(r, P-1-r) and P-1-min(..) (the same two on
// ranks r and P-1-r: two copies). Shared gradients are summed at the end of step(), over NCCL:
// DualPipe's two copies (every gradient, all-reduced between ranks r and P-1-r), and the MTP
// stage's embedding copy with the first stage's when they sit on different ranks (1F1B and ZB1P
// with MTP). Sums of two ranks are exact, so the copies stay bitwise equal.
//
// Accumulation rule: parameter gradients accumulate (+=) over the step's micro-batches with loss
// scale 1/micro_batches (or the scale step() is given); call zero_grad() before each step.
//
// Host-side: per micro-batch loss records summed over the ranks on `host` (MPI, same ranks: one
// owner per entry, exact), as the CPU runner. CUDA + NCCL builds only (FRUGAL_HAVE_NCCL).
//
// Mesh (GpuPipelineMesh, optional; parallel/mesh.h's pp x dp with EP inside dp): `nccl` and `host`
// are then the mesh's pp group (the pipeline of this rank's dp rank). With an EP group the stages
// are built inside an ExpertParallelScope on its NCCL communicator (each MoE layer holds this EP
// rank's routed experts and exchanges tokens with the EP ranks of the same stage, which play the
// same action list, so their collectives meet in order). At the end of step(), after the shared
// sums, the gradients are summed over the stage's dp group (NCCL all-reduce: dense tensors over dp;
// held routed experts over expert_dp when EP is on, over dp otherwise). global_grad_norm then adds
// each rank's counted squares: dense ones (equal on every dp rank after the sum) plus the routed
// experts' squares summed over the EP group (host), then over the pipeline, so every tensor counts
// once. sum_expert_loads_over_data_parallel sums the MoE load counters over dp (call it before
// update_balance_bias / reading the loads). download() takes each routed expert from its EP owner.
//
// Timing (FRUGAL_PIPELINE_TIMING=1 or set_timing(true)): device events on the compute stream at
// the step's start and end and around every F, B and deferred W (an FB step: its F and its B
// apart); after the step they resolve into last_timing() (pipeline_timing.h: wall, busy, idle =
// wall - busy, mean F, B and W). A W step with nothing deferred is not timed.
// Deferral memory: from B to W a (micro_batch, stage) holds, per Linear / expert matrix, copies
// of its input and output gradient (fp32/bf16) or its FP8 x^T and dy^T caches (fp8, no copies) —
// about the activations the immediate backward would have freed at B; last_weight_deferral()
// reports the step's peak and the W work done.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/param.h"
#include "model/gpu/gpu_pipeline_stage.h"
#include "parallel/communicator.h"
#include "parallel/gpu_data_parallel.h"
#include "parallel/overlap_stats.h"
#include "parallel/pipeline_plan.h"
#include "parallel/pipeline_timing.h"
#include "parallel/schedule.h"
#include "parallel/stage_layout.h"
#include "train/gpu_optimizer.h"

namespace frugal::gpu {

// The data- and expert-parallel groups around one pipeline rank (all null: one pipeline). Every
// pointer must outlive the runner; NCCL ones get ctx.stream as their input stream here.
struct GpuPipelineMesh {
  Communicator* ep = nullptr;         // NCCL over the EP group (ep > 1), else null
  Communicator* ep_host = nullptr;    // MPI over the same ranks in the same order
  Communicator* dp = nullptr;         // NCCL over the stage's dp group (dp > 1), else null
  Communicator* expert_dp = nullptr;  // NCCL over expert_dp (ep > 1 and dp / ep > 1), else null
  int64_t first_expert = 0;           // this EP rank's routed experts [first, first + count)
  int64_t expert_count = 0;           // 0: every expert (no EP)
};

class GpuPipelineRunner {
 public:
  // nccl: an NCCL communicator over the pipeline ranks on ctx.device (its input stream is set to
  // ctx.stream here); host: an MPI communicator over the same ranks in the same order. Both sizes
  // must equal schedule.ranks. Collective (splits NCCL groups for exchanges and shared sums).
  // layout: the layers of each of schedule.stages stages (parallel/stage_layout.h), the same on
  // every rank; empty: the even split.
  GpuPipelineRunner(cuda::DeviceContext& ctx, const ModelConfig& cfg, Recipe recipe,
                    pipeline::Schedule schedule, Communicator& nccl, Communicator& host,
                    const GpuPipelineMesh& mesh = {}, StageLayout layout = {});
  ~GpuPipelineRunner();
  GpuPipelineRunner(const GpuPipelineRunner&) = delete;
  GpuPipelineRunner& operator=(const GpuPipelineRunner&) = delete;

  // tokens, targets: host [micro_batches, micro_batch_sequences, seq], the same on every rank of
  // the pipeline (a dp replica passes its own micro-batches and loss_scale 1 / all micro-batches;
  // after the step its gradients are the sum over the replicas).
  // Returns each micro-batch's Losses on every rank (GpuTransformer::forward_backward's for the
  // same micro-batch, up to rounding). loss_scale < 0 means 1 / micro_batches. Collective.
  std::vector<Losses> step(const int32_t* tokens, const int32_t* targets,
                           int64_t micro_batch_sequences, int64_t seq, const LossWeights& weights,
                           bool training = true, double loss_scale = -1.0);

  // Forward only (validation) of one batch [batch, seq] (host, the same on every rank): the stages
  // in stage order (stage s on the rank of micro-batch 0's stage s), loss weights 0, no load
  // counting; the Losses on every rank. Collective.
  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq);

  // Mesh with dp > 1: every MoE load counter of this rank's stages becomes its sum over the dp
  // group (NCCL, integers: exact); nothing otherwise. Collective over dp.
  void sum_expert_loads_over_data_parallel();

  // Step timing (see above): on/off (the constructor reads FRUGAL_PIPELINE_TIMING), this rank's
  // last timed step, and every pipeline rank's (rank order; collective over `host`).
  void set_timing(bool on) { timing_ = on; }
  bool timing() const { return timing_; }
  const pipeline::PipelineTiming& last_timing() const { return last_timing_; }
  std::vector<pipeline::PipelineTiming> gather_timing();

  // Zero-bubble W deferral in the last step() on this rank (see above).
  struct WeightDeferral {
    int64_t deferred_backwards = 0;  // B steps that left their weight GEMMs to a later W
    int64_t weight_gemms = 0;        // weight-gradient GEMMs the W steps ran
    size_t peak_bytes_held = 0;      // most device bytes the pending W steps held at once
  };
  const WeightDeferral& last_weight_deferral() const { return last_deferral_; }

  // Spec §2.2 on this rank's MoE layers; with DualPipe the two copies' loads are summed first (over
  // NCCL, integers) so the copies' biases stay equal. Collective.
  void update_balance_bias(double gamma);

  // L2 norm of the whole model's gradients (every tensor once: DualPipe's second copies and the MTP
  // stage's embedding copy left out): this rank's counted squares on the device (fp32), summed over
  // the ranks on the host in double (mesh with EP: the routed experts' squares first summed over
  // the EP group). Collective; the same value on every rank (every dp replica too).
  double global_grad_norm();
  // Whether this rank's copy of tensor `name` is the counted one (the owner in download()).
  bool counts_in_norm(const std::string& name) const;
  // Every trainable gradient held here *= scale (each array once), on the compute stream.
  void scale_gradients(float scale);

  void zero_grad();
  // Rebuilds every stage's BF16 / FP8 weight copies from the fp32 masters.
  void weights_updated();

  // whole: the whole model's host store (the CPU Transformer's names and shapes). upload copies
  // the tensors held here (names and shapes checked) and refreshes the weight copies. download is
  // collective: each tensor is taken from its one counted owner, the other ranks contribute zeros,
  // summed over the ranks on the host (exact), so every rank gets the whole model; gradients too
  // where whole's grad arrays are sized. Mesh with EP: collective over the EP group too (a routed
  // expert from its owner, a dense tensor from EP rank 0, summed over the EP group first). Throws
  // naming a tensor no rank (or two ranks) owns.
  void upload(const ParamStore<float>& whole);
  void download(ParamStore<float>& whole);

  ParamRegistry& registry() { return registry_; }
  std::vector<DeviceParam>& params() { return registry_.params(); }
  const pipeline::Schedule& schedule() const { return schedule_; }
  const StageLayout& layout() const { return layout_; }
  const ModelConfig& config() const { return cfg_; }
  Recipe recipe() const { return recipe_; }
  cuda::DeviceContext& context() { return ctx_; }
  Communicator& host() { return host_; }
  // This rank's stages, in stage order.
  const std::vector<std::unique_ptr<GpuPipelineStage>>& stages() const { return stages_; }
  // This rank's expert loads (its stages' MoE layers, stage order).
  std::vector<ExpertLoad> expert_load();

 private:
  using Key = std::pair<int, int>;  // (micro_batch, stage)
  GpuPipelineStage& stage(int index);
  // A group of the NCCL ranks (split by color/key, collective); `whole` uses nccl itself.
  Communicator* group(int color, int key, bool whole, std::unique_ptr<Communicator>& owned);
  void sum_shared_gradients();
  void add_record(const GpuPipelineStage& st, const StageLosses& part, double* rec) const;
  Losses finish_record(const double* rec, const LossWeights& weights) const;
  // Whether `name` is another EP rank's routed expert in a layer this rank holds (`held`: this
  // rank's tensors by name); its values come from that owner.
  bool peer_expert(const std::string& name,
                   const std::unordered_map<std::string, const DeviceParam*>& held) const;
  // last_timing_ from the timeline of a timed step (tracks: step, F, B, W).
  void resolve_timing();

  cuda::DeviceContext& ctx_;
  ModelConfig cfg_;
  Recipe recipe_;
  pipeline::Schedule schedule_;
  Communicator& nccl_;
  Communicator& host_;
  ParamRegistry registry_;
  std::vector<std::unique_ptr<GpuPipelineStage>> stages_;
  std::vector<pipeline::Action> plan_;  // this rank's actions
  std::map<int, Communicator*> pair_groups_;  // peer -> NCCL group {this rank, peer}
  std::vector<std::unique_ptr<Communicator>> owned_groups_;
  Communicator* copies_ = nullptr;         // DualPipe: ranks r and P-1-r
  Communicator* embed_holders_ = nullptr;  // the first and last stage's ranks, when they differ
  std::unique_ptr<GradientAllReducer> copies_reducer_;
  std::vector<cuda::GradTensor> norm_tensors_;  // counted gradients, each array once
  cuda::DeviceArray<uint8_t> norm_workspace_;
  cuda::DeviceArray<float> norm_scalars_;  // [norm, clip scale]
  cuda::DeviceArray<int32_t> norm_flag_;
  std::vector<DeviceSpan> gradient_spans_;  // every trainable gradient, disjoint
  GpuPipelineMesh mesh_;
  StageLayout layout_;
  std::unique_ptr<GradientAllReducer> dp_reducer_;      // dense (and, without EP, every) gradient
  std::unique_ptr<GradientAllReducer> expert_reducer_;  // EP: held experts over expert_dp
  std::vector<cuda::GradTensor> expert_norm_tensors_;   // EP: counted routed-expert gradients
  bool timing_ = false;
  pipeline::PipelineTiming last_timing_;
  WeightDeferral last_deferral_;
  EventTimeline timeline_;  // a timed step's marks on ctx.stream
};

// AdamW over one rank's pipeline stages (GpuAdamW over the runner's registry, no clip of its own):
// the norm is the whole model's (GpuPipelineRunner::global_grad_norm), the clip scale min(1,
// grad_clip / (norm + 1e-6)) (GpuAdamW's rule) is applied to the gradients here, then the
// unclipped GpuAdamW runs; a non-finite norm skips the step on every rank alike. Every copy of a
// shared tensor holds the summed gradient after step(), so the copies get the same update.
// Moments: BF16 unless the recipe is fp32, as GpuAdamW. Call on every rank (collective).
class GpuPipelineAdamW {
 public:
  GpuPipelineAdamW(cuda::DeviceContext& ctx, const OptimConfig& config, GpuPipelineRunner& runner);
  GpuAdamW::StepInfo step(double lr);
  int64_t step_count() const { return adamw_->step_count(); }
  int64_t skipped_steps() const { return skipped_; }
  // The local optimizer (its moments cover runner.params() in order; checkpoints).
  GpuAdamW& local() { return *adamw_; }

 private:
  OptimConfig config_;
  GpuPipelineRunner& runner_;
  std::unique_ptr<GpuAdamW> adamw_;
  int64_t skipped_ = 0;
};

}  // namespace frugal::gpu
