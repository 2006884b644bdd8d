// GradientAllReducer (see gpu_data_parallel.h): span merging, bucketing and the in-place sums.
#ifdef FRUGAL_HAVE_CUDA

#include "parallel/gpu_data_parallel.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/error.h"

namespace frugal::gpu {

std::vector<DeviceSpan> merge_device_spans(std::vector<DeviceSpan> arrays) {
  std::erase_if(arrays, [](const DeviceSpan& s) { return s.data == nullptr || s.count <= 0; });
  std::sort(arrays.begin(), arrays.end(), [](const DeviceSpan& a, const DeviceSpan& b) {
    return reinterpret_cast<uintptr_t>(a.data) < reinterpret_cast<uintptr_t>(b.data);
  });
  std::vector<DeviceSpan> merged;
  for (const DeviceSpan& s : arrays) {
    if (!merged.empty()) {
      DeviceSpan& last = merged.back();
      const uintptr_t last_end = reinterpret_cast<uintptr_t>(last.data + last.count);
      // Overlapping only: arrays that merely touch may come from different cudaMalloc blocks,
      // and no copy or collective may run across two allocations.
      if (reinterpret_cast<uintptr_t>(s.data) < last_end) {
        const uintptr_t end = std::max(last_end, reinterpret_cast<uintptr_t>(s.data + s.count));
        last.count = static_cast<int64_t>((end - reinterpret_cast<uintptr_t>(last.data)) /
                                          sizeof(float));
        continue;
      }
    }
    merged.push_back(s);
  }
  return merged;
}

GradientAllReducer::GradientAllReducer(cuda::DeviceContext& ctx, Communicator& comm,
                                       std::vector<DeviceSpan> arrays, int64_t bucket_elements)
    : ctx_(ctx),
      comm_(comm),
      spans_(merge_device_spans(std::move(arrays))),
      bucket_elements_(bucket_elements) {
  FRUGAL_CHECK(bucket_elements_ > 0, "GradientAllReducer: bucket of {} elements", bucket_elements_);
  int64_t small = 0;
  for (const DeviceSpan& s : spans_)
    if (s.count < bucket_elements_) small += s.count;
  // The bucket need not be larger than all the small spans together.
  const int64_t bucket = std::min(bucket_elements_, small);
  if (bucket > 0) bucket_ = cuda::DeviceArray<float>(ctx_, bucket);
  // Count the collectives one call makes (for logs and tests): replay the packing.
  int64_t filled = 0;
  bool open = false;
  for (const DeviceSpan& s : spans_) {
    if (s.count >= bucket_elements_) {
      ++collectives_;
      continue;
    }
    if (open && filled + s.count > bucket) {
      ++collectives_;
      filled = 0;
    }
    filled += s.count;
    open = true;
  }
  if (open) ++collectives_;
}

void GradientAllReducer::flush(size_t first, size_t end, int64_t elements) {
  if (elements == 0) return;
  int64_t offset = 0;
  for (size_t i = first; i < end; ++i) {
    const DeviceSpan& s = spans_[i];
    if (s.count >= bucket_elements_) continue;
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(bucket_.data() + offset, s.data,
                                      static_cast<size_t>(s.count) * sizeof(float),
                                      cudaMemcpyDeviceToDevice, ctx_.stream));
    offset += s.count;
  }
  comm_.all_reduce_sum(bucket_.data(), elements, CommType::F32);
  offset = 0;
  for (size_t i = first; i < end; ++i) {
    const DeviceSpan& s = spans_[i];
    if (s.count >= bucket_elements_) continue;
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(s.data, bucket_.data() + offset,
                                      static_cast<size_t>(s.count) * sizeof(float),
                                      cudaMemcpyDeviceToDevice, ctx_.stream));
    offset += s.count;
  }
}

void GradientAllReducer::all_reduce() {
  if (comm_.size() == 1) return;
  const int64_t bucket = bucket_.size();
  size_t first = 0;       // first span of the open bucket
  int64_t filled = 0;     // elements packed into it
  for (size_t i = 0; i < spans_.size(); ++i) {
    const DeviceSpan& s = spans_[i];
    if (s.count >= bucket_elements_) {
      comm_.all_reduce_sum(s.data, s.count, CommType::F32);  // large: in place
      continue;
    }
    if (filled + s.count > bucket) {
      flush(first, i, filled);
      first = i;
      filled = 0;
    }
    filled += s.count;
  }
  flush(first, spans_.size(), filled);
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
