// Pipeline schedules as data (spec §5.2): a pure function turns (kind, stages, micro-batches) into
// one list of steps per rank. A runner executes the lists; simulate_schedule (schedule_sim.h)
// prices them and proves they cannot deadlock. Nothing here touches a model.
//
// Vocabulary. A micro-batch travels through `stages` pipeline stages in order 0..stages-1 (stage 0
// holds the embedding, the last stage the head, MTP and loss). Each rank holds one stage (1F1B,
// ZB1P) or two (DualPipe, DualPipeV: its "chunk 0" and "chunk 1"):
//   1F1B, ZB1P  ranks = stages;  rank r holds stage r.
//   DualPipe    ranks = stages (even); bidirectional: micro-batches [0, C/2) run stages on ranks
//               0,1,..,P-1, micro-batches [C/2, C) run them on ranks P-1,..,0. Rank r holds stage r
//               of the first direction and stage P-1-r of the second (two parameter copies of
//               different stages); chunk 0 is the one of the two that sits earlier on the path
//               (position min(r, P-1-r)), chunk 1 the later one.
//   DualPipeV   ranks = stages/2; one direction along a V: stage s sits on rank s for s < ranks and
//               on rank stages-1-s after the turn. Chunk 0 is stage r, chunk 1 stage stages-1-r.
// Compute steps: F (forward), B (backward for inputs), W (backward for weights, deferrable),
// FB (an F of one chunk overlapped with a full B+W of the other: DualPipe's F&B).
// Communication steps are explicit: RecvForward before an F whose input comes from another rank,
// SendForward after it, RecvBackward / SendBackward likewise for B. Sends are non-blocking
// (buffered), receives block.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace frugal::pipeline {

enum class ScheduleKind { OneFOneB, ZB1P, DualPipe, DualPipeV };

// "1f1b", "zb1p", "dualpipe", "dualpipev"; throws frugal::Error naming `key` otherwise.
ScheduleKind parse_schedule_kind(const std::string& name, const std::string& key);
const char* schedule_kind_name(ScheduleKind kind);

enum class Op {
  Forward,
  BackwardInput,
  BackwardWeight,
  ForwardBackward,  // `work` is the F, `other` the B (with its W) run overlapped
  RecvForward,      // activation of (micro_batch, stage-1) arrives from `peer`
  SendForward,      // activation of (micro_batch, stage) goes to `peer`
  RecvBackward,     // gradient w.r.t. the output of (micro_batch, stage) arrives from `peer`
  SendBackward,     // gradient w.r.t. the input of (micro_batch, stage) goes to `peer`
};
const char* op_name(Op op);

// One unit of work: micro-batch `micro_batch` at stage `stage`, held by the rank's `chunk`.
struct Work {
  int chunk = 0;
  int micro_batch = 0;
  int stage = 0;
};

struct Step {
  Op op = Op::Forward;
  Work work;
  Work other;     // ForwardBackward only: the backward half
  int peer = -1;  // communication steps: the other rank
};

struct Schedule {
  ScheduleKind kind = ScheduleKind::OneFOneB;
  int stages = 0;
  int ranks = 0;
  int micro_batches = 0;
  std::vector<std::vector<Step>> steps;  // [ranks][...]

  // The rank that runs `stage` for `micro_batch`.
  int rank_of(int micro_batch, int stage) const;
  // The chunk of that rank that holds it (0 or 1; always 0 for 1F1B and ZB1P).
  int chunk_of(int micro_batch, int stage) const;
};

// Throws frugal::Error for impossible combinations, with the rule that is broken:
// stages >= 1 and micro_batches >= 1 for 1F1B/ZB1P; DualPipe needs an even stage count >= 2 and an
// even micro-batch count >= 2*stages; DualPipeV an even stage count >= 2 and micro_batches >= stages.
Schedule build_schedule(ScheduleKind kind, int stages, int micro_batches);
// The model stages of a schedule over `ranks` pipeline ranks: 2 * ranks for DualPipeV (two chunks
// per rank, V-shaped), else ranks (DualPipe's two chunks per rank are copies of the same stages).
inline int pipeline_stage_count(ScheduleKind kind, int ranks) {
  return kind == ScheduleKind::DualPipeV ? 2 * ranks : ranks;
}

// Bubble of Table 2 (spec §5.2) in time units, for stage-chunk times F (forward), B (full
// backward), W (weight part of B) and FB (an overlapped F&B pair). For the ZB1P, DualPipe and
// DualPipeV rows, `stages` is PP (the stage count). The lists of build_schedule reach it in
// simulate_schedule with uniform costs: 1F1B always; ZB1P (ZB-H1) when W <= F, W <= B - W and
// micro_batches >= stages; DualPipe/DualPipeV (worst rank) when F equals the input backward B - W
// (tests/parallel/test_schedule.cc gives the excess otherwise).
double table2_bubble(ScheduleKind kind, int stages, double f, double b, double w, double fb);

}  // namespace frugal::pipeline
