// plan_communication (see pipeline_plan.h): every rank's step list played with rendezvous sends.
#include "parallel/pipeline_plan.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace frugal::pipeline {

namespace {

Message message_of(const Step& s) {
  switch (s.op) {
    case Op::SendForward: return Message{false, s.work.micro_batch, s.work.stage};
    case Op::RecvForward: return Message{false, s.work.micro_batch, s.work.stage - 1};
    case Op::SendBackward: return Message{true, s.work.micro_batch, s.work.stage};
    case Op::RecvBackward: return Message{true, s.work.micro_batch, s.work.stage + 1};
    default: return Message{};
  }
}

bool is_send(Op op) { return op == Op::SendForward || op == Op::SendBackward; }
bool is_recv(Op op) { return op == Op::RecvForward || op == Op::RecvBackward; }

}  // namespace

CommunicationPlan plan_communication(const Schedule& schedule) {
  const int ranks = schedule.ranks;
  FRUGAL_CHECK(ranks >= 1 && static_cast<int>(schedule.steps.size()) == ranks,
               "pipeline: the {} schedule has {} ranks but {} step lists",
               schedule_kind_name(schedule.kind), ranks, schedule.steps.size());
  std::vector<size_t> next(ranks, 0);
  std::vector<std::set<Message>> early(ranks);  // received by an exchange before their Recv step
  CommunicationPlan plan;
  plan.actions.resize(ranks);
  auto& plans = plan.actions;
  auto current = [&](int r) -> const Step* {
    return next[r] < schedule.steps[r].size() ? &schedule.steps[r][next[r]] : nullptr;
  };
  for (bool unfinished = true; unfinished;) {
    bool progress = false;
    unfinished = false;
    for (int r = 0; r < ranks; ++r) {
      while (const Step* s = current(r)) {
        if (!is_send(s->op) && !is_recv(s->op)) {
          plans[r].push_back({ActionKind::Compute, next[r], {}, {}, -1});
        } else if (is_recv(s->op) && early[r].erase(message_of(*s))) {
          // already here (an exchange brought it)
        } else {
          const int p = s->peer;
          FRUGAL_CHECK(p >= 0 && p < ranks && p != r, "pipeline: rank {} step {} names peer {}",
                       r, next[r], p);
          const Step* other = current(p);
          if (other == nullptr || other->peer != r) break;
          if (is_send(s->op) && is_recv(other->op) && message_of(*other) == message_of(*s)) {
            plans[r].push_back({ActionKind::Send, 0, message_of(*s), {}, p});
            plans[p].push_back({ActionKind::Recv, 0, {}, message_of(*s), r});
          } else if (is_recv(s->op) && is_send(other->op) && message_of(*other) == message_of(*s)) {
            plans[r].push_back({ActionKind::Recv, 0, {}, message_of(*s), p});
            plans[p].push_back({ActionKind::Send, 0, message_of(*s), {}, r});
          } else if (is_send(s->op) && is_send(other->op)) {  // opposite sends: one exchange
            plans[r].push_back({ActionKind::Exchange, 0, message_of(*s), message_of(*other), p});
            plans[p].push_back({ActionKind::Exchange, 0, message_of(*other), message_of(*s), r});
            early[r].insert(message_of(*other));
            early[p].insert(message_of(*s));
            plan.exchanging_pairs.insert({std::min(r, p), std::max(r, p)});
          } else {
            break;
          }
          ++next[p];
        }
        ++next[r];
        progress = true;
      }
      if (current(r) != nullptr) unfinished = true;
    }
    if (unfinished && !progress) {
      std::string waiting;
      for (int r = 0; r < ranks; ++r)
        if (const Step* s = current(r))
          waiting += fmt::format(" rank {} at {} (peer {});", r, op_name(s->op), s->peer);
      fail("pipeline: the {} schedule cannot run with blocking sends:{}",
           schedule_kind_name(schedule.kind), waiting);
    }
  }
  return plan;
}

}  // namespace frugal::pipeline
