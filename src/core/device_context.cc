// DeviceContext and its CachingAllocator (see device_context.h).
//
// The allocator keeps one free list per size class. A request is rounded up to its class: a
// multiple of 256 bytes up to 4 KiB, then 8 classes per power of two (at most 12.5% waste). A
// released block goes back to its class's list and is handed out again to the next request of
// that class, so a training step that repeats the shapes of the previous one makes no cudaMalloc.
// When cudaMalloc fails for lack of memory the cached blocks are freed and the call is retried
// once before the error is raised.
#ifdef FRUGAL_HAVE_CUDA

#include "core/device_context.h"

#include <algorithm>
#include <bit>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"

namespace frugal::cuda {
namespace {

constexpr size_t kAlignment = 256;
constexpr size_t kSmallLimit = 4096;

size_t round_up(size_t value, size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// The class (block size in bytes) that serves a request of `bytes`.
size_t size_class(size_t bytes) {
  if (bytes <= kSmallLimit) return round_up(std::max<size_t>(bytes, 1), kAlignment);
  const int log2 = std::bit_width(bytes) - 1;   // floor(log2(bytes)) >= 12
  const size_t step = size_t{1} << (log2 - 3);  // 8 classes per power of two, >= 512 bytes
  return round_up(bytes, step);
}

}  // namespace

struct CachingAllocator::Impl {
  mutable std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_lists;  // class bytes -> cached blocks
  std::unordered_map<void*, size_t> in_use;                   // block -> class bytes
  size_t bytes_in_use = 0;
  size_t bytes_cached = 0;
  size_t peak = 0;
  int64_t malloc_calls = 0;

  // Frees every cached block (caller holds the mutex).
  void free_cached() {
    if (bytes_cached == 0) return;
    // A block released on the stream may still be read by queued kernels: wait for them.
    cudaDeviceSynchronize();
    for (auto& [bytes, blocks] : free_lists)
      for (void* block : blocks) cudaFree(block);
    free_lists.clear();
    bytes_cached = 0;
  }
};

CachingAllocator::CachingAllocator() : impl_(std::make_unique<Impl>()) {}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->free_cached();
  // Blocks still handed out belong to arrays that outlive the allocator (a caller bug); their
  // memory is returned too, so the process does not leak it.
  for (auto& [block, bytes] : impl_->in_use) cudaFree(block);
  impl_->in_use.clear();
}

void* CachingAllocator::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t block_bytes = size_class(bytes);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  void* block = nullptr;
  auto it = impl_->free_lists.find(block_bytes);
  if (it != impl_->free_lists.end() && !it->second.empty()) {
    block = it->second.back();
    it->second.pop_back();
    impl_->bytes_cached -= block_bytes;
  } else {
    cudaError_t status = cudaMalloc(&block, block_bytes);
    if (status == cudaErrorMemoryAllocation && impl_->bytes_cached > 0) {
      cudaGetLastError();  // clear the error before retrying with the cache returned to CUDA
      impl_->free_cached();
      status = cudaMalloc(&block, block_bytes);
    }
    if (status != cudaSuccess) {
      cudaGetLastError();
      fail(
          "CachingAllocator: cudaMalloc of {} bytes (request {}) failed: {} ({}); {} bytes in "
          "use, {} cached, peak {}",
          block_bytes, bytes, cudaGetErrorString(status), cudaGetErrorName(status),
          impl_->bytes_in_use, impl_->bytes_cached, impl_->peak);
    }
    ++impl_->malloc_calls;
  }
  impl_->in_use.emplace(block, block_bytes);
  impl_->bytes_in_use += block_bytes;
  impl_->peak = std::max(impl_->peak, impl_->bytes_in_use);
  return block;
}

void CachingAllocator::release(void* pointer) {
  if (pointer == nullptr) return;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto it = impl_->in_use.find(pointer);
  FRUGAL_CHECK(it != impl_->in_use.end(),
               "CachingAllocator: release of {} which this allocator did not hand out (or "
               "released twice)",
               pointer);
  const size_t block_bytes = it->second;
  impl_->in_use.erase(it);
  impl_->bytes_in_use -= block_bytes;
  impl_->free_lists[block_bytes].push_back(pointer);
  impl_->bytes_cached += block_bytes;
}

size_t CachingAllocator::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->bytes_in_use;
}

size_t CachingAllocator::peak_bytes_in_use() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->peak;
}

size_t CachingAllocator::bytes_reserved() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->bytes_in_use + impl_->bytes_cached;
}

int64_t CachingAllocator::cuda_malloc_calls() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->malloc_calls;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->peak = impl_->bytes_in_use;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->free_cached();
}

namespace {

// Makes `device` current before any member (the cuBLASLt handle) touches CUDA.
int activate_device(int device) {
  int count = 0;
  FRUGAL_CUDA_CHECK(cudaGetDeviceCount(&count));
  FRUGAL_CHECK(device >= 0 && device < count, "DeviceContext: device {} does not exist ({} found)",
               device, count);
  FRUGAL_CUDA_CHECK(cudaSetDevice(device));
  return device;
}

}  // namespace

DeviceContext::DeviceContext(int device_index) : device(activate_device(device_index)) {
  int major = 0, minor = 0;
  FRUGAL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FRUGAL_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  compute_capability = major * 10 + minor;
  FRUGAL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
}

DeviceContext::~DeviceContext() {
  if (stream != nullptr) {
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
}

void DeviceContext::synchronize() {
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace frugal::cuda

#endif  // FRUGAL_HAVE_CUDA
