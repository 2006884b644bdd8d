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
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "data/data_source.h"
#include "model/transformer.h"
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
  Trainer(const Config& config, DataSource& train, DataSource* val, bool quiet = false);
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
  // so that training continues from the edit (a no-op on the CPU, an upload on a GPU).
  Transformer<float>& model() { return engine_->host_model(); }
  const AdamW<float>& optimizer() { return engine_->host_optimizer(); }
  void host_state_changed() { engine_->upload_host_state(); }
  StepEngine& engine() { return *engine_; }
  const TrainerState& state() const { return state_; }

 private:
  void log(const std::string& line) const;

  Config config_;
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
