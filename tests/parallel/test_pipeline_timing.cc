// The measured pipeline bubble's host side (parallel/pipeline_timing.h): compute intervals ->
// busy / idle / mean F, B and W (union of overlapping intervals, clipping to the step, bad
// intervals refused), the expected bubble of a schedule with the GPU's costs (W = 0 or a measured
// deferred W, F&B = F + B + W) against Table 2's closed forms and the simulator, and the per-rank
// pack for the host sum. One rank.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "parallel/pipeline_timing.h"
#include "parallel/schedule.h"

namespace frugal::pipeline {
namespace {

constexpr TimedKind F = TimedKind::Forward, B = TimedKind::Backward, W = TimedKind::Weight;

TEST(PipelineTiming, BusyIsTheSumOfDisjointIntervals) {
  // F 1..3, B 4..8.5, F 9..10 in a 12 ms step: busy 2 + 4.5 + 1 = 7.5, idle 4.5.
  const PipelineTiming t = summarize_timing(12.0, {{F, 1, 3}, {B, 4, 8.5}, {F, 9, 10}});
  EXPECT_DOUBLE_EQ(t.step_ms, 12.0);
  EXPECT_DOUBLE_EQ(t.busy_ms, 7.5);
  EXPECT_DOUBLE_EQ(t.idle_ms, 4.5);
  EXPECT_DOUBLE_EQ(t.f_ms, 1.5);
  EXPECT_DOUBLE_EQ(t.b_ms, 4.5);
  EXPECT_EQ(t.f_count, 2);
  EXPECT_EQ(t.b_count, 1);
}

TEST(PipelineTiming, WeightStepsAreCountedApart) {
  // F 0..1, B 1..3, W 3..4 and 5..7 in an 8 ms step: busy 6, W mean 1.5 over 2, B alone 2.
  const PipelineTiming t = summarize_timing(8.0, {{F, 0, 1}, {B, 1, 3}, {W, 3, 4}, {W, 5, 7}});
  EXPECT_DOUBLE_EQ(t.busy_ms, 6.0);
  EXPECT_DOUBLE_EQ(t.idle_ms, 2.0);
  EXPECT_EQ(t.w_count, 2);
  EXPECT_DOUBLE_EQ(t.w_ms, 1.5);
  EXPECT_EQ(t.b_count, 1);
  EXPECT_DOUBLE_EQ(t.b_ms, 2.0);
  EXPECT_EQ(t.f_count, 1);
  const PipelineTiming none = summarize_timing(3.0, {{B, 0, 1}});
  EXPECT_EQ(none.w_count, 0);
  EXPECT_DOUBLE_EQ(none.w_ms, 0.0);
}

TEST(PipelineTiming, OverlapsCountOnceAndTheStepClips) {
  // Unsorted, overlapping (3..6 inside 2..7), touching (7..8) and past the step's end (9..15 in a
  // 10 ms step): the union inside [0, 10] is 2..8 and 9..10 = 7 ms; the means use whole lengths.
  const PipelineTiming t = summarize_timing(10.0, {{B, 9, 15}, {F, 3, 6}, {F, 2, 7}, {B, 7, 8}});
  EXPECT_DOUBLE_EQ(t.busy_ms, 7.0);
  EXPECT_DOUBLE_EQ(t.idle_ms, 3.0);
  EXPECT_DOUBLE_EQ(t.f_ms, 4.0);  // (3 + 5) / 2
  EXPECT_DOUBLE_EQ(t.b_ms, 3.5);  // (6 + 1) / 2
}

TEST(PipelineTiming, NoComputeIsAllIdle) {
  const PipelineTiming t = summarize_timing(5.0, {});
  EXPECT_DOUBLE_EQ(t.busy_ms, 0.0);
  EXPECT_DOUBLE_EQ(t.idle_ms, 5.0);
  EXPECT_EQ(t.f_count + t.b_count, 0);
  EXPECT_DOUBLE_EQ(t.f_ms, 0.0);
}

TEST(PipelineTiming, RefusesBackwardIntervalsAndNegativeSteps) {
  EXPECT_THROW(summarize_timing(5.0, {{F, 3, 2}}), Error);
  EXPECT_THROW(summarize_timing(-1.0, {}), Error);
}

TEST(PipelineTiming, ExpectedBubbleMatchesTable2WithTheGpuCosts) {
  const double f = 2.0, b = 3.0;
  // 1F1B over 4 stages: (P-1)(F+B) = 15, and the simulated worst rank idles exactly that.
  const ExpectedBubble one = expected_bubble(build_schedule(ScheduleKind::OneFOneB, 4, 8), f, b);
  EXPECT_DOUBLE_EQ(one.table2, 3 * (f + b));
  ASSERT_EQ(one.simulated.size(), 4u);
  EXPECT_NEAR(*std::max_element(one.simulated.begin(), one.simulated.end()), 3 * (f + b), 1e-9);
  // Makespan = busy of any rank + its idle: 8 micro-batches of F + B each.
  for (double idle : one.simulated) EXPECT_NEAR(one.simulated_makespan - idle, 8 * (f + b), 1e-9);
  // ZB1P with W = 0 is 1F1B's bubble: (P-1)(F+B-0).
  const ExpectedBubble zb = expected_bubble(build_schedule(ScheduleKind::ZB1P, 4, 8), f, b);
  EXPECT_DOUBLE_EQ(zb.table2, 3 * (f + b));
  // DualPipeV over 4 stages (2 ranks): (PP/2-1)(F&B + B - 3W) = F + 2B with F&B = F + B.
  const ExpectedBubble v = expected_bubble(build_schedule(ScheduleKind::DualPipeV, 4, 8), f, b);
  EXPECT_DOUBLE_EQ(v.table2, f + 2 * b);
  ASSERT_EQ(v.simulated.size(), 2u);
  for (double idle : v.simulated) EXPECT_GE(idle, 0.0);
  EXPECT_THROW(expected_bubble(build_schedule(ScheduleKind::OneFOneB, 2, 2), -1.0, 1.0), Error);
  EXPECT_THROW(expected_bubble(build_schedule(ScheduleKind::ZB1P, 2, 2), 1.0, 1.0, -1.0), Error);
}

TEST(PipelineTiming, ExpectedBubbleWithDeferredWeights) {
  // B = 2 (input gradients), W = 1 (deferred weight GEMMs): Table 2's B is the whole backward 3.
  const double f = 2.0, b = 2.0, w = 1.0;
  // ZB1P over 4 stages: (P-1)(F + B - 2W) = 3 * 3 = 9, reached by the simulated worst rank (ZB-H1
  // with W <= F, W <= B - W and M >= P); 1F1B's would be 3 * (F + B) = 15.
  const ExpectedBubble zb = expected_bubble(build_schedule(ScheduleKind::ZB1P, 4, 8), f, b, w);
  EXPECT_DOUBLE_EQ(zb.table2, 3 * (f + b + w - 2 * w));
  ASSERT_EQ(zb.simulated.size(), 4u);
  EXPECT_NEAR(*std::max_element(zb.simulated.begin(), zb.simulated.end()), zb.table2, 1e-9);
  // Every rank's busy time is 8 micro-batches of F + B + W.
  for (double idle : zb.simulated) EXPECT_NEAR(zb.simulated_makespan - idle, 8 * (f + b + w), 1e-9);
  // DualPipeV over 4 stages: (PP/2-1)(F&B + B - 3W) with F&B = F + B + W, B = b + w.
  const ExpectedBubble v = expected_bubble(build_schedule(ScheduleKind::DualPipeV, 4, 8), f, b, w);
  EXPECT_DOUBLE_EQ(v.table2, (f + b + w) + (b + w) - 3 * w);
  // W = 0 is the two-argument form.
  const ExpectedBubble plain = expected_bubble(build_schedule(ScheduleKind::ZB1P, 4, 8), f, b);
  const ExpectedBubble zero = expected_bubble(build_schedule(ScheduleKind::ZB1P, 4, 8), f, b, 0.0);
  EXPECT_DOUBLE_EQ(plain.table2, zero.table2);
  EXPECT_EQ(plain.simulated, zero.simulated);
}

TEST(PipelineTiming, PackAndUnpackKeepEveryRanksFields) {
  const PipelineTiming a{10, 7, 3, 1.5, 2.5, 4, 4, 0.5, 3}, b{11, 6, 5, 1.25, 2.75, 8, 8, 0, 0};
  std::vector<double> sum = pack_timings(a, 0, 2);
  const std::vector<double> other = pack_timings(b, 1, 2);
  for (size_t i = 0; i < sum.size(); ++i) sum[i] += other[i];  // the host sum over ranks
  const std::vector<PipelineTiming> all = unpack_timings(sum, 2);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_DOUBLE_EQ(all[0].idle_ms, 3);
  EXPECT_DOUBLE_EQ(all[1].step_ms, 11);
  EXPECT_DOUBLE_EQ(all[1].f_ms, 1.25);
  EXPECT_EQ(all[1].b_count, 8);
  EXPECT_EQ(all[0].f_count, 4);
  EXPECT_DOUBLE_EQ(all[0].w_ms, 0.5);
  EXPECT_EQ(all[0].w_count, 3);
  EXPECT_EQ(all[1].w_count, 0);
  EXPECT_THROW(pack_timings(a, 2, 2), Error);
  EXPECT_THROW(unpack_timings(sum, 3), Error);
}

}  // namespace
}  // namespace frugal::pipeline
