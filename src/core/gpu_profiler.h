// GpuProfiler: a section profiler on CUDA events, off unless the environment sets FRUGAL_PROFILE=1.
//
// A ScopedSection records a start event on its stream when it opens and a stop event when it
// closes; report() synchronizes and sums the elapsed time of every recorded pair per section name
// since the last reset(). Sections may nest (both the outer and the inner section are reported;
// their times overlap). Events come from a pool that reset() hands back, so a step that repeats
// the sections of the previous one creates no events. Disabled, a section costs one branch.
// Single-threaded: sections are opened and closed by the thread that drives the stream.
#pragma once

#ifdef FRUGAL_HAVE_CUDA

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace frugal::cuda {

class GpuProfiler {
 public:
  struct Row {
    std::string name;
    int64_t calls = 0;
    double total_ms = 0;
  };

  GpuProfiler();  // enabled iff the environment sets FRUGAL_PROFILE=1
  ~GpuProfiler();
  GpuProfiler(const GpuProfiler&) = delete;
  GpuProfiler& operator=(const GpuProfiler&) = delete;

  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }

  // Records the start event of a section on `stream` and returns its slot (for stop()).
  int64_t start(cudaStream_t stream, const char* name);
  // Records the stop event of the section in `slot` on `stream`.
  void stop(cudaStream_t stream, int64_t slot);

  // Synchronizes the recorded events and returns (name, calls, total ms) per section name over
  // the sections closed since the last reset(), largest total first.
  std::vector<Row> report();
  // Forgets the recorded sections; their events return to the pool.
  void reset();

 private:
  struct Pair {
    const char* name = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    bool closed = false;
  };
  cudaEvent_t take_event();

  bool enabled_ = false;
  std::vector<Pair> pairs_;        // sections recorded since the last reset()
  std::vector<cudaEvent_t> pool_;  // every event created
  size_t pool_used_ = 0;           // events of pool_ handed out since the last reset()
};

// The process-wide profiler.
GpuProfiler& gpu_profiler();

// Times its scope on `stream` as the section `name` (a string literal: the pointer is kept).
class ScopedSection {
 public:
  ScopedSection(cudaStream_t stream, const char* name) {
    GpuProfiler& p = gpu_profiler();
    if (p.enabled()) {
      stream_ = stream;
      slot_ = p.start(stream, name);
    }
  }
  ~ScopedSection() { close(); }
  // Ends the section before the scope does (for sections that end mid-function); idempotent.
  void close() {
    if (slot_ >= 0) gpu_profiler().stop(stream_, slot_);
    slot_ = -1;
  }
  ScopedSection(const ScopedSection&) = delete;
  ScopedSection& operator=(const ScopedSection&) = delete;

 private:
  cudaStream_t stream_ = nullptr;
  int64_t slot_ = -1;
};

}  // namespace frugal::cuda

#endif  // FRUGAL_HAVE_CUDA
