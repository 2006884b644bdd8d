// The training loop, the same on every device (train.device picks a StepEngine: the CPU reference
// or one GPU, train/step_engine.h):
//   for each step: sequences = batch ramp; micro-batches of train.micro_batch sequences each run
//   forward and the whole backward with loss scale 1/micro_batches (parameter gradients
//   accumulate); AdamW with global-norm clipping at the scheduled learning rate (a non-finite
//   gradient skips the update, routing biases included, and is logged); every MoE layer's routing
//   bias moves by gamma against its load over the step's tokens (spec §2.2).
// Logs the DESIGN.md step line (tokens/s, MFU against the device's peak at the run's precision,
// peak memory: GPU bytes in use or the process RSS), JSONL metrics (<out_dir>/metrics.jsonl) with
// the same figures and per-layer expert load, periodic validation loss, and checkpoints
// (train/checkpoint.h; the same files from either device, so a run can resume on the other).
//
// Data parallelism (a Mesh given; parallel/mesh.h; the CPU engine only): every rank reads the
// whole batch stream from a single-process data source and runs micro-batches m with
// m % dp == dp_rank (so the ranks together run exactly the single-process micro-batches, and the
// data state is the single-process one); the gradient scale stays 1/micro_batches, so the sum over
// ranks is the single-process gradient. The engine's optimizer_step sums the gradients (ZeRO-1,
// train/zero1.h) and the MoE load over the ranks, and its gradient accumulation makes one
// micro-batch per rank bitwise the single-process step (train/cpu_engine.h). Losses are summed
// over ranks per micro-batch (exact) and then in micro-batch order. With train.ep > 1 each rank
// holds its EP rank's experts and the MoE layers exchange tokens (parallel/expert_parallel.h);
// the micro-batches of a step must then divide evenly over the dp ranks. Validation batches are
// spread over the ranks the same way. Only dp rank 0 logs, writes metrics and checkpoints (the
// files a single process writes: the engine gathers the state to it). A stop request on any rank
// stops every rank after the same step. Pipeline parallelism (train.pp > 1, dp = 1: one rank per
// pipeline rank, train/pipeline_engine.h) runs each step's micro-batches at once through the
// engine (StepEngine::runs_whole_step); world rank 0 logs, writes metrics and checkpoints. Several
// GPUs are not run here (train.device = "cuda" on a mesh of more than one rank is refused).
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "data/data_source.h"
#include "model/transformer.h"
#include "parallel/mesh.h"
#include "train/adamw.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/step_engine.h"
#include "train/train_config.h"

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
  // val may be null (no validation). `quiet` silences the console (tests). Builds the engine of
  // train.device (errors name train.device / train.precision when this machine cannot run them).
  // `mesh`: run as one rank of a multi-process job (collective: every rank of the mesh constructs
  // its Trainer; the sources are single-process ones, see above); null for a single process.
  Trainer(const Config& config, DataSource& train, DataSource* val, bool quiet = false,
          const Mesh* mesh = nullptr);
  ~Trainer();

  // Continue from a checkpoint directory (weights, routing biases, optimizer moments and step
  // count, step, tokens seen, data position). The checkpoint's [model] must equal this config's;
  // other sections may differ (e.g. more train.steps, another train.device). Continuing is bitwise
  // identical to a run that never stopped: nothing else carries over between steps (MoE load
  // counters restart every step, the data sources are counter-based, validation always re-reads
  // the same batches).
  void resume(const std::string& checkpoint_dir);
  // Train until config.train.steps (or `stop_after` more steps when >= 0); saves at the end.
  TrainSummary run(int64_t stop_after = -1);
  double validation_loss();
  // run() checks `flag` after every step; once it is true the run saves a checkpoint and returns
  // (summary.interrupted). For Ctrl-C: a signal handler sets the flag. nullptr: no checks.
  void set_stop_flag(const std::atomic<bool>* flag) { stop_flag_ = flag; }

  // The current weights and optimizer state as a CPU model and AdamW (on a GPU: copied from the
  // device when it changed since the last call). After editing them, call host_state_changed()
  // so that training continues from the edit (a no-op on the CPU, an upload on a GPU). In a
  // multi-process run the model holds this rank's experts and there is no single-process
  // optimizer (optimizer() throws; CpuEngine::zero1() has the shards).
  Transformer<float>& model() { return engine_->host_model(); }
  const AdamW<float>& optimizer() { return engine_->host_optimizer(); }
  void host_state_changed() { engine_->upload_host_state(); }
  StepEngine& engine() { return *engine_; }
  const TrainerState& state() const { return state_; }

 private:
  void log(const std::string& line) const;
  // Writes a checkpoint of the current state (collective in a multi-process run; the directory
  // on dp rank 0, "" elsewhere).
  std::string save();
  int dp_size() const { return mesh_ ? mesh_->shape().dp : 1; }
  int dp_rank() const { return mesh_ ? mesh_->coords().dp_rank : 0; }
  // The MoE layers exchange tokens between ranks: every forward is collective.
  bool expert_parallel() const { return mesh_ && mesh_->shape().ep > 1; }

  Config config_;
  const Mesh* mesh_;
  DataSource& train_;
  DataSource* val_;
  nlohmann::json val_start_;  // validation always reads the same batches
  bool quiet_;
  std::unique_ptr<StepEngine> engine_;
  TrainerState state_;
  MetricsLog metrics_;
  const std::atomic<bool>* stop_flag_ = nullptr;
  ProgressBar* progress_ = nullptr;  // the bar of the running run(), erased before a log line
  bool announced_ = false;           // the device line was logged
};

}  // namespace frugal
