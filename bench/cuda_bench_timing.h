// What the CUDA GEMM benchmarks share: filling a device buffer by repeating a host pattern, and
// the median time of one call measured with CUDA events (warm-up calls, then samples of `inner`
// back-to-back calls, inner chosen so that one sample takes at least min_sample_seconds).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/cuda_check.h"

namespace frugal::bench {

// `buffer` = `pattern` repeated (the last copy cut short).
template <class Buffer, class T>
void fill(Buffer& buffer, const std::vector<T>& pattern) {
  for (size_t done = 0; done < buffer.size();) {
    const size_t count = std::min(pattern.size(), buffer.size() - done);
    FRUGAL_CUDA_CHECK(cudaMemcpy(buffer.data() + done, pattern.data(), count * sizeof(T),
                                 cudaMemcpyHostToDevice));
    done += count;
  }
}

class EventTimer {
 public:
  EventTimer(int warmup, int samples, double min_sample_seconds)
      : warmup_(warmup), samples_(samples), min_sample_seconds_(min_sample_seconds) {
    FRUGAL_CUDA_CHECK(cudaEventCreate(&start_));
    FRUGAL_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  // Median seconds of one call of `op` (which enqueues its work on `stream`).
  double median_seconds(const std::function<void()>& op, cudaStream_t stream) {
    for (int i = 0; i < warmup_; ++i) op();
    const double once = sample(op, 1, stream);
    const int inner = static_cast<int>(
        std::clamp(std::ceil(min_sample_seconds_ / std::max(once, 1e-7)), 1.0, 1000.0));
    std::vector<double> samples;
    for (int s = 0; s < samples_; ++s) samples.push_back(sample(op, inner, stream) / inner);
    std::sort(samples.begin(), samples.end());
    return samples[samples.size() / 2];
  }

 private:
  double sample(const std::function<void()>& op, int inner, cudaStream_t stream) {
    FRUGAL_CUDA_CHECK(cudaEventRecord(start_, stream));
    for (int i = 0; i < inner; ++i) op();
    FRUGAL_CUDA_CHECK(cudaEventRecord(stop_, stream));
    FRUGAL_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    FRUGAL_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1e-3;
  }
  int warmup_, samples_;
  double min_sample_seconds_;
  cudaEvent_t start_{}, stop_{};
};

}  // namespace frugal::bench
