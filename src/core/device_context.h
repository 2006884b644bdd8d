// The GPU side of one training process: the device, its compute stream, the cuBLASLt handle and
// the caching allocator every step buffer comes from (no cudaMalloc inside a step once the pool
// is warm: freed blocks are kept and reused by size class; peak bytes are tracked for the log).
//
// DeviceArray<T> is an owning, move-only array taken from a DeviceContext's allocator.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "kernels/gemm/gemm_cuda.h"

namespace frugal::cuda {

class CachingAllocator {
 public:
  CachingAllocator();
  ~CachingAllocator();  // returns every cached block to CUDA
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Stream-ordered on the context's single compute stream: a released block may be handed out
  // again at once, because every user of it runs on that stream. 256-byte aligned.
  void* allocate(size_t bytes);
  void release(void* pointer);

  size_t bytes_in_use() const;
  size_t peak_bytes_in_use() const;     // since the last reset_peak()
  size_t bytes_reserved() const;        // in use + cached
  int64_t cuda_malloc_calls() const;    // how often the pool had to grow
  void reset_peak();
  void empty_cache();                   // frees every cached (unused) block

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct DeviceContext {
  explicit DeviceContext(int device = 0);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int device = 0;
  int compute_capability = 0;  // e.g. 90 for sm_90
  cudaStream_t stream = nullptr;
  BlasHandle blas;
  CachingAllocator allocator;

  void synchronize();
};

template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(DeviceContext& ctx, int64_t count)
      : allocator_(&ctx.allocator), count_(count) {
    if (count_ > 0) data_ = static_cast<T*>(allocator_->allocate(bytes()));
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept
      : allocator_(std::exchange(o.allocator_, nullptr)),
        data_(std::exchange(o.data_, nullptr)),
        count_(std::exchange(o.count_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      reset();
      allocator_ = std::exchange(o.allocator_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
    }
    return *this;
  }
  ~DeviceArray() { reset(); }
  void reset() {
    if (data_ != nullptr) allocator_->release(data_);
    data_ = nullptr;
    count_ = 0;
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return count_; }
  size_t bytes() const { return static_cast<size_t>(count_) * sizeof(T); }

 private:
  CachingAllocator* allocator_ = nullptr;
  T* data_ = nullptr;
  int64_t count_ = 0;
};

}  // namespace frugal::cuda
