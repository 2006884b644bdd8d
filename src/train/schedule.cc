// Training schedules of spec §6.2: learning rate by step, batch size by tokens seen, and
// piecewise-constant values by step. See schedule.h for the formulas.
#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace frugal {

double schedule_value(const std::vector<StepValue>& schedule, int64_t step) {
  FRUGAL_CHECK(!schedule.empty(), "schedule_value: empty schedule");
  double value = schedule.front().value;
  for (const StepValue& piece : schedule) {
    if (piece.start > step) break;  // entries are sorted by start (checked when loading)
    value = piece.value;
  }
  return value;
}

double learning_rate(const OptimConfig& optim, const LrSchedule& schedule, int64_t step) {
  if (step < schedule.warmup_steps) {
    return optim.lr * static_cast<double>(step + 1) / static_cast<double>(schedule.warmup_steps);
  }
  if (schedule.final_start >= 0 && step >= schedule.final_start) return schedule.final_lr;
  if (schedule.decay_start >= 0 && step >= schedule.decay_start) {
    if (step >= schedule.decay_end) return schedule.min_lr;
    const double progress = static_cast<double>(step - schedule.decay_start) /
                            static_cast<double>(schedule.decay_end - schedule.decay_start);
    return schedule.min_lr +
           0.5 * (optim.lr - schedule.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
  return optim.lr;
}

int64_t batch_sequences_at(const TrainConfig& train, const BatchRamp& ramp, int64_t tokens_seen) {
  const int64_t full = train.batch_sequences;
  const int64_t micro = std::max<int64_t>(train.micro_batch, 1);
  if (ramp.ramp_tokens <= 0 || tokens_seen >= ramp.ramp_tokens) return full;
  const int64_t seen = std::max<int64_t>(tokens_seen, 0);
  // 128-bit product: (15360 - 3072) * 469e9 already needs 53 bits.
  const __int128 grown = static_cast<__int128>(full - ramp.start_sequences) * seen / ramp.ramp_tokens;
  const int64_t sequences = ramp.start_sequences + static_cast<int64_t>(grown);
  return std::max(sequences / micro * micro, micro);
}

}  // namespace frugal
