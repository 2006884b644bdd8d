// The communication plan of a pipeline schedule (schedule.h): a pure function of the schedule that
// turns every rank's step list into the list of actions a runner executes, in order:
//   Compute   a compute step (F, B, W, FB) of the rank's list, by its index
//   Send      a message to `peer` (blocking until the peer receives it)
//   Recv      a message from `peer`
//   Exchange  a send to and a receive from `peer` at once (one grouped call on both ranks)
// Messages are [rows, hidden] activations and gradients, named by the stage that produced them.
//
// Why a plan: the schedules are written for buffered sends, but real sends (MPI past its eager
// limit, NCCL always) wait for their receiver, and two neighbours that send to each other at the
// same moment (1F1B's steady state: an activation one way, a gradient the other) would wait
// forever. plan_communication plays all ranks' lists with rendezvous semantics (a send and its
// receive happen together) and fuses every pair of opposite sends into one Exchange (the Recv step
// it anticipates on each side then does nothing). Every rank computes the same plan. A list that
// cannot run even so is refused (frugal::Error) with the ranks that would wait and their steps.
#pragma once

#include <compare>
#include <cstddef>
#include <set>
#include <utility>
#include <vector>

#include "parallel/schedule.h"

namespace frugal::pipeline {

// A message: an activation (the output of `stage`) or a gradient (w.r.t. the input of `stage`)
// of micro-batch `micro_batch`.
struct Message {
  bool gradient = false;
  int micro_batch = 0, stage = 0;
  auto operator<=>(const Message&) const = default;
};

enum class ActionKind { Compute, Send, Recv, Exchange };

struct Action {
  ActionKind kind = ActionKind::Compute;
  size_t step = 0;     // Compute: index into the rank's step list (schedule.steps[rank])
  Message send, recv;  // Send: send; Recv: recv; Exchange: both
  int peer = -1;       // Send / Recv / Exchange: the other rank
};

struct CommunicationPlan {
  std::vector<std::vector<Action>> actions;       // [ranks][...], in execution order
  std::set<std::pair<int, int>> exchanging_pairs;  // (lower rank, higher rank) with an Exchange
};

CommunicationPlan plan_communication(const Schedule& schedule);

// The tag of a message between two ranks: 2 * (micro_batch * stages + stage) (+1 for gradients).
inline int message_tag(const Schedule& schedule, const Message& m) {
  return 2 * (m.micro_batch * schedule.stages + m.stage) + (m.gradient ? 1 : 0);
}

}  // namespace frugal::pipeline
