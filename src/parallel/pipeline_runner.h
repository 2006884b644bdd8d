// The pipeline runner: executes this rank's step list of a pipeline schedule (schedule.h) for one
// training step, over a Communicator whose ranks are the schedule's ranks, with the CPU model cut
// into PipelineStages (pipeline_stage.h):
//   F   forward of (micro_batch, stage): input from the previous stage ([rows, hidden], received or
//       produced by this rank's other stage), output kept for SendForward or the next stage here
//   B   backward for the input: from the gradient of the output (received or local), the input
//       gradient kept for SendBackward or the previous stage here
//   W   backward for the weights of an earlier B, when the schedule lists it (deferral as listed)
//   FB  DualPipe's overlapped pair, run as F then B then W (no overlap on the CPU)
// Messages: [rows, hidden] activations and gradients, tag 2*(micro_batch*stages + stage) (+1 for
// gradients) of the stage that produced them. rows = micro-batch sequences * seq. Every rank
// receives the whole step's tokens and targets.
// Blocking sends: the schedules are written for buffered sends, but the Communicator's send waits
// for its receiver once a message is past MPI's eager limit, and two neighbours that send to each
// other at the same moment (1F1B's steady state: an activation one way, a gradient the other)
// would then wait forever. So the constructor plans the step with pipeline::plan_communication
// (pipeline_plan.h: rendezvous semantics, every pair of opposite sends fused into one exchange, run
// as an all_to_all_v in a group of the two ranks; lists that cannot run are refused).
//
// Parameters: rank r holds the stages the schedule gives it in one ParamStore (names as the
// single-process Transformer): 1F1B/ZB1P stage r; DualPipeV stages r and 2R-1-r; DualPipe stages
// min(r, P-1-r) and P-1-min(..) (the same two on ranks r and P-1-r: two copies) (stages_of_rank in
// stage_layout.h); each stage's layers come from the StageLayout. Shared gradients
// are summed at the end of step(): DualPipe's two copies by an all-reduce between ranks r and
// P-1-r (every tensor); the embedding copy of the last stage (MTP) with the first stage's when they
// sit on different ranks (1F1B and ZB1P with MTP); on one rank they are one tensor already.
//
// Accumulation rule: parameter gradients accumulate (+=) over the step's micro-batches with loss
// scale 1/micro_batches (or the scale step() is given); call params().zero_grad() before each step
// (the shared-gradient sums add whatever the copies hold).
//
// Validation: evaluate() runs one batch forward through the stages in stage order (no schedule).
#pragma once

#include <compare>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/pipeline_plan.h"
#include "parallel/pipeline_stage.h"
#include "parallel/schedule.h"
#include "train/adamw.h"

namespace frugal {

template <class T>
class PipelineRunner {
 public:
  // comm.size() must equal schedule.ranks; every rank constructs its runner (collective: it splits
  // communicators for the shared-gradient sums). layout: the layers of each of schedule.stages
  // stages (stage_layout.h), the same on every rank; empty: the even split.
  PipelineRunner(const ModelConfig& cfg, pipeline::Schedule schedule, Communicator& comm,
                 ExpertShard experts = {}, StageLayout layout = {});

  // tokens, targets: [micro_batches, micro_batch_sequences, seq], the same on every rank.
  // Returns each micro-batch's Losses (bitwise what Transformer<T>::forward reports), on every rank.
  // loss_scale: each micro-batch's loss weight in the gradients; < 0 means 1 / micro_batches (a
  // data-parallel replica of the pipeline passes 1 / the micro-batches of all replicas).
  std::vector<Losses> step(const int32_t* tokens, const int32_t* targets,
                           int64_t micro_batch_sequences, int64_t seq, const LossWeights& weights,
                           bool training = true, double loss_scale = -1.0);

  // Forward only (validation) of one batch: tokens, targets [batch, seq], the same on every rank.
  // The stages run in order (stage s on the rank of micro-batch 0's stage s), each receiving its
  // input from the previous one; the last stage's Losses (loss weights 0, no load counting) are
  // summed over the ranks (one owner per entry, exact), so every rank returns bitwise
  // Transformer<T>::forward's Losses. Collective over the pipeline ranks.
  Losses evaluate(const int32_t* tokens, const int32_t* targets, int64_t batch, int64_t seq);

  // Aux-loss-free balancing (spec §2.2) of this rank's MoE layers, as Transformer::
  // update_balance_bias: each layer's bias moves by gamma against the load its stage counted (with
  // DualPipe, the load of both copies summed first, so the copies stay equal). Collective.
  void update_balance_bias(double gamma);

  // L2 norm of the whole model's gradients (every tensor once: DualPipe's second copies and the
  // MTP stage's embedding copy left out), on every rank. The per-chunk sums of squares of
  // global_grad_norm (train/adamw.h) are gathered and added in the single-process Transformer's
  // tensor order, so equal gradients give bitwise its norm.
  double global_grad_norm();
  // Whether this rank's copy of tensor `name` is the one counted in global_grad_norm.
  bool counts_in_norm(const std::string& name) const;

  ParamStore<T>& params() { return store_; }
  const pipeline::Schedule& schedule() const { return schedule_; }
  const StageLayout& layout() const { return layout_; }
  // This rank's stages, in stage order.
  const std::vector<std::unique_ptr<PipelineStage<T>>>& stages() const { return stages_; }

 private:
  using Key = std::pair<int, int>;  // (micro_batch, stage)
  using Message = pipeline::Message;
  using ActionKind = pipeline::ActionKind;
  using Action = pipeline::Action;
  // This rank's actions from pipeline::plan_communication, and the pair groups of its exchanges.
  void plan_communication();
  PipelineStage<T>& stage(int index);
  int tag(int micro_batch, int stage, bool gradient) const;
  void sum_shared_gradients();
  // Adds one stage's record (see step) into `rec`: [L + D balances, main, mtp, depths run, tokens].
  void add_record(const PipelineStage<T>& st, const StageLosses& part, double* rec) const;
  Losses finish_record(const double* rec, const LossWeights& weights) const;

  ModelConfig cfg_;
  pipeline::Schedule schedule_;
  StageLayout layout_;
  Communicator& comm_;
  ParamStore<T> store_;
  std::vector<std::unique_ptr<PipelineStage<T>>> stages_;
  std::vector<Action> plan_;                                // this rank's actions
  std::map<int, std::unique_ptr<Communicator>> pair_groups_;  // peer -> group {this rank, peer}
  std::unique_ptr<Communicator> copies_;         // DualPipe: ranks r and P-1-r
  std::unique_ptr<Communicator> embed_holders_;  // the first and last stage's ranks (2 ranks)
  bool sum_embedding_ = false;
};

// AdamW (train/adamw.h, same update rule and scalars) over the tensors of this rank of a pipeline:
// the clipping norm is the whole model's (PipelineRunner::global_grad_norm). Every copy of a shared
// tensor holds the summed gradient after step(), so the copies receive the same update and stay
// equal. Call it on every rank (the norm is collective). (The training engine uses ZeRO-1 over each
// stage's data-parallel group instead: train/pipeline_engine.h; this is the optimizer of one
// pipeline without data parallelism, the reference the runner tests train with.)
template <class T>
class PipelineAdamW {
 public:
  PipelineAdamW(const OptimConfig& config, PipelineRunner<T>& runner);
  typename AdamW<T>::StepInfo step(double lr);
  int64_t step_count() const { return step_count_; }
  // Checkpoints: the update count and the moments, one array per trainable tensor of
  // runner.params() in store order.
  void set_step_count(int64_t steps) { step_count_ = steps; }
  std::vector<std::vector<T>>& first_moments() { return m_; }
  std::vector<std::vector<T>>& second_moments() { return v_; }

 private:
  OptimConfig config_;
  PipelineRunner<T>& runner_;
  int64_t step_count_ = 0;
  std::vector<std::vector<T>> m_, v_;  // per trainable tensor, in store order
};

}  // namespace frugal
