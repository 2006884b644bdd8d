// CUDA error handling and a minimal owning device buffer.
//
//   FRUGAL_CUDA_CHECK(cudaMemcpy(...));   // throws frugal::Error "file:line: cudaMemcpy(...): <reason>"
//   kernel<<<grid, block, 0, stream>>>(...);
//   FRUGAL_CUDA_CHECK_LAUNCH();           // after every launch: bad configuration, missing image
//   FRUGAL_CUDA_REQUIRE(n >= 0, "rmsnorm: negative row count");   // launcher argument checks
//
// A launch check sees launch errors only; faults inside a kernel surface at the next synchronizing
// call (cudaStreamSynchronize, a blocking copy), which is checked the same way.
//
// DeviceBuffer<T> owns `count` elements of device memory (cudaMalloc / cudaFree), moves but does
// not copy, and copies to and from host memory synchronously. It is for tests, benchmarks and
// set-up; the training step takes its memory from the allocator instead.
//
// Only for builds with the CUDA backend (FRUGAL_HAVE_CUDA); include it from .cu files and from
// CUDA-only sources.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace frugal::cuda {

// Throws frugal::Error naming the place, the failed expression and CUDA's description of `status`.
[[noreturn]] void throw_cuda_error(cudaError_t status, const char* expression, const char* file,
                                   int line);
// Throws frugal::Error "file:line: message (requires condition)"; see FRUGAL_CUDA_REQUIRE.
[[noreturn]] void throw_requirement(const char* message, const char* condition, const char* file,
                                    int line);
// Throws frugal::Error for a host copy of `requested` elements into or out of a buffer of `capacity`.
[[noreturn]] void throw_copy_too_large(size_t requested, size_t capacity);

inline void check_cuda(cudaError_t status, const char* expression, const char* file, int line) {
  if (status != cudaSuccess) throw_cuda_error(status, expression, file, line);
}

// Check the kernel launched just before on this thread. cudaGetLastError also resets a launch
// error, so the next check does not report the same one again.
inline void check_launch(const char* file, int line) {
  check_cuda(cudaGetLastError(), "kernel launch", file, line);
}

}  // namespace frugal::cuda

#define FRUGAL_CUDA_CHECK(expression) \
  ::frugal::cuda::check_cuda((expression), #expression, __FILE__, __LINE__)
#define FRUGAL_CUDA_CHECK_LAUNCH() ::frugal::cuda::check_launch(__FILE__, __LINE__)
// Argument checks in .cu launchers, which cannot use FRUGAL_CHECK: nvcc rejects fmt's compile-time
// format strings. The message is a plain string; the failed condition is appended to it.
#define FRUGAL_CUDA_REQUIRE(condition, message)                                          \
  do {                                                                                   \
    if (!(condition)) ::frugal::cuda::throw_requirement(message, #condition, __FILE__, __LINE__); \
  } while (0)

namespace frugal::cuda {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count_ > 0) FRUGAL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), bytes()));
  }
  // Allocates host.size() elements and uploads them.
  explicit DeviceBuffer(std::span<const T> host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  // Copy host.size() elements (at most size()) from the host to the start of the buffer.
  void upload(std::span<const T> host) {
    check_count(host.size());
    if (!host.empty())
      FRUGAL_CUDA_CHECK(cudaMemcpy(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
  }
  // Copy host.size() elements (at most size()) from the start of the buffer to the host.
  void download(std::span<T> host) const {
    check_count(host.size());
    if (!host.empty())
      FRUGAL_CUDA_CHECK(cudaMemcpy(host.data(), data_, host.size_bytes(), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> host(count_);
    download(host);
    return host;
  }
  // The whole buffer as `pattern` repeated, the last copy cut short (benchmark inputs).
  void fill_repeating(std::span<const T> pattern) {
    for (size_t done = 0; done < count_ && !pattern.empty();) {
      const size_t count = std::min(pattern.size(), count_ - done);
      FRUGAL_CUDA_CHECK(cudaMemcpy(data_ + done, pattern.data(), count * sizeof(T),
                                   cudaMemcpyHostToDevice));
      done += count;
    }
  }
  // Set every byte to `byte` (poisoning outputs in tests: 0xFF makes every float a NaN).
  void fill_bytes(uint8_t byte) {
    if (count_ > 0) FRUGAL_CUDA_CHECK(cudaMemset(data_, byte, bytes()));
  }

 private:
  void check_count(size_t count) const {
    if (count > count_) throw_copy_too_large(count, count_);
  }
  // Destructors do not throw: a failing cudaFree here means the context is already broken, and the
  // call that broke it has reported that.
  void release() noexcept {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    count_ = 0;
  }

  T* data_ = nullptr;
  size_t count_ = 0;
};

}  // namespace frugal::cuda
