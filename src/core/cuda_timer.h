// Median time of a launch sequence on a stream, measured with a pair of cudaEvents: warm-up
// launches first, then `reps` timed samples. For benchmarks and the ops harness' timing mode.
// CUDA builds only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "core/cuda_check.h"

namespace frugal::cuda {

class CudaTimer {
 public:
  explicit CudaTimer(cudaStream_t stream) : stream_(stream) {
    FRUGAL_CUDA_CHECK(cudaEventCreate(&start_));
    FRUGAL_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~CudaTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  CudaTimer(const CudaTimer&) = delete;
  CudaTimer& operator=(const CudaTimer&) = delete;

  // Median over `reps` samples of one call of `launch`, in microseconds.
  double median_us(const std::function<void()>& launch, int reps, int warmup = 3) {
    for (int i = 0; i < warmup; ++i) launch();
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<double> times;
    for (int i = 0; i < reps; ++i) {
      FRUGAL_CUDA_CHECK(cudaEventRecord(start_, stream_));
      launch();
      FRUGAL_CUDA_CHECK(cudaEventRecord(stop_, stream_));
      FRUGAL_CUDA_CHECK(cudaEventSynchronize(stop_));
      float ms = 0;
      FRUGAL_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
      times.push_back(1000.0 * ms);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace frugal::cuda
