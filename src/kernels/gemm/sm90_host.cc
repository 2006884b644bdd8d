// Host helpers of the Hopper grouped GEMM kernels (see sm90_host.h).
#ifdef FRUGAL_HAVE_CUDA

#include "kernels/gemm/sm90_host.h"

#include <cudaTypedefs.h>

#include <cstring>

#include "core/cuda_check.h"
#include "core/error.h"

namespace frugal::cuda::sm90_host {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FRUGAL_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000,
                                                       cudaEnableDefault, &found));
    FRUGAL_CHECK(found == cudaDriverEntryPointSuccess && function != nullptr,
                 "the CUDA driver has no cuTensorMapEncodeTiled (the Hopper GEMM kernels need "
                 "it)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function);
  }();
  return encode;
}

}  // namespace

CUtensorMap make_tensor_map(CUtensorMapDataType type, int element_bytes, const void* base,
                            int64_t inner, int64_t outer, int box_inner, int box_outer,
                            const char* who) {
  CUtensorMap map;
  std::memset(&map, 0, sizeof map);
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(inner) * element_bytes};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_inner),
                             static_cast<cuuint32_t>(box_outer)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult result = tensor_map_encoder()(
      &map, type, 2, const_cast<void*>(base), dims, strides, box, element_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  FRUGAL_CHECK(result == CUDA_SUCCESS,
               "{}: cuTensorMapEncodeTiled failed ({}) for a [{}, {}] tensor in [{}, {}] boxes",
               who, static_cast<int>(result), outer, inner, box_outer, box_inner);
  return map;
}

int current_device(const char* who) {
  int device = 0;
  FRUGAL_CUDA_CHECK(cudaGetDevice(&device));
  FRUGAL_CHECK(device >= 0 && device < kMaxDevices, "{}: device ordinal {} (at most {} devices)",
               who, device, kMaxDevices);
  return device;
}

int sm_count(int device) {
  static std::atomic<int> counts[kMaxDevices];  // 0: not yet queried
  int count = counts[device].load(std::memory_order_relaxed);
  if (count == 0) {
    FRUGAL_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    counts[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

bool current_device_is_sm90() {
  static std::atomic<int> sm90_by_device[kMaxDevices];  // 0: unknown, 1: sm_90, 2: other
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return false;
  int known = sm90_by_device[device].load(std::memory_order_relaxed);
  if (known == 0) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
      return false;
    known = major == 9 && minor == 0 ? 1 : 2;
    sm90_by_device[device].store(known, std::memory_order_relaxed);
  }
  return known == 1;
}

}  // namespace frugal::cuda::sm90_host

#endif  // FRUGAL_HAVE_CUDA
