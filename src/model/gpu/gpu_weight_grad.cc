// WeightGradQueue (see gpu_weight_grad.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_weight_grad.h"

#include <cuda_bf16.h>

#include "core/cuda_check.h"

namespace frugal::gpu {

int64_t WeightGradQueue::run(cuda::DeviceContext& ctx) {
  const int64_t count = size();
  for (auto& item : items_) {
    item->run(ctx);
    item.reset();  // its operands go back to the allocator, stream-ordered after the GEMM
  }
  items_.clear();
  bytes_held_ = 0;
  return count;
}

template <class E>
cuda::DeviceArray<E> device_copy(cuda::DeviceContext& ctx, const E* src, int64_t n) {
  cuda::DeviceArray<E> out(ctx, n);
  if (n > 0)
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(out.data(), src, out.bytes(), cudaMemcpyDeviceToDevice,
                                      ctx.stream));
  return out;
}

template cuda::DeviceArray<float> device_copy<float>(cuda::DeviceContext&, const float*, int64_t);
template cuda::DeviceArray<__nv_bfloat16> device_copy<__nv_bfloat16>(cuda::DeviceContext&,
                                                                      const __nv_bfloat16*,
                                                                      int64_t);
template cuda::DeviceArray<int64_t> device_copy<int64_t>(cuda::DeviceContext&, const int64_t*,
                                                         int64_t);

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
