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
  // Merging needs the address order; the result does not keep it. Device addresses are this
  // process's own (another rank's allocations may lie in another order), so each span takes the
  // place of its first array in the caller's list: ranks that list the same tensors in the same
  // order get the same spans in the same order, whatever their addresses.
  std::vector<size_t> by_address(arrays.size());
  for (size_t i = 0; i < arrays.size(); ++i) by_address[i] = i;
  std::sort(by_address.begin(), by_address.end(), [&arrays](size_t a, size_t b) {
    const uintptr_t pa = reinterpret_cast<uintptr_t>(arrays[a].data),
                    pb = reinterpret_cast<uintptr_t>(arrays[b].data);
    return pa != pb ? pa < pb : a < b;
  });
  struct Merged {
    DeviceSpan span;
    size_t first = 0;  // the smallest caller index among its arrays
  };
  std::vector<Merged> merged;
  for (size_t index : by_address) {
    const DeviceSpan& s = arrays[index];
    if (!merged.empty()) {
      Merged& last = merged.back();
      const uintptr_t last_end = reinterpret_cast<uintptr_t>(last.span.data + last.span.count);
      // Overlapping only: arrays that merely touch may come from different cudaMalloc blocks,
      // and no copy or collective may run across two allocations.
      if (reinterpret_cast<uintptr_t>(s.data) < last_end) {
        const uintptr_t end = std::max(last_end, reinterpret_cast<uintptr_t>(s.data + s.count));
        last.span.count = static_cast<int64_t>(
            (end - reinterpret_cast<uintptr_t>(last.span.data)) / sizeof(float));
        last.first = std::min(last.first, index);
        continue;
      }
    }
    merged.push_back({s, index});
  }
  std::sort(merged.begin(), merged.end(),
            [](const Merged& a, const Merged& b) { return a.first < b.first; });
  std::vector<DeviceSpan> out;
  out.reserve(merged.size());
  for (const Merged& m : merged) out.push_back(m.span);
  return out;
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
  check_same_layout_on_every_rank();
}

// A mismatch would not hang (the bucket has one size on every rank when the totals agree) but sum
// one tensor's gradient into another's: refuse it at once instead.
void GradientAllReducer::check_same_layout_on_every_rank() {
  if (comm_.size() == 1) return;
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the span sizes and the bucket size
  auto mix = [&hash](int64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= static_cast<uint64_t>(value >> (8 * byte)) & 0xffu;
      hash *= 1099511628211ull;
    }
  };
  mix(static_cast<int64_t>(spans_.size()));
  mix(bucket_elements_);
  for (const DeviceSpan& s : spans_) mix(s.count);
  // 31 bits, so the sum over the ranks cannot overflow. Equal hashes give sum = size * own on
  // every rank; for 2 ranks only they do (with more, unequal hashes could cancel, very unlikely).
  const int64_t own = static_cast<int64_t>(hash & 0x7fffffffu);
  cuda::DeviceArray<int64_t> device(ctx_, 1);
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(device.data(), &own, sizeof own, cudaMemcpyHostToDevice,
                                    ctx_.stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));  // whatever the input stream
  comm_.all_reduce_sum(device.data(), 1, CommType::I64);
  int64_t sum = 0;
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(&sum, device.data(), sizeof sum, cudaMemcpyDeviceToHost,
                                    ctx_.stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  FRUGAL_CHECK(sum == own * comm_.size(),
               "GradientAllReducer: rank {} of {} lists other gradient arrays ({} spans, {} "
               "elements) than another rank: every rank must list the same tensors in the same "
               "order",
               comm_.rank(), comm_.size(), spans_.size(), [this] {
                 int64_t total = 0;
                 for (const DeviceSpan& s : spans_) total += s.count;
                 return total;
               }());
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
