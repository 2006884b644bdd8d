// Median time of a launch sequence on a stream, measured with a pair of cudaEvents: warm-up
// launches first, then `reps` timed samples (median_us_batched: each sample times enough
// back-to-back launches to last min_sample_us, so launch gaps of short kernels average out). For
// benchmarks and the ops harness' timing mode.
// CUDA builds only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
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
    for (int i = 0; i < reps; ++i) times.push_back(sample_us(launch, 1));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }
  // The same with `inner` back-to-back calls per sample (from one timed call: enough to last
  // min_sample_us, between 1 and 1000), per call.
  double median_us_batched(const std::function<void()>& launch, int reps, double min_sample_us,
                           int warmup = 3) {
    for (int i = 0; i < warmup; ++i) launch();
    const double once = sample_us(launch, 1);
    const int inner = static_cast<int>(
        std::clamp(std::ceil(min_sample_us / std::max(once, 0.1)), 1.0, 1000.0));
    std::vector<double> times;
    for (int i = 0; i < reps; ++i) times.push_back(sample_us(launch, inner) / inner);
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

 private:
  double sample_us(const std::function<void()>& launch, int inner) {
    FRUGAL_CUDA_CHECK(cudaEventRecord(start_, stream_));
    for (int i = 0; i < inner; ++i) launch();
    FRUGAL_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    FRUGAL_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    FRUGAL_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return 1000.0 * ms;
  }

  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace frugal::cuda
