// The measured pipeline bubble's host side; see pipeline_timing.h.
#include "parallel/pipeline_timing.h"

#include <algorithm>

#include "core/error.h"
#include "parallel/overlap_stats.h"
#include "parallel/schedule_sim.h"

namespace frugal::pipeline {

PipelineTiming summarize_timing(double step_ms, const std::vector<TimedInterval>& intervals) {
  FRUGAL_CHECK(step_ms >= 0, "pipeline timing: the step took {} ms", step_ms);
  PipelineTiming t;
  t.step_ms = step_ms;
  std::vector<TimeInterval> clipped;  // [begin, end) inside [0, step_ms]
  double f_total = 0, b_total = 0, w_total = 0;
  for (const TimedInterval& i : intervals) {
    FRUGAL_CHECK(i.end_ms >= i.begin_ms,
                 "pipeline timing: a compute interval ends at {} ms before it begins at {} ms",
                 i.end_ms, i.begin_ms);
    const double length = i.end_ms - i.begin_ms;
    if (i.kind == TimedKind::Forward) {
      f_total += length;
      ++t.f_count;
    } else if (i.kind == TimedKind::Backward) {
      b_total += length;
      ++t.b_count;
    } else {
      w_total += length;
      ++t.w_count;
    }
    const double begin = std::clamp(i.begin_ms, 0.0, step_ms);
    const double end = std::clamp(i.end_ms, 0.0, step_ms);
    if (end > begin) clipped.push_back({begin, end});
  }
  t.busy_ms = union_length(clipped);
  t.idle_ms = step_ms - t.busy_ms;
  t.f_ms = t.f_count ? f_total / t.f_count : 0.0;
  t.b_ms = t.b_count ? b_total / t.b_count : 0.0;
  t.w_ms = t.w_count ? w_total / t.w_count : 0.0;
  return t;
}

ExpectedBubble expected_bubble(const Schedule& schedule, double f, double b, double w) {
  FRUGAL_CHECK(f >= 0 && b >= 0 && w >= 0,
               "pipeline timing: stage times F {} ms, B {} ms and W {} ms", f, b, w);
  ExpectedBubble out;
  out.table2 = table2_bubble(schedule.kind, schedule.stages, f, b + w, w, f + b + w);
  StepCosts costs;
  costs.forward = f;
  costs.backward_input = b;
  costs.backward_weight = w;
  costs.forward_backward = f + b + w;
  costs.message = 0;
  const SimulationResult r = simulate_schedule(schedule, costs);
  out.simulated = r.idle;
  out.simulated_makespan = r.makespan;
  return out;
}

namespace {
constexpr int kFields = 9;
}

std::vector<double> pack_timings(const PipelineTiming& mine, int rank, int ranks) {
  FRUGAL_CHECK(rank >= 0 && rank < ranks, "pipeline timing: rank {} of {}", rank, ranks);
  std::vector<double> out(static_cast<size_t>(ranks * kFields), 0.0);
  double* at = out.data() + rank * kFields;
  at[0] = mine.step_ms;
  at[1] = mine.busy_ms;
  at[2] = mine.idle_ms;
  at[3] = mine.f_ms;
  at[4] = mine.b_ms;
  at[5] = mine.f_count;
  at[6] = mine.b_count;
  at[7] = mine.w_ms;
  at[8] = mine.w_count;
  return out;
}

std::vector<PipelineTiming> unpack_timings(const std::vector<double>& packed, int ranks) {
  FRUGAL_CHECK(packed.size() == static_cast<size_t>(ranks * kFields),
               "pipeline timing: {} values for {} ranks (need {})", packed.size(), ranks,
               ranks * kFields);
  std::vector<PipelineTiming> out(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    const double* at = packed.data() + r * kFields;
    out[r] = {at[0], at[1], at[2], at[3], at[4], static_cast<int>(at[5]), static_cast<int>(at[6]),
              at[7], static_cast<int>(at[8])};
  }
  return out;
}

}  // namespace frugal::pipeline
