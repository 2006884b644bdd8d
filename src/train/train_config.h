// Training, data, optimizer and schedule settings: the [train], [optim], [schedule], [data] and
// [generate] sections of a frugal TOML file. Every hyper-parameter of spec §6 lives here, is
// printed at start-up and is saved in each checkpoint. Defaults are DeepSeek-V3's (spec §6.2)
// except where a small run needs a different one; presets in configs/ set the rest.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace frugal {

// One piece of a piecewise schedule: from `start` (steps) the value is `value`.
// Used for the balance-bias speed gamma and the MTP weight lambda (spec §6.2).
struct StepValue {
  int64_t start = 0;
  double value = 0.0;
  bool operator==(const StepValue&) const = default;
};

struct OptimConfig {
  double lr = 2.2e-4;              // peak learning rate
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;       // decoupled; not applied to norms and buffers
  double grad_clip = 1.0;          // global L2 norm; 0 disables
  bool operator==(const OptimConfig&) const = default;
};

// Learning-rate shape of spec §6.2: linear warmup to lr, constant until decay_start, cosine to
// min_lr at decay_end, then min_lr, then final_lr from final_start (each in steps; -1 = never).
struct LrSchedule {
  int64_t warmup_steps = 2000;
  int64_t decay_start = -1;        // -1: no decay (constant after warmup)
  int64_t decay_end = -1;
  double min_lr = 2.2e-5;
  int64_t final_start = -1;        // -1: no final phase
  double final_lr = 7.3e-6;
  bool operator==(const LrSchedule&) const = default;
};

// Batch-size ramp: sequences per step grow linearly from start to the full batch over
// ramp_tokens tokens (spec §6.2: 3072 -> 15360 over 469B tokens). 0 disables the ramp.
struct BatchRamp {
  int64_t start_sequences = 0;
  int64_t ramp_tokens = 0;
  bool operator==(const BatchRamp&) const = default;
};

struct TrainConfig {
  int64_t seq_len = 4096;
  int64_t micro_batch = 1;          // sequences per forward/backward
  int64_t batch_sequences = 1;      // sequences per optimizer step (multiple of micro_batch)
  int64_t steps = 1000;
  uint64_t seed = 1234;
  double init_std = 0.006;          // spec §6.2; norms start at 1, biases at 0
  std::vector<StepValue> bias_update_speed = {{0, 1e-3}};  // gamma (spec §2.2)
  std::vector<StepValue> mtp_weight = {{0, 0.3}};          // lambda (spec §3.2)
  double balance_alpha = 1e-4;      // alpha of the sequence-wise balance loss (spec §2.3)
  int64_t log_every = 1;
  int64_t eval_every = 100;         // 0 disables validation
  int64_t eval_batches = 4;
  int64_t save_every = 500;         // 0: only at the end
  std::string out_dir = "runs/default";
  std::string precision = "fp32";   // "fp32" (CPU and GPU), "bf16", "fp8" (GPU; train/recipe.h)
  std::string device = "cpu";       // "cpu" or "cuda" (one GPU per process)
  int64_t threads = 0;              // 0: all cores (per process)
  // Process mesh of a multi-process run (parallel/mesh.h): pipeline stages and the expert-parallel
  // group size inside data parallelism (dp = ranks / pp). Properties of the run, not of the model:
  // checkpoints are written with 1 and 1 (any mesh writes the same files and resumes any of them).
  int64_t pp = 1;
  // The pipeline schedule when pp > 1 (parallel/schedule.h): "1f1b", "zb1p", "dualpipe",
  // "dualpipev".
  std::string pp_schedule = "1f1b";
  // Decoder layers per pipeline stage (parallel/stage_layout.h): "auto" (cost-balanced over the
  // ranks, from the model's FLOPs), "even", or a list of layer counts, one per stage (2 * pp
  // under DualPipeV, pp otherwise), summing to model.num_hidden_layers, >= 1 on middle stages
  // (the first and last may hold 0): "3,4,3,2", in TOML also [3, 4, 3, 2].
  std::string pp_stage_layers = "auto";
  int64_t ep = 1;
  // Data parallelism on GPUs (train.device = "cuda", dp > 1, pp = 1): true (the default, like the
  // CPU engine, which always shards) runs ZeRO-1 (parallel/gpu_zero1.h: gradients reduce-scattered,
  // AdamW moments sharded over the dp ranks, updated weights all-gathered; under train.ep > 1 over
  // the tensors outside the routed experts, which keep an optimizer of their own on each rank);
  // false keeps a whole optimizer replica on every rank and all-reduces the gradients. The GPU
  // pipeline always all-reduces. Checkpoints are the same files either way.
  bool gpu_zero1 = true;
  bool operator==(const TrainConfig&) const = default;
};

struct DataConfig {
  // A text file (.txt / .txt.zst, byte tokens) or a token dataset directory made by
  // `frugal data tokenize` (index.json + shards).
  std::string train_path;
  std::string val_path;             // text data only: optional; else the last val_fraction of train
  double val_fraction = 0.05;       // held-out share (of tokens for text, of documents for datasets)
  std::string tokenizer = "bytes";  // "bytes", or a tokenizer.json the datasets were made with
  // Several token datasets mixed by weight: "dirA=0.7,dirB=0.3" (overrides train_path).
  std::string mix;
  double fim_rate = 0.1;            // fill-in-the-middle rate (PSM, spec §6.1); token datasets only

  bool operator==(const DataConfig&) const = default;
};

struct GenerateConfig {
  int64_t max_new_tokens = 200;
  double temperature = 0.8;         // 0 = greedy
  int64_t top_k = 0;                // 0 = off
  double top_p = 1.0;               // 1 = off
  uint64_t seed = 0;
  bool operator==(const GenerateConfig&) const = default;
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  OptimConfig optim;
  LrSchedule schedule;
  BatchRamp batch_ramp;
  DataConfig data;
  GenerateConfig generate;
  bool operator==(const Config&) const = default;
};

// Value of a piecewise schedule at `step`: the last entry whose start <= step.
double schedule_value(const std::vector<StepValue>& schedule, int64_t step);

}  // namespace frugal
