// GpuProfiler (see gpu_profiler.h): pooled CUDA event pairs summed per section name.
#ifdef FRUGAL_HAVE_CUDA

#include "core/gpu_profiler.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/cuda_check.h"

namespace frugal::cuda {

GpuProfiler::GpuProfiler() {
  const char* env = std::getenv("FRUGAL_PROFILE");
  enabled_ = env != nullptr && std::strcmp(env, "1") == 0;
}

GpuProfiler::~GpuProfiler() {
  // The CUDA context may already be gone at process exit: errors are ignored here.
  for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

cudaEvent_t GpuProfiler::take_event() {
  if (pool_used_ == pool_.size()) {
    cudaEvent_t e = nullptr;
    FRUGAL_CUDA_CHECK(cudaEventCreate(&e));
    pool_.push_back(e);
  }
  return pool_[pool_used_++];
}

int64_t GpuProfiler::start(cudaStream_t stream, const char* name) {
  Pair pair;
  pair.name = name;
  pair.start = take_event();
  pair.stop = take_event();
  FRUGAL_CUDA_CHECK(cudaEventRecord(pair.start, stream));
  pairs_.push_back(pair);
  return static_cast<int64_t>(pairs_.size()) - 1;
}

void GpuProfiler::stop(cudaStream_t stream, int64_t slot) {
  // Called from a destructor (possibly while an exception unwinds): never throws; a pair whose
  // stop could not be recorded is left out of the report.
  if (slot < 0 || slot >= static_cast<int64_t>(pairs_.size())) return;
  Pair& pair = pairs_[static_cast<size_t>(slot)];
  pair.closed = cudaEventRecord(pair.stop, stream) == cudaSuccess;
}

std::vector<GpuProfiler::Row> GpuProfiler::report() {
  std::map<std::string, Row> by_name;
  for (const Pair& pair : pairs_) {
    if (!pair.closed) continue;
    FRUGAL_CUDA_CHECK(cudaEventSynchronize(pair.stop));
    float ms = 0;
    FRUGAL_CUDA_CHECK(cudaEventElapsedTime(&ms, pair.start, pair.stop));
    Row& row = by_name[pair.name];
    row.name = pair.name;
    row.calls += 1;
    row.total_ms += static_cast<double>(ms);
  }
  std::vector<Row> rows;
  rows.reserve(by_name.size());
  for (auto& [name, row] : by_name) rows.push_back(std::move(row));
  std::stable_sort(rows.begin(), rows.end(),
                   [](const Row& a, const Row& b) { return a.total_ms > b.total_ms; });
  return rows;
}

void GpuProfiler::reset() {
  pairs_.clear();
  pool_used_ = 0;
}

GpuProfiler& gpu_profiler() {
  // Never destroyed: sections may close during static destruction, after the CUDA runtime.
  static GpuProfiler* profiler = new GpuProfiler();
  return *profiler;
}

}  // namespace frugal::cuda

#endif  // FRUGAL_HAVE_CUDA
