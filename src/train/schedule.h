// Training schedules of spec §6.2, all pure functions of the step (or of tokens seen):
//   learning_rate:      linear warmup, constant, cosine decay, constant min_lr, constant final_lr
//   batch_sequences_at: linear batch-size ramp in tokens, rounded down to whole micro-batches
//   schedule_value:     piecewise-constant schedules (bias speed gamma, MTP weight lambda), declared
//                       in train/train_config.h
#pragma once

#include <cstdint>

#include "train/train_config.h"

namespace frugal {

// Learning rate of optimizer step `step` (counted from 0):
//   step < warmup_steps:              lr * (step + 1) / warmup_steps
//   then, until decay_start:          lr
//   decay_start <= step < decay_end:  min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,
//                                     p = (step - decay_start) / (decay_end - decay_start)
//   decay_end <= step:                min_lr
//   final_start <= step:              final_lr (takes precedence once reached)
// decay_start = -1 keeps lr after warmup; final_start = -1 has no final phase.
double learning_rate(const OptimConfig& optim, const LrSchedule& schedule, int64_t step);

// Sequences in the optimizer step that begins after `tokens_seen` training tokens. Without a ramp
// (ramp_tokens == 0) it is train.batch_sequences. With one it grows linearly from
// ramp.start_sequences (at 0 tokens) to train.batch_sequences (at ramp_tokens), rounded down to a
// multiple of train.micro_batch and never below one micro-batch.
int64_t batch_sequences_at(const TrainConfig& train, const BatchRamp& ramp, int64_t tokens_seen);

}  // namespace frugal
