// Builds the per-rank step lists of pipeline schedules; see schedule.h. The DualPipe and DualPipeV
// lists follow the eight phases of spec §5.2's step-count table.
#include "parallel/schedule.h"

#include <algorithm>
#include <deque>

#include "core/error.h"

namespace frugal::pipeline {

ScheduleKind parse_schedule_kind(const std::string& name, const std::string& key) {
  if (name == "1f1b") return ScheduleKind::OneFOneB;
  if (name == "zb1p") return ScheduleKind::ZB1P;
  if (name == "dualpipe") return ScheduleKind::DualPipe;
  if (name == "dualpipev") return ScheduleKind::DualPipeV;
  fail("{}: unknown pipeline schedule \"{}\" (expected 1f1b, zb1p, dualpipe or dualpipev)", key,
       name);
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::OneFOneB:
      return "1f1b";
    case ScheduleKind::ZB1P:
      return "zb1p";
    case ScheduleKind::DualPipe:
      return "dualpipe";
    case ScheduleKind::DualPipeV:
      return "dualpipev";
  }
  return "?";
}

const char* op_name(Op op) {
  switch (op) {
    case Op::Forward:
      return "F";
    case Op::BackwardInput:
      return "B";
    case Op::BackwardWeight:
      return "W";
    case Op::ForwardBackward:
      return "FB";
    case Op::RecvForward:
      return "recv_fwd";
    case Op::SendForward:
      return "send_fwd";
    case Op::RecvBackward:
      return "recv_bwd";
    case Op::SendBackward:
      return "send_bwd";
  }
  return "?";
}

int Schedule::rank_of(int micro_batch, int stage) const {
  switch (kind) {
    case ScheduleKind::OneFOneB:
    case ScheduleKind::ZB1P:
      return stage;
    case ScheduleKind::DualPipe:
      return micro_batch < micro_batches / 2 ? stage : stages - 1 - stage;
    case ScheduleKind::DualPipeV:
      return stage < ranks ? stage : stages - 1 - stage;
  }
  return -1;
}

int Schedule::chunk_of(int micro_batch, int stage) const {
  switch (kind) {
    case ScheduleKind::OneFOneB:
    case ScheduleKind::ZB1P:
      return 0;
    case ScheduleKind::DualPipe: {
      const int rank = rank_of(micro_batch, stage);
      return stage == std::min(rank, stages - 1 - rank) ? 0 : 1;
    }
    case ScheduleKind::DualPipeV:
      return stage < ranks ? 0 : 1;
  }
  return -1;
}

namespace {

// Emits one rank's compute steps in order, with the communication steps around them. Each chunk
// takes its micro-batches in order for F and for B; zero-bubble backwards queue their W (FIFO).
class RankBuilder {
 public:
  RankBuilder(const Schedule& schedule, int rank, std::vector<int> chunk_micro_batches[2],
              int chunk_stage[2])
      : schedule_(schedule), rank_(rank) {
    for (int c = 0; c < 2; ++c) {
      micro_batches_[c] = chunk_micro_batches[c];
      stage_[c] = chunk_stage[c];
    }
  }

  void forward(int chunk) {
    const Work work = next_forward(chunk);
    recv_forward(work);
    push({Op::Forward, work, {}, -1});
    send_forward(work);
  }
  // B; with zero_bubble its W is queued for a later weight(), otherwise it runs right after.
  void backward(int chunk, bool zero_bubble) {
    const Work work = next_backward(chunk);
    recv_backward(work);
    push({Op::BackwardInput, work, {}, -1});
    if (zero_bubble) {
      send_backward(work);
      deferred_.push_back(work);
    } else {  // one monolithic backward: the gradient leaves after its weight half
      push({Op::BackwardWeight, work, {}, -1});
      send_backward(work);
    }
  }
  void weight() {
    FRUGAL_CHECK(!deferred_.empty(), "pipeline schedule: rank {} has no deferred W to run", rank_);
    push({Op::BackwardWeight, deferred_.front(), {}, -1});
    deferred_.pop_front();
  }
  // F of forward_chunk overlapped with the full backward of backward_chunk.
  void forward_backward(int forward_chunk, int backward_chunk) {
    const Work f = next_forward(forward_chunk);
    const Work b = next_backward(backward_chunk);
    recv_forward(f);
    recv_backward(b);
    push({Op::ForwardBackward, f, b, -1});
    send_forward(f);
    send_backward(b);
  }
  int deferred_weights() const { return static_cast<int>(deferred_.size()); }
  std::vector<Step> finish() {
    while (!deferred_.empty()) weight();
    return std::move(steps_);
  }

 private:
  Work next_forward(int chunk) {
    FRUGAL_CHECK(forward_index_[chunk] < static_cast<int>(micro_batches_[chunk].size()),
                 "pipeline schedule: rank {} chunk {} ran out of forwards", rank_, chunk);
    return {chunk, micro_batches_[chunk][forward_index_[chunk]++], stage_[chunk]};
  }
  Work next_backward(int chunk) {
    FRUGAL_CHECK(backward_index_[chunk] < forward_index_[chunk],
                 "pipeline schedule: rank {} chunk {} backward before its forward", rank_, chunk);
    return {chunk, micro_batches_[chunk][backward_index_[chunk]++], stage_[chunk]};
  }
  void recv_forward(const Work& w) {
    if (w.stage == 0) return;
    const int peer = schedule_.rank_of(w.micro_batch, w.stage - 1);
    if (peer != rank_) push({Op::RecvForward, w, {}, peer});
  }
  void send_forward(const Work& w) {
    if (w.stage == schedule_.stages - 1) return;
    const int peer = schedule_.rank_of(w.micro_batch, w.stage + 1);
    if (peer != rank_) push({Op::SendForward, w, {}, peer});
  }
  void recv_backward(const Work& w) {
    if (w.stage == schedule_.stages - 1) return;
    const int peer = schedule_.rank_of(w.micro_batch, w.stage + 1);
    if (peer != rank_) push({Op::RecvBackward, w, {}, peer});
  }
  void send_backward(const Work& w) {
    if (w.stage == 0) return;
    const int peer = schedule_.rank_of(w.micro_batch, w.stage - 1);
    if (peer != rank_) push({Op::SendBackward, w, {}, peer});
  }
  void push(const Step& step) { steps_.push_back(step); }

  const Schedule& schedule_;
  int rank_;
  std::vector<int> micro_batches_[2];
  int stage_[2] = {0, 0};
  int forward_index_[2] = {0, 0};
  int backward_index_[2] = {0, 0};
  std::deque<Work> deferred_;
  std::vector<Step> steps_;
};

std::vector<int> iota_range(int begin, int end) {
  std::vector<int> out;
  for (int i = begin; i < end; ++i) out.push_back(i);
  return out;
}

// 1F1B and ZB1P on rank r: min(P-r-1, C) warm-up forwards, then forward/backward pairs, then the
// remaining backwards. ZB1P is ZB-H1 of the Zero Bubble paper (Qi et al. 2023): the same F and B
// order, with every W held back until r+1 of them wait on rank r (rank r defers r), so warm-up
// forwards plus deferred W's are P-1 on every rank and the backwards that gate the upstream stages
// run as early as the last rank allows; the r W's still queued after the last B fill the tail.
// Peak activations (F done, B not) stay 1F1B's: P on rank 0.
std::vector<Step> one_f_one_b(const Schedule& s, int rank, bool zero_bubble) {
  std::vector<int> mbs[2] = {iota_range(0, s.micro_batches), {}};
  int stage[2] = {rank, -1};
  RankBuilder rb(s, rank, mbs, stage);
  const auto backward = [&] {
    rb.backward(0, zero_bubble);
    if (zero_bubble && rb.deferred_weights() > rank) rb.weight();
  };
  const int warmup = std::min(s.stages - rank - 1, s.micro_batches);
  for (int i = 0; i < warmup; ++i) rb.forward(0);
  for (int i = 0; i < s.micro_batches - warmup; ++i) {
    rb.forward(0);
    backward();
  }
  for (int i = 0; i < warmup; ++i) backward();
  return rb.finish();
}

// DualPipe / DualPipeV on one rank: the eight phases of spec §5.2 with position h (DualPipe:
// min(rank, P-1-rank); DualPipeV: the rank), n = P/2 (DualPipe) or the rank count (DualPipeV)
// and c = micro-batches per chunk (C/2 or C).
std::vector<Step> dual_pipe(const Schedule& s, int rank, int h, int n, int c,
                            std::vector<int> chunk_micro_batches[2], int chunk_stage[2]) {
  RankBuilder rb(s, rank, chunk_micro_batches, chunk_stage);
  const bool middle = h == n - 1;  // does not overlap its first F/B pair (smaller bubble)
  for (int i = 0; i < 2 * (n - h - 1); ++i) rb.forward(0);  // 1: F0
  for (int i = 0; i < h + 1; ++i) {                         // 2: F0 F1
    rb.forward(0);
    rb.forward(1);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // 3: B1 W1 F1 (zero bubble)
    rb.backward(1, true);
    rb.weight();
    rb.forward(1);
  }
  const int main_steps = c - 2 * n + h + 1;  // 4: F0&B1, F1&B0 overlapped
  for (int i = 0; i < main_steps; ++i) {
    if (i == 0 && middle) {
      rb.forward(0);
      rb.backward(1, false);
    } else {
      rb.forward_backward(0, 1);
    }
    rb.forward_backward(1, 0);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // 5: B1, F1&B0
    rb.backward(1, false);
    rb.forward_backward(1, 0);
  }
  const int phase6 = h + 1;  // 6: B1 B0, the second half zero bubble
  bool zero_bubble = false;
  for (int i = 0; i < phase6; ++i) {
    if (i == phase6 / 2 && h % 2 == 1) zero_bubble = true;
    rb.backward(1, zero_bubble);
    if (i == phase6 / 2 && h % 2 == 0) zero_bubble = true;
    rb.backward(0, zero_bubble);
  }
  for (int i = 0; i < n - h - 1; ++i) {  // 7: W B0 (zero bubble)
    rb.weight();
    rb.backward(0, true);
  }
  return rb.finish();  // 8: the remaining W
}

}  // namespace

Schedule build_schedule(ScheduleKind kind, int stages, int micro_batches) {
  Schedule s;
  s.kind = kind;
  s.stages = stages;
  s.micro_batches = micro_batches;
  const char* name = schedule_kind_name(kind);
  FRUGAL_CHECK(stages >= 1, "{} schedule: {} stages (need at least 1)", name, stages);
  FRUGAL_CHECK(micro_batches >= 1, "{} schedule: {} micro-batches (need at least 1)", name,
               micro_batches);
  switch (kind) {
    case ScheduleKind::OneFOneB:
    case ScheduleKind::ZB1P:
      s.ranks = stages;
      for (int r = 0; r < s.ranks; ++r)
        s.steps.push_back(one_f_one_b(s, r, kind == ScheduleKind::ZB1P));
      break;
    case ScheduleKind::DualPipe: {
      FRUGAL_CHECK(stages % 2 == 0, "dualpipe schedule: the stage count {} must be even", stages);
      FRUGAL_CHECK(micro_batches % 2 == 0 && micro_batches >= 2 * stages,
                   "dualpipe schedule: {} micro-batches; it needs an even count of at least 2 x "
                   "{} stages = {}",
                   micro_batches, stages, 2 * stages);
      s.ranks = stages;
      const int half = micro_batches / 2;
      for (int r = 0; r < s.ranks; ++r) {
        const int h = std::min(r, stages - 1 - r);
        const bool first_half = r < stages / 2;
        std::vector<int> mbs[2] = {first_half ? iota_range(0, half) : iota_range(half, 2 * half),
                                   first_half ? iota_range(half, 2 * half) : iota_range(0, half)};
        int stage[2] = {h, stages - 1 - h};
        s.steps.push_back(dual_pipe(s, r, h, stages / 2, half, mbs, stage));
      }
      break;
    }
    case ScheduleKind::DualPipeV: {
      FRUGAL_CHECK(stages % 2 == 0, "dualpipev schedule: the stage count {} must be even", stages);
      s.ranks = stages / 2;
      FRUGAL_CHECK(micro_batches >= 2 * s.ranks,
                   "dualpipev schedule: {} micro-batches; it needs at least 2 x {} ranks = {}",
                   micro_batches, s.ranks, 2 * s.ranks);
      for (int r = 0; r < s.ranks; ++r) {
        std::vector<int> mbs[2] = {iota_range(0, micro_batches), iota_range(0, micro_batches)};
        int stage[2] = {r, stages - 1 - r};
        s.steps.push_back(dual_pipe(s, r, r, s.ranks, micro_batches, mbs, stage));
      }
      break;
    }
  }
  return s;
}

double table2_bubble(ScheduleKind kind, int stages, double f, double b, double w, double fb) {
  const double p = stages;
  switch (kind) {
    case ScheduleKind::OneFOneB:
      return (p - 1) * (f + b);
    case ScheduleKind::ZB1P:
      return (p - 1) * (f + b - 2 * w);
    case ScheduleKind::DualPipe:
    case ScheduleKind::DualPipeV:
      return (p / 2 - 1) * (fb + b - 3 * w);
  }
  return 0;
}

}  // namespace frugal::pipeline
