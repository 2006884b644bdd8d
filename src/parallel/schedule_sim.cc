// Simulation of pipeline schedules; see schedule_sim.h.
#include "parallel/schedule_sim.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "core/error.h"

namespace frugal::pipeline {
namespace {

enum Phase { kF = 0, kB = 1, kW = 2 };

struct Key {
  int micro_batch, stage;
  auto operator<=>(const Key&) const = default;
};

std::string describe(int rank, size_t index, const Step& step) {
  return fmt::format("rank {} step {} ({} micro-batch {} stage {})", rank, index, op_name(step.op),
                     step.work.micro_batch, step.work.stage);
}

class Simulator {
 public:
  Simulator(const Schedule& s, const StepCosts& c) : s_(s), c_(c) {
    next_.assign(s.ranks, 0);
    clock_.assign(s.ranks, 0.0);
    busy_.assign(s.ranks, 0.0);
    live_.assign(s.ranks, 0);
    peak_.assign(s.ranks, 0);
    received_.resize(s.ranks);
  }

  SimulationResult run() {
    for (bool progress = true; progress;) {
      progress = false;
      for (int r = 0; r < s_.ranks; ++r)
        while (next_[r] < s_.steps[r].size() && try_step(r)) progress = true;
    }
    for (int r = 0; r < s_.ranks; ++r)
      if (next_[r] < s_.steps[r].size()) {
        std::string stuck;
        for (int q = 0; q < s_.ranks; ++q)
          if (next_[q] < s_.steps[q].size())
            stuck += "\n  " + describe(q, next_[q], s_.steps[q][next_[q]]);
        fail("{} schedule ({} stages, {} micro-batches) deadlocks; waiting:{}",
             schedule_kind_name(s_.kind), s_.stages, s_.micro_batches, stuck);
      }
    for (int m = 0; m < s_.micro_batches; ++m)
      for (int st = 0; st < s_.stages; ++st)
        for (int p = kF; p <= kW; ++p)
          FRUGAL_CHECK(done_[p].count({m, st}) == 1,
                       "{} schedule: micro-batch {} stage {} never runs its {}",
                       schedule_kind_name(s_.kind), m, st, "FBW"[p]);
    SimulationResult result;
    result.makespan = *std::max_element(clock_.begin(), clock_.end());
    result.busy = busy_;
    for (int r = 0; r < s_.ranks; ++r) result.idle.push_back(result.makespan - busy_[r]);
    result.peak_activations = peak_;
    return result;
  }

 private:
  // The time `phase` of `key` finished, or -1 when it has not run yet.
  double finished(int phase, const Key& key) const {
    auto it = done_[phase].find(key);
    return it == done_[phase].end() ? -1.0 : it->second;
  }
  void check_home(int rank, size_t index, const Step& step, const Work& w) const {
    FRUGAL_CHECK(s_.rank_of(w.micro_batch, w.stage) == rank &&
                     s_.chunk_of(w.micro_batch, w.stage) == w.chunk,
                 "{}: stage {} of micro-batch {} belongs to rank {} chunk {}",
                 describe(rank, index, step), w.stage, w.micro_batch,
                 s_.rank_of(w.micro_batch, w.stage), s_.chunk_of(w.micro_batch, w.stage));
  }
  // When the input of `phase` of `w` is ready on `rank`, or -1 if not yet. Inputs from another
  // rank must have been received by an earlier step of this rank.
  double input_ready(int rank, size_t index, const Step& step, int phase, const Work& w) {
    const Key key{w.micro_batch, w.stage};
    if (phase == kW) {
      const double t = finished(kB, key);
      FRUGAL_CHECK(t >= 0, "{}: W before its B", describe(rank, index, step));
      return t;
    }
    if (phase == kB) {
      FRUGAL_CHECK(finished(kF, key) >= 0, "{}: B before its F", describe(rank, index, step));
      if (w.stage == s_.stages - 1) return finished(kF, key);
      const Key from{w.micro_batch, w.stage + 1};
      if (s_.rank_of(w.micro_batch, w.stage + 1) != rank)
        FRUGAL_CHECK(received_[rank].count({1, w.micro_batch, w.stage}),
                     "{}: B without receiving its gradient", describe(rank, index, step));
      return finished(kB, from);
    }
    if (w.stage == 0) return 0.0;
    if (s_.rank_of(w.micro_batch, w.stage - 1) != rank)
      FRUGAL_CHECK(received_[rank].count({0, w.micro_batch, w.stage}),
                   "{}: F without receiving its input", describe(rank, index, step));
    return finished(kF, {w.micro_batch, w.stage - 1});
  }
  void complete(int rank, size_t index, const Step& step, int phase, const Work& w, double t) {
    check_home(rank, index, step, w);
    const bool fresh = done_[phase].emplace(Key{w.micro_batch, w.stage}, t).second;
    FRUGAL_CHECK(fresh, "{}: {} runs twice", describe(rank, index, step), "FBW"[phase]);
    if (phase == kF) peak_[rank] = std::max(peak_[rank], ++live_[rank]);
    if (phase == kB) --live_[rank];
  }

  bool try_step(int r) {
    const size_t index = next_[r];
    const Step& step = s_.steps[r][index];
    double start = clock_[r], cost = 0;
    switch (step.op) {
      case Op::SendForward:
      case Op::SendBackward: {
        const int phase = step.op == Op::SendForward ? kF : kB;
        const double t = finished(phase, {step.work.micro_batch, step.work.stage});
        FRUGAL_CHECK(t >= 0, "{}: sends a result not computed yet", describe(r, index, step));
        const int to_stage = step.work.stage + (phase == kF ? 1 : -1);
        FRUGAL_CHECK(s_.rank_of(step.work.micro_batch, to_stage) == step.peer,
                     "{}: sends to rank {}, but stage {} is on rank {}", describe(r, index, step),
                     step.peer, to_stage, s_.rank_of(step.work.micro_batch, to_stage));
        sent_[std::make_tuple(phase, step.work.micro_batch, to_stage, step.peer)] =
            std::max(start, t) + c_.message;
        break;
      }
      case Op::RecvForward:
      case Op::RecvBackward: {
        const int phase = step.op == Op::RecvForward ? kF : kB;
        auto it = sent_.find(std::make_tuple(phase, step.work.micro_batch, step.work.stage, r));
        if (it == sent_.end()) return false;
        start = std::max(start, it->second);
        received_[r].insert({phase, step.work.micro_batch, step.work.stage});
        break;
      }
      case Op::Forward:
      case Op::BackwardInput:
      case Op::BackwardWeight: {
        const int phase = step.op == Op::Forward ? kF : step.op == Op::BackwardInput ? kB : kW;
        const double ready = input_ready(r, index, step, phase, step.work);
        if (ready < 0) return false;
        start = std::max(start, ready);
        cost = phase == kF ? c_.forward : phase == kB ? c_.backward_input : c_.backward_weight;
        complete(r, index, step, phase, step.work, start + cost);
        break;
      }
      case Op::ForwardBackward: {
        const double f_ready = input_ready(r, index, step, kF, step.work);
        const double b_ready = input_ready(r, index, step, kB, step.other);
        if (f_ready < 0 || b_ready < 0) return false;
        start = std::max({start, f_ready, b_ready});
        cost = c_.forward_backward > 0
                   ? c_.forward_backward
                   : c_.forward + c_.backward_input + c_.backward_weight;
        complete(r, index, step, kF, step.work, start + cost);
        complete(r, index, step, kB, step.other, start + cost);
        complete(r, index, step, kW, step.other, start + cost);
        break;
      }
    }
    clock_[r] = start + cost;
    busy_[r] += cost;
    ++next_[r];
    return true;
  }

  const Schedule& s_;
  const StepCosts& c_;
  std::vector<size_t> next_;
  std::vector<double> clock_, busy_;
  std::vector<int> live_, peak_;
  std::map<Key, double> done_[3];
  std::map<std::tuple<int, int, int, int>, double> sent_;  // (phase, mb, to stage, to rank)
  std::vector<std::set<std::tuple<int, int, int>>> received_;
};

}  // namespace

SimulationResult simulate_schedule(const Schedule& schedule, const StepCosts& costs) {
  return Simulator(schedule, costs).run();
}

}  // namespace frugal::pipeline
