// The communication plan of the pipeline schedules (parallel/pipeline_plan.h), a pure function
// (one process; run under mpirun -np 1 with the other pipeline tests). For 1F1B, ZB1P, DualPipe
// and DualPipeV over 2 and 4 ranks and several micro-batch counts:
//   - every rank's Compute actions are its list's compute steps, each once, in list order;
//   - the communication actions between two ranks pair up in order on both sides (the k-th one of
//     r with p is the k-th one of p with r): a Send meets a Recv of the same message, an Exchange
//     an Exchange with the messages swapped; every message a rank receives is one its peer sends;
//   - exchanging_pairs lists exactly the pairs that have an Exchange; 1F1B over 2 ranks with 4
//     micro-batches has one (the steady state's opposite sends);
//   - every Recv step of a list is served (by a Recv or an earlier Exchange).
// A list that cannot run with blocking sends (both ranks receive first) is refused naming the
// ranks that wait; message_tag gives distinct tags to distinct messages.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "parallel/pipeline_plan.h"

namespace frugal {
namespace {

using namespace pipeline;

bool is_compute(Op op) {
  return op == Op::Forward || op == Op::BackwardInput || op == Op::BackwardWeight ||
         op == Op::ForwardBackward;
}

void check_plan(const Schedule& s, const std::string& label) {
  const CommunicationPlan plan = plan_communication(s);
  ASSERT_EQ(static_cast<int>(plan.actions.size()), s.ranks) << label;
  std::map<std::pair<int, int>, std::vector<Action>> between;  // (rank, peer) -> actions in order
  std::set<std::pair<int, int>> exchanging;
  for (int r = 0; r < s.ranks; ++r) {
    std::vector<size_t> computes, expected;
    size_t receives = 0, received = 0;
    for (size_t i = 0; i < s.steps[r].size(); ++i) {
      if (is_compute(s.steps[r][i].op)) expected.push_back(i);
      if (s.steps[r][i].op == Op::RecvForward || s.steps[r][i].op == Op::RecvBackward) ++receives;
    }
    for (const Action& a : plan.actions[r]) {
      if (a.kind == ActionKind::Compute) {
        computes.push_back(a.step);
        continue;
      }
      ASSERT_TRUE(a.peer >= 0 && a.peer < s.ranks && a.peer != r) << label << " rank " << r;
      between[{r, a.peer}].push_back(a);
      if (a.kind == ActionKind::Recv || a.kind == ActionKind::Exchange) ++received;
      if (a.kind == ActionKind::Exchange) exchanging.insert({std::min(r, a.peer), std::max(r, a.peer)});
    }
    EXPECT_EQ(computes, expected) << label << " rank " << r << ": compute steps lost or reordered";
    EXPECT_EQ(received, receives) << label << " rank " << r << ": receives served";
  }
  for (const auto& [key, mine] : between) {
    const auto& theirs = between[{key.second, key.first}];
    ASSERT_EQ(mine.size(), theirs.size()) << label << " ranks " << key.first << ", " << key.second;
    for (size_t k = 0; k < mine.size(); ++k) {
      const Action &a = mine[k], &b = theirs[k];
      const std::string where = label + " ranks " + std::to_string(key.first) + "->" +
                                std::to_string(key.second) + " action " + std::to_string(k);
      switch (a.kind) {
        case ActionKind::Send:
          EXPECT_EQ(b.kind, ActionKind::Recv) << where;
          EXPECT_TRUE(a.send == b.recv) << where;
          break;
        case ActionKind::Recv:
          EXPECT_EQ(b.kind, ActionKind::Send) << where;
          EXPECT_TRUE(a.recv == b.send) << where;
          break;
        case ActionKind::Exchange:
          EXPECT_EQ(b.kind, ActionKind::Exchange) << where;
          EXPECT_TRUE(a.send == b.recv && a.recv == b.send) << where;
          break;
        case ActionKind::Compute: FAIL() << where;
      }
    }
  }
  EXPECT_EQ(plan.exchanging_pairs, exchanging) << label;
}

TEST(PipelinePlan, EverySchedulePairsItsMessagesInOrder) {
  struct Case {
    ScheduleKind kind;
    int ranks, micro_batches;
  };
  const std::vector<Case> cases = {
      {ScheduleKind::OneFOneB, 2, 1},  {ScheduleKind::OneFOneB, 2, 4},
      {ScheduleKind::OneFOneB, 4, 8},  {ScheduleKind::ZB1P, 2, 4},
      {ScheduleKind::ZB1P, 4, 6},      {ScheduleKind::DualPipe, 2, 4},
      {ScheduleKind::DualPipe, 4, 8},  {ScheduleKind::DualPipeV, 2, 4},
      {ScheduleKind::DualPipeV, 2, 7}, {ScheduleKind::DualPipeV, 4, 8}};
  for (const Case& c : cases) {
    const Schedule s =
        build_schedule(c.kind, pipeline_stage_count(c.kind, c.ranks), c.micro_batches);
    check_plan(s, std::string(schedule_kind_name(c.kind)) + " ranks " + std::to_string(c.ranks) +
                      " M " + std::to_string(c.micro_batches));
  }
  const CommunicationPlan one_f_one_b =
      plan_communication(build_schedule(ScheduleKind::OneFOneB, 2, 4));
  EXPECT_EQ(one_f_one_b.exchanging_pairs, (std::set<std::pair<int, int>>{{0, 1}}))
      << "1F1B's steady state sends an activation and a gradient at once: one exchange pair";
}

TEST(PipelinePlan, RefusesListsThatWaitForEachOther) {
  Schedule s;
  s.kind = ScheduleKind::OneFOneB;
  s.stages = s.ranks = 2;
  s.micro_batches = 1;
  // Both ranks receive first: neither ever sends.
  s.steps = {{{Op::RecvBackward, {0, 0, 0}, {}, 1}, {Op::SendForward, {0, 0, 0}, {}, 1}},
             {{Op::RecvForward, {0, 0, 1}, {}, 0}, {Op::SendBackward, {0, 0, 1}, {}, 0}}};
  try {
    plan_communication(s);
    FAIL() << "a list where both ranks wait was accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("cannot run with blocking sends"), std::string::npos) << message;
    EXPECT_NE(message.find("rank 0"), std::string::npos) << message;
    EXPECT_NE(message.find("rank 1"), std::string::npos) << message;
  }
}

TEST(PipelinePlan, TagsAreDistinct) {
  const Schedule s = build_schedule(ScheduleKind::DualPipeV, 4, 4);
  std::set<int> tags;
  for (int m = 0; m < s.micro_batches; ++m)
    for (int st = 0; st < s.stages; ++st)
      for (bool g : {false, true}) EXPECT_TRUE(tags.insert(message_tag(s, {g, m, st})).second);
}

}  // namespace
}  // namespace frugal
