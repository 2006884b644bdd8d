// The throwing halves of core/cuda_check.h (kept out of the header so that .cu files need no fmt).
#ifdef FRUGAL_HAVE_CUDA

#include "core/cuda_check.h"

#include "core/error.h"

namespace frugal::cuda {

void throw_cuda_error(cudaError_t status, const char* expression, const char* file, int line) {
  // Reset the thread's last-error slot (non-sticky errors only), so that a caller who catches this
  // does not see the same error again at the next FRUGAL_CUDA_CHECK_LAUNCH.
  cudaGetLastError();
  fail("{}:{}: {} failed: {} ({})", file, line, expression, cudaGetErrorString(status),
       cudaGetErrorName(status));
}

void throw_requirement(const char* message, const char* condition, const char* file, int line) {
  fail("{}:{}: {} (requires {})", file, line, message, condition);
}

void throw_copy_too_large(size_t requested, size_t capacity) {
  fail("DeviceBuffer: a copy of {} elements does not fit a buffer of {}", requested, capacity);
}

}  // namespace frugal::cuda

#endif  // FRUGAL_HAVE_CUDA
