// Overlap measurement (see overlap_stats.h): interval unions and intersections on the host, and
// the CUDA event timeline that produces the intervals.
#include "parallel/overlap_stats.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

#ifdef FRUGAL_HAVE_CUDA
#include "core/cuda_check.h"
#endif

namespace frugal {

std::vector<TimeInterval> merge_intervals(std::vector<TimeInterval> intervals) {
  std::erase_if(intervals, [](const TimeInterval& i) { return !(i.end > i.begin); });
  std::sort(intervals.begin(), intervals.end(),
            [](const TimeInterval& a, const TimeInterval& b) { return a.begin < b.begin; });
  std::vector<TimeInterval> merged;
  for (const TimeInterval& i : intervals) {
    if (!merged.empty() && i.begin <= merged.back().end)
      merged.back().end = std::max(merged.back().end, i.end);
    else
      merged.push_back(i);
  }
  return merged;
}

double union_length(const std::vector<TimeInterval>& intervals) {
  double length = 0;
  for (const TimeInterval& i : merge_intervals(intervals)) length += i.end - i.begin;
  return length;
}

double intersection_length(const std::vector<TimeInterval>& a, const std::vector<TimeInterval>& b) {
  const std::vector<TimeInterval> x = merge_intervals(a), y = merge_intervals(b);
  double length = 0;
  size_t i = 0, j = 0;
  while (i < x.size() && j < y.size()) {  // both sorted and disjoint: one sweep
    const double begin = std::max(x[i].begin, y[j].begin), end = std::min(x[i].end, y[j].end);
    if (end > begin) length += end - begin;
    if (x[i].end < y[j].end)
      ++i;
    else
      ++j;
  }
  return length;
}

OverlapTotals measure_overlap(const std::vector<TimeInterval>& comm,
                              const std::vector<TimeInterval>& busy) {
  return {union_length(comm), intersection_length(comm, busy)};
}

std::string describe_overlap(const ExchangeOverlap& overlap, int64_t steps) {
  FRUGAL_CHECK(steps >= 1, "describe_overlap: {} steps", steps);
  const auto percent = [](const OverlapTotals& t) {
    return static_cast<int>(std::lround(100.0 * t.hidden_fraction()));
  };
  const OverlapTotals total = overlap.total();
  return fmt::format(
      "all-to-all {:.2f} ms/step, {}% hidden under computation (dispatch {}% of {:.2f} ms, "
      "combine {}% of {:.2f} ms, counts {}% of {:.2f} ms)",
      total.comm_ms / static_cast<double>(steps), percent(total), percent(overlap.dispatch),
      overlap.dispatch.comm_ms / static_cast<double>(steps), percent(overlap.combine),
      overlap.combine.comm_ms / static_cast<double>(steps), percent(overlap.counts),
      overlap.counts.comm_ms / static_cast<double>(steps));
}

#ifdef FRUGAL_HAVE_CUDA

EventTimeline::~EventTimeline() {
  for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

cudaEvent_t EventTimeline::take_event() {
  if (pool_used_ == pool_.size()) {
    cudaEvent_t e = nullptr;
    FRUGAL_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDefault));  // timing on
    pool_.push_back(e);
  }
  return pool_[pool_used_++];
}

void EventTimeline::record(int track, bool start, cudaStream_t stream) {
  FRUGAL_CHECK(track >= 0, "EventTimeline: negative track {}", track);
  Mark mark{track, start, take_event()};
  FRUGAL_CUDA_CHECK(cudaEventRecord(mark.event, stream));
  marks_.push_back(mark);
}

void EventTimeline::start(int track, cudaStream_t stream) {
  record(track, true, stream);
}

void EventTimeline::stop(int track, cudaStream_t stream) {
  record(track, false, stream);
}

void EventTimeline::clear() {
  marks_.clear();
  pool_used_ = 0;
}

std::vector<std::vector<TimeInterval>> EventTimeline::resolve(int tracks) {
  std::vector<std::vector<TimeInterval>> out(static_cast<size_t>(std::max(tracks, 0)));
  if (marks_.empty()) return out;
  for (const Mark& mark : marks_) FRUGAL_CUDA_CHECK(cudaEventSynchronize(mark.event));
  // Times against one base event (any: elapsed times may be negative); then shifted so that the
  // earliest mark is at 0.
  const cudaEvent_t base = marks_.front().event;
  std::vector<double> at(marks_.size());
  double earliest = 0;
  for (size_t m = 0; m < marks_.size(); ++m) {
    float ms = 0;
    FRUGAL_CUDA_CHECK(cudaEventElapsedTime(&ms, base, marks_[m].event));
    at[m] = static_cast<double>(ms);
    earliest = std::min(earliest, at[m]);
  }
  std::vector<int64_t> open(out.size(), -1);  // per track: the pending start mark
  for (size_t m = 0; m < marks_.size(); ++m) {
    const Mark& mark = marks_[m];
    if (mark.track >= static_cast<int>(out.size())) continue;
    int64_t& pending = open[static_cast<size_t>(mark.track)];
    if (mark.start) {
      pending = static_cast<int64_t>(m);  // a start without its stop is dropped
    } else if (pending >= 0) {
      out[static_cast<size_t>(mark.track)].push_back(
          {at[static_cast<size_t>(pending)] - earliest, at[m] - earliest});
      pending = -1;
    }
  }
  clear();
  return out;
}

#endif  // FRUGAL_HAVE_CUDA

}  // namespace frugal
