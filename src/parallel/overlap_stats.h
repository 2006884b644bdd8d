// How much communication is hidden under computation (spec §5: the all-to-alls run on their own
// streams beside the computation), measured from CUDA events on both streams.
//
// Host part (every build): interval arithmetic on times in milliseconds.
//   merge_intervals(v)          the union of v as sorted, disjoint intervals (touching ones joined)
//   union_length(v)             the total length of that union
//   intersection_length(a, b)   the length of (union of a) ∩ (union of b)
//   measure_overlap(comm, busy) {comm_ms = |∪comm|, hidden_ms = |∪comm ∩ ∪busy|}
// ExchangeOverlap sums those per expert-parallel exchange (the plan's row-count exchange, the
// dispatch pair dispatch/dispatch_backward and the combine pair combine/combine_backward) and
// describe_overlap() writes the line the engine logs, e.g.
//   "all-to-all 12.3 ms/step, 41% hidden under computation (dispatch 45%, combine 38%, counts 0%)".
//
// CUDA part (builds with FRUGAL_HAVE_CUDA): EventTimeline records timing events (cudaEventDefault)
// on any streams of one device, as start/stop marks of numbered tracks; resolve() waits for them
// and turns each track's marks into intervals, in ms from the earliest mark
// (cudaEventElapsedTime against one base event), so intervals of different streams compare.
// This header is free of fmt: nccl_communicator.cu (nvcc) may include it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace frugal {

struct TimeInterval {
  double begin = 0, end = 0;  // ms; an interval with end <= begin is empty
};

// The union of `intervals`: sorted by begin, disjoint, each non-empty; touching intervals merge.
std::vector<TimeInterval> merge_intervals(std::vector<TimeInterval> intervals);
// Total length of the union of `intervals` (overlaps counted once).
double union_length(const std::vector<TimeInterval>& intervals);
// Length of (union of a) ∩ (union of b).
double intersection_length(const std::vector<TimeInterval>& a, const std::vector<TimeInterval>& b);

struct OverlapTotals {
  double comm_ms = 0;    // communication time (union of its intervals)
  double hidden_ms = 0;  // of which the computation's busy intervals cover
  double hidden_fraction() const { return comm_ms > 0 ? hidden_ms / comm_ms : 0.0; }
  OverlapTotals& operator+=(const OverlapTotals& other) {
    comm_ms += other.comm_ms;
    hidden_ms += other.hidden_ms;
    return *this;
  }
};

// comm: intervals of the communication; busy: intervals when the computation ran.
OverlapTotals measure_overlap(const std::vector<TimeInterval>& comm,
                              const std::vector<TimeInterval>& busy);

// The expert-parallel exchanges of a span of steps (gpu_expert_dispatch.h), forward and backward.
struct ExchangeOverlap {
  OverlapTotals counts;    // plan(): the per-expert row counts (never overlapped)
  OverlapTotals dispatch;  // dispatch (forward) and dispatch_backward
  OverlapTotals combine;   // combine (forward) and combine_backward
  OverlapTotals total() const {
    OverlapTotals sum = counts;
    sum += dispatch;
    sum += combine;
    return sum;
  }
  ExchangeOverlap& operator+=(const ExchangeOverlap& other) {
    counts += other.counts;
    dispatch += other.dispatch;
    combine += other.combine;
    return *this;
  }
};

// "all-to-all {total/steps} ms/step, {p}% hidden under computation (dispatch {p}%, combine {p}%,
// counts {p}%)"; steps >= 1.
std::string describe_overlap(const ExchangeOverlap& overlap, int64_t steps);

#ifdef FRUGAL_HAVE_CUDA
// Timing marks on CUDA streams of one device, grouped into tracks [0, tracks). Single-threaded.
class EventTimeline {
 public:
  EventTimeline() = default;
  ~EventTimeline();  // destroys the events (errors ignored: the context may be gone at exit)
  EventTimeline(const EventTimeline&) = delete;
  EventTimeline& operator=(const EventTimeline&) = delete;

  // Enqueues on `stream` the start / the stop of an interval of `track`. A track's marks
  // alternate start, stop (its intervals may use different streams); a start without its stop
  // (an operation that threw) is left out.
  void start(int track, cudaStream_t stream);
  void stop(int track, cudaStream_t stream);
  bool empty() const { return marks_.empty(); }

  // Waits for every recorded mark and returns the intervals of tracks [0, tracks) (ms from the
  // earliest mark), then forgets the marks (their events are reused).
  std::vector<std::vector<TimeInterval>> resolve(int tracks);
  // Forgets the marks without reading them.
  void clear();

 private:
  struct Mark {
    int track = 0;
    bool start = false;
    cudaEvent_t event = nullptr;
  };
  cudaEvent_t take_event();
  void record(int track, bool start, cudaStream_t stream);

  std::vector<Mark> marks_;        // since the last resolve()/clear(), in recording order
  std::vector<cudaEvent_t> pool_;  // every event created
  size_t pool_used_ = 0;
};
#endif  // FRUGAL_HAVE_CUDA

}  // namespace frugal
