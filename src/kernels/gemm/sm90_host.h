// Host helpers shared by the Hopper grouped GEMM kernels (grouped_gemm_sm90.cu,
// grouped_gemm_fp8_sm90.cu): TMA tensor maps of row-major 2-D tensors (the driver's
// cuTensorMapEncodeTiled, reached through the runtime, so nothing links libcuda), and per-device
// facts cached by device ordinal (whether it is sm_90, its SM count, whether a kernel's dynamic
// shared memory limit was raised there), so one process may drive several GPUs.
// Only for builds with the CUDA backend.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>

namespace frugal::cuda::sm90_host {

constexpr int kMaxDevices = 64;  // device ordinals the caches cover

// A row-major [outer, inner] tensor of `element_bytes`-byte elements read in boxes of
// [box_outer, box_inner] with the 128-byte swizzle; reads past the tensor give zeros. `who` names
// the caller in errors.
CUtensorMap make_tensor_map(CUtensorMapDataType type, int element_bytes, const void* base,
                            int64_t inner, int64_t outer, int box_inner, int box_outer,
                            const char* who);

// The current device's ordinal (an error past kMaxDevices), and its SM count.
int current_device(const char* who);
int sm_count(int device);
// Whether the current device is sm_90 (false when there is none).
bool current_device_is_sm90();

// Calls `raise(device)` the first time `device` is seen (threads racing on a first call may both
// call it; it must be idempotent, like cudaFuncSetAttribute).
class OncePerDevice {
 public:
  template <class Raise>
  void operator()(int device, Raise raise) {
    if (done_[device].load(std::memory_order_acquire)) return;
    raise(device);
    done_[device].store(true, std::memory_order_release);
  }

 private:
  std::atomic<bool> done_[kMaxDevices] = {};
};

inline bool aligned16(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
}

}  // namespace frugal::cuda::sm90_host
