// Training schedules (spec §6.2): learning rate at every phase boundary, the batch-size ramp, and
// piecewise-constant step schedules.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/error.h"
#include "io/config_io.h"
#include "train/schedule.h"

namespace frugal {
namespace {

OptimConfig optim_with_lr(double lr) {
  OptimConfig o;
  o.lr = lr;
  return o;
}

LrSchedule full_schedule() {
  LrSchedule s;
  s.warmup_steps = 10;
  s.decay_start = 100;
  s.decay_end = 200;
  s.min_lr = 0.1;
  s.final_start = 250;
  s.final_lr = 0.01;
  return s;
}

TEST(LearningRate, WarmupIsLinearFromTheFirstStep) {
  const OptimConfig o = optim_with_lr(1.0);
  const LrSchedule s = full_schedule();
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 0), 0.1);  // lr * 1/10
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 4), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 9), 1.0);  // last warmup step reaches lr
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 10), 1.0);
}

TEST(LearningRate, ConstantThenCosineThenMinThenFinal) {
  const OptimConfig o = optim_with_lr(1.0);
  const LrSchedule s = full_schedule();
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 50), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 99), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 100), 1.0);   // cosine starts at lr
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 150), 0.55);  // halfway: (lr + min_lr) / 2
  const double quarter = 0.1 + 0.45 * (1.0 + std::cos(std::numbers::pi * 0.25));
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 125), quarter);
  EXPECT_GT(learning_rate(o, s, 199), 0.1);
  EXPECT_LT(learning_rate(o, s, 199), 0.1 + 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 200), 0.1);  // decay_end: min_lr
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 249), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 250), 0.01);  // final phase
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 1'000'000), 0.01);
}

TEST(LearningRate, DecreasesMonotonicallyAfterWarmup) {
  const OptimConfig o = optim_with_lr(1.0);
  const LrSchedule s = full_schedule();
  for (int64_t step = 10; step < 300; ++step) {
    EXPECT_LE(learning_rate(o, s, step + 1), learning_rate(o, s, step)) << "step " << step;
  }
}

TEST(LearningRate, OptionalPhases) {
  const OptimConfig o = optim_with_lr(2.0);
  LrSchedule s;
  s.warmup_steps = 0;
  s.decay_start = -1;
  s.decay_end = -1;
  s.final_start = -1;
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 0), 2.0);  // no warmup
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 123456), 2.0);
  s.final_start = 10;
  s.final_lr = 0.5;
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 9), 2.0);  // final phase without a decay
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 10), 0.5);
  // A zero-length decay is a step drop (V2-Lite's step decay).
  s = LrSchedule{};
  s.warmup_steps = 0;
  s.decay_start = s.decay_end = 5;
  s.min_lr = 0.25;
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 4), 2.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, s, 5), 0.25);
}

TEST(LearningRate, V3PresetFollowsTheSpec) {
  const Config c = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/v3-671b.toml");
  const LrSchedule& s = c.schedule;
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, 0), 2.2e-4 / 2000);
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, 1999), 2.2e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, s.decay_start - 1), 2.2e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, (s.decay_start + s.decay_end) / 2),
                   (2.2e-4 + 2.2e-5) / 2);
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, s.decay_end), 2.2e-5);
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, s.final_start), 7.3e-6);
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, c.train.steps - 1), 7.3e-6);
}

TEST(LearningRate, V2LitePresetIsAStepDecay) {
  const Config c = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/v2-lite-16b.toml");
  const LrSchedule& s = c.schedule;
  EXPECT_DOUBLE_EQ(learning_rate(c.optim, s, s.decay_start - 1), 4.2e-4);
  EXPECT_NEAR(learning_rate(c.optim, s, s.decay_start), 4.2e-4 * 0.316, 1e-12);
  EXPECT_NEAR(learning_rate(c.optim, s, s.final_start), 4.2e-4 * 0.316 * 0.316, 1e-12);
  // ~80% and ~90% of the run.
  EXPECT_NEAR(static_cast<double>(s.decay_start) / c.train.steps, 0.8, 1e-3);
  EXPECT_NEAR(static_cast<double>(s.final_start) / c.train.steps, 0.9, 1e-3);
}

TEST(BatchRamp, NoRampIsTheFullBatch) {
  TrainConfig t;
  t.micro_batch = 4;
  t.batch_sequences = 64;
  EXPECT_EQ(batch_sequences_at(t, BatchRamp{}, 0), 64);
  EXPECT_EQ(batch_sequences_at(t, BatchRamp{}, 1'000'000), 64);
}

TEST(BatchRamp, LinearInTokensRoundedDownToMicroBatches) {
  TrainConfig t;
  t.micro_batch = 4;
  t.batch_sequences = 64;
  BatchRamp r;
  r.start_sequences = 16;
  r.ramp_tokens = 1000;
  EXPECT_EQ(batch_sequences_at(t, r, 0), 16);
  EXPECT_EQ(batch_sequences_at(t, r, 500), 40);    // 16 + 48 * 0.5
  EXPECT_EQ(batch_sequences_at(t, r, 100), 20);    // 16 + 4.8 = 20.8 -> 20
  EXPECT_EQ(batch_sequences_at(t, r, 180), 24);    // 16 + 8.64 = 24.64 -> 24
  EXPECT_EQ(batch_sequences_at(t, r, 999), 60);    // 63.95 -> 63 -> 60
  EXPECT_EQ(batch_sequences_at(t, r, 1000), 64);
  EXPECT_EQ(batch_sequences_at(t, r, 5000), 64);
  int64_t previous = 0;
  for (int64_t tokens = 0; tokens <= 1000; tokens += 7) {
    const int64_t b = batch_sequences_at(t, r, tokens);
    EXPECT_EQ(b % 4, 0);
    EXPECT_GE(b, previous);
    previous = b;
  }
}

TEST(BatchRamp, NeverBelowOneMicroBatch) {
  TrainConfig t;
  t.micro_batch = 8;
  t.batch_sequences = 64;
  BatchRamp r;
  r.start_sequences = 3;
  r.ramp_tokens = 1000;
  EXPECT_EQ(batch_sequences_at(t, r, 0), 8);
  EXPECT_EQ(batch_sequences_at(t, r, 100), 8);  // 3 + 6.1 = 9 -> 8
}

TEST(BatchRamp, V3PresetRampsFrom3072To15360Over469BTokens) {
  const Config c = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/v3-671b.toml");
  EXPECT_EQ(batch_sequences_at(c.train, c.batch_ramp, 0), 3072);
  EXPECT_EQ(batch_sequences_at(c.train, c.batch_ramp, 234'500'000'000), 9216);
  EXPECT_EQ(batch_sequences_at(c.train, c.batch_ramp, 469'000'000'000), 15360);
  // The step counts in the preset's comments: the ramp takes 15000 steps.
  int64_t tokens = 0, steps = 0;
  while (tokens < c.batch_ramp.ramp_tokens) {
    tokens += batch_sequences_at(c.train, c.batch_ramp, tokens) * c.train.seq_len;
    ++steps;
  }
  EXPECT_EQ(steps, 15000);
}

TEST(ScheduleValue, LastEntryAtOrBeforeTheStep) {
  const std::vector<StepValue> s = {{0, 0.3}, {100, 0.1}, {200, 0.0}};
  EXPECT_EQ(schedule_value(s, 0), 0.3);
  EXPECT_EQ(schedule_value(s, 99), 0.3);
  EXPECT_EQ(schedule_value(s, 100), 0.1);
  EXPECT_EQ(schedule_value(s, 199), 0.1);
  EXPECT_EQ(schedule_value(s, 200), 0.0);
  EXPECT_EQ(schedule_value(s, 1'000'000), 0.0);
  EXPECT_EQ(schedule_value({{0, 1e-3}}, 5), 1e-3);
  EXPECT_THROW(schedule_value({}, 0), Error);
}

TEST(ScheduleValue, V3PresetSwitchesAtTheSpecTokenCounts) {
  const Config c = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/v3-671b.toml");
  // Simulate the token count at each step to check the preset's step numbers.
  int64_t tokens = 0;
  int64_t step_at_10t = -1, step_at_14_3t = -1, step_at_14_633t = -1;
  for (int64_t step = 0; step < c.train.steps; ++step) {
    if (step_at_10t < 0 && tokens >= 10'000'000'000'000) step_at_10t = step;
    if (step_at_14_3t < 0 && tokens >= 14'300'000'000'000) step_at_14_3t = step;
    if (step_at_14_633t < 0 && tokens >= 14'633'000'000'000) step_at_14_633t = step;
    tokens += batch_sequences_at(c.train, c.batch_ramp, tokens) * c.train.seq_len;
  }
  EXPECT_GE(tokens, 14'800'000'000'000);
  EXPECT_EQ(c.schedule.decay_start, step_at_10t);
  EXPECT_EQ(c.schedule.decay_end, step_at_14_3t);
  EXPECT_EQ(c.schedule.final_start, step_at_14_633t);
  EXPECT_EQ(schedule_value(c.train.mtp_weight, step_at_10t - 1), 0.3);
  EXPECT_EQ(schedule_value(c.train.mtp_weight, step_at_10t), 0.1);
  EXPECT_EQ(schedule_value(c.train.bias_update_speed, step_at_14_3t - 1), 0.001);
  EXPECT_EQ(schedule_value(c.train.bias_update_speed, step_at_14_3t), 0.0);
}

}  // namespace
}  // namespace frugal
