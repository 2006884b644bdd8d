// Executes pipeline schedules (schedule.h) on paper: every rank walks its step list, a step starts
// when the rank is free and its inputs exist, sends are buffered and receives wait. The result is
// the makespan, each rank's busy and idle time and its peak count of live activations, and a proof
// that the lists are complete and cannot deadlock: any missing, duplicated or misordered step, a
// compute step whose input was never received, or a wait that can never end is a frugal::Error
// naming the rank and the step.
#pragma once

#include <vector>

#include "parallel/schedule.h"

namespace frugal::pipeline {

struct StepCosts {
  double forward = 1;          // F of one stage chunk
  double backward_input = 1;   // B without W
  double backward_weight = 1;  // W
  double forward_backward = 0; // an overlapped F&B pair (F + B + W of the two); <= 0: no overlap
  double message = 0;          // latency of one send -> recv
};

struct SimulationResult {
  double makespan = 0;
  std::vector<double> busy;           // [ranks] time spent in compute steps
  std::vector<double> idle;           // [ranks] makespan - busy
  std::vector<int> peak_activations;  // [ranks] most (micro-batch, stage) pairs with F done, B not
};

SimulationResult simulate_schedule(const Schedule& schedule, const StepCosts& costs);

}  // namespace frugal::pipeline
