// Training checkpoints: one directory per save, <out_dir>/checkpoint-<step>/ holding
//   model.safetensors      every parameter (FP32 master weights; routing biases included) under
//                          Hugging Face names, MTP modules as layers num_hidden_layers + k
//   config.json            the model section as a Hugging Face DeepseekV3 config
//   frugal.toml            the whole resolved configuration (every hyper-parameter; the process
//                          mesh train.pp / train.ep as 1: a checkpoint does not depend on the mesh
//                          that wrote it, and any mesh resumes it)
//   optimizer.safetensors  AdamW moments "<param>.exp_avg" / "<param>.exp_avg_sq" (+ step count)
//   trainer_state.json     step, tokens seen, data-source positions
// and <out_dir>/latest naming the newest one. A save writes into checkpoint-<step>.tmp-<pid>,
// fsyncs every file, renames the directory into place and only then updates `latest`, so a crash
// or an error at any moment leaves the previous good checkpoint intact; a failed save removes its
// temporary directory and throws frugal::Error naming out_dir and the checkpoint. Only names
// "checkpoint-<digits>" count as checkpoints (leftover temporary directories never do).
// Everything a run needs to continue bitwise identically is here: the trainer has no other state
// between steps (the data sources are counter-based, MoE load counters restart every step).
// The main model's embedding and head are not duplicated into the MTP layers (frugal convert
// writes those for Hugging Face exports).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/transformer.h"
#include "train/adamw.h"
#include "train/train_config.h"

namespace frugal {

struct TrainerState {
  int64_t step = 0;          // optimizer steps completed
  int64_t tokens_seen = 0;
  nlohmann::json train_data;  // DataSource::state()
};

// Writes checkpoint-<step> under out_dir (replacing one of the same step only once the new one is
// complete) and points `latest` at it; then keeps the newest `keep` checkpoints (0: all; pruning
// is best effort). Returns the checkpoint directory.
std::string save_checkpoint(const std::string& out_dir, const Config& config,
                            const Transformer<float>& model, const AdamW<float>& optimizer,
                            const TrainerState& state, int64_t keep = 2);

// A checkpoint directory, or a run directory whose `latest` names one -> the checkpoint directory.
// Errors name the path: missing, not a directory, neither kind, `latest` naming no checkpoint.
std::string resolve_checkpoint(const std::string& path);
// True when out_dir already holds a checkpoint (so a fresh run there would overwrite it).
bool has_checkpoint(const std::string& out_dir);

Config load_checkpoint_config(const std::string& checkpoint_dir);
// Errors name the file and tensor (missing, wrong shape or dtype, truncated file).
void load_checkpoint_model(const std::string& checkpoint_dir, Transformer<float>& model);
// Optimizer moments (shape- and dtype-checked, and no extra tensors) and the trainer state.
void load_checkpoint_training(const std::string& checkpoint_dir, AdamW<float>& optimizer,
                              TrainerState& state);
// Only optimizer.safetensors: the moments (checked as above) and the update count.
void load_checkpoint_optimizer(const std::string& checkpoint_dir, AdamW<float>& optimizer);
// Only trainer_state.json (ZeRO-1 reads its optimizer shards itself, train/zero1.h).
void load_checkpoint_trainer_state(const std::string& checkpoint_dir, TrainerState& state);

}  // namespace frugal
