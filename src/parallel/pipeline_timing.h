// The measured pipeline bubble (spec §5.2), host side: a GPU pipeline rank records device events
// around every compute action of a step (gpu_pipeline_runner.h, FRUGAL_PIPELINE_TIMING=1); the
// intervals, in ms from the step's start event, become the rank's step wall time, busy (compute)
// time, idle time = wall - busy, and the mean F, B and W durations. expected_bubble prices the
// same schedule on paper with the measured F, B and W: Table 2's formula (table2_bubble) and each
// rank's simulated idle (simulate_schedule). On the GPU a B step whose W is deferred computes the
// input gradients (and the small weight gradients) and its W step the weight-gradient GEMMs; a B
// whose W is the rank's next compute step runs the whole backward (W then costs nothing), and an
// FB step is an F then a whole backward (no overlap: F&B = F + B + W).
//
//   intervals  [n] {kind F|B|W, begin_ms, end_ms}, any order, may overlap (the union is busy)
//   timing     per rank {step_ms, busy_ms, idle_ms, f_ms, b_ms, f_count, b_count, w_ms, w_count}
// Pure functions, every build.
#pragma once

#include <vector>

#include "parallel/schedule.h"

namespace frugal::pipeline {

enum class TimedKind { Forward, Backward, Weight };

struct TimedInterval {
  TimedKind kind = TimedKind::Forward;
  double begin_ms = 0, end_ms = 0;  // from the step's start
};

struct PipelineTiming {
  double step_ms = 0;  // the step's wall time on this rank (start to end event)
  double busy_ms = 0;  // the union of the compute intervals, clipped to [0, step_ms]
  double idle_ms = 0;  // step_ms - busy_ms: waiting on messages, the bubble
  double f_ms = 0;     // mean F duration (0 without F)
  double b_ms = 0;     // mean B duration (0 without B)
  int f_count = 0, b_count = 0;
  double w_ms = 0;  // mean W duration (0 without timed W: the weight gradients made in B)
  int w_count = 0;
};

// Throws frugal::Error for a negative step time or an interval that ends before it begins.
PipelineTiming summarize_timing(double step_ms, const std::vector<TimedInterval>& intervals);

// The bubble the schedule should show with stage-chunk times f (forward), b (the B step: input
// gradients) and w (the W step: weight gradients; 0 when W runs inside B), F&B = f + b + w (the
// GPU runner's costs).
struct ExpectedBubble {
  double table2 = 0;              // table2_bubble(kind, stages, f, b + w, w, f + b + w)
  std::vector<double> simulated;  // [ranks] simulate_schedule's idle per rank
  double simulated_makespan = 0;
};
ExpectedBubble expected_bubble(const Schedule& schedule, double f, double b, double w = 0.0);

// timings of every rank (rank order) as [ranks * 9] doubles for a host sum and back.
std::vector<double> pack_timings(const PipelineTiming& mine, int rank, int ranks);
std::vector<PipelineTiming> unpack_timings(const std::vector<double>& packed, int ranks);

}  // namespace frugal::pipeline
