// The training loop (CPU reference, fp32 master weights):
//   for each step: sequences = batch ramp; micro-batches of train.micro_batch sequences each run
//   forward, backward_input and backward_weight with loss scale 1/micro_batches (parameter
//   gradients accumulate); AdamW with global-norm clipping at the scheduled learning rate (a
//   non-finite gradient skips the update, routing biases included, and is logged); every MoE
//   layer's routing bias moves by gamma against its load over the step's tokens (spec §2.2).
// Logs the DESIGN.md step line, JSONL metrics (<out_dir>/metrics.jsonl) with per-layer expert load,
// periodic validation loss, and checkpoints (train/checkpoint.h).
//
// Gradient accumulation: the first micro-batch's gradient is computed into the zeroed gradients;
// every later one is computed into zeroed gradients again and then added to the sum (in
// micro-batch order). So a step's gradient is G_0 + G_1 + ... with each G_m computed alone, which
// a data-parallel run reproduces bitwise when each rank runs one micro-batch (rank-order sums).
//
// Data parallelism (a Mesh given; parallel/mesh.h): every rank reads the whole batch stream from a
// single-process data source and runs micro-batches m with m % dp == dp_rank (so the ranks together
// run exactly the single-process micro-batches, and the data state is the single-process one);
// the gradient scale stays 1/micro_batches, so the sum over ranks is the single-process gradient.
// ZeRO-1 (train/zero1.h) sums the gradients and updates sharded AdamW state; losses are summed over
// ranks per micro-batch (exact) and then in micro-batch order; the MoE load is summed over the dp
// group before the bias update, so every rank's routing bias agrees. With train.ep > 1 each rank
// holds its EP rank's experts and the MoE layers exchange tokens (parallel/expert_parallel.h); the
// micro-batches of a step must then divide evenly over the dp ranks. Validation batches are
// spread over the ranks the same way. Only dp rank 0 logs, writes metrics and checkpoints (the
// files a single process writes: ZeRO-1 gathers the state to it). A stop request on any rank
// stops every rank after the same step. Pipeline parallelism (train.pp > 1) is not run here.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "data/data_source.h"
#include "model/transformer.h"
#include "parallel/expert_parallel.h"
#include "parallel/mesh.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/train_config.h"
#include "train/zero1.h"

namespace frugal {

struct TrainSummary {
  int64_t steps_done = 0;
  int64_t skipped_steps = 0;   // steps whose gradient was not finite (no update)
  double first_loss = 0;       // main next-token loss of the first step run
  double last_loss = 0;        // main next-token loss of the last step
  double last_val_loss = -1;   // -1 when no validation ran
  std::string checkpoint;      // the last checkpoint written
  bool interrupted = false;    // a stop request ended the run before its last step
};

class Trainer {
 public:
  // val may be null (no validation). `quiet` silences the console (tests). `mesh`: run as one
  // rank of a multi-process job (collective: every rank of the mesh constructs its Trainer; the
  // sources are single-process ones, see above); null for a single process.
  Trainer(const Config& config, DataSource& train, DataSource* val, bool quiet = false,
          const Mesh* mesh = nullptr);
  ~Trainer();

  // Continue from a checkpoint directory (weights, routing biases, optimizer moments and step
  // count, step, tokens seen, data position). The checkpoint's [model] must equal this config's;
  // other sections may differ (e.g. more train.steps). Continuing is bitwise identical to a run
  // that never stopped: nothing else carries over between steps (MoE load counters restart every
  // step, the data sources are counter-based, validation always re-reads the same batches).
  void resume(const std::string& checkpoint_dir);
  // Train until config.train.steps (or `stop_after` more steps when >= 0); saves at the end.
  TrainSummary run(int64_t stop_after = -1);
  double validation_loss();
  // run() checks `flag` after every step; once it is true the run saves a checkpoint and returns
  // (summary.interrupted). For Ctrl-C: a signal handler sets the flag. nullptr: no checks.
  void set_stop_flag(const std::atomic<bool>* flag) { stop_flag_ = flag; }

  Transformer<float>& model() { return model_; }
  // The single-process optimizer (not in a multi-process run: see zero1()).
  const AdamW<float>& optimizer() const;
  // The ZeRO-1 optimizer of a multi-process run (null for a single process).
  const Zero1Optimizer* zero1() const { return zero1_.get(); }
  // The expert-parallel runner (null unless train.ep > 1).
  const ExpertParallel<float>* expert_parallel() const { return expert_parallel_.get(); }
  const TrainerState& state() const { return state_; }

 private:
  void log(const std::string& line) const;
  std::string save();
  int dp_size() const { return mesh_ ? mesh_->shape().dp : 1; }
  int dp_rank() const { return mesh_ ? mesh_->coords().dp_rank : 0; }

  Config config_;
  const Mesh* mesh_;
  DataSource& train_;
  DataSource* val_;
  nlohmann::json val_start_;  // validation always reads the same batches
  bool quiet_;
  Transformer<float> model_;
  std::unique_ptr<ExpertParallel<float>> expert_parallel_;
  std::unique_ptr<AdamW<float>> optimizer_;      // single process
  std::unique_ptr<Zero1Optimizer> zero1_;        // multi-process
  std::unique_ptr<Transformer<float>> full_model_;  // dp rank 0 with ep > 1: what a save writes
  std::unique_ptr<AdamW<float>> full_optimizer_;    // dp rank 0: the gathered moments
  TrainerState state_;
  MetricsLog metrics_;
  const std::atomic<bool>* stop_flag_ = nullptr;
  ProgressBar* progress_ = nullptr;  // the bar of the running run(), erased before a log line
  double peak_flops_ = 0;
};

// Peak FP32 FLOP/s of this CPU from /proc/cpuinfo (cores x MHz x FMA lanes); 0 if unknown.
double estimate_cpu_peak_flops();

}  // namespace frugal
