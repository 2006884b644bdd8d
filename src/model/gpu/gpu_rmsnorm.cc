// GpuRMSNorm (see gpu_rmsnorm.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_rmsnorm.h"

#include "core/error.h"
#include "kernels/rmsnorm/rmsnorm.h"
#include "model/gpu/gpu_model_kernels.h"

namespace frugal::gpu {

template <class TX, class TY>
GpuRMSNorm<TX, TY>::GpuRMSNorm(ParamRegistry& registry, const std::string& name, int64_t dim,
                               double eps)
    : dim_(dim), eps_(eps) {
  FRUGAL_CHECK(dim > 0, "{}: RMSNorm dimension must be positive, got {}", name, dim);
  storage_ = registry.allocate(dim, /*trainable=*/true);
  cuda::fill(storage_.value, 1.0f, dim, registry.context().stream);
  registry.add(name + ".weight", {dim}, ParamKind::Norm, storage_.value, storage_.grad);
}

template <class TX, class TY>
void GpuRMSNorm<TX, TY>::forward(cuda::DeviceContext& ctx, Ctx& c, const TX* x, TY* y,
                                 int64_t rows) const {
  c = Ctx{};
  c.x = x;
  c.rows = rows;
  if (rows == 0) return;
  c.rstd = cuda::DeviceArray<float>(ctx, rows);
  cuda::rmsnorm_fwd<TX, TY>(y, c.rstd.data(), x, storage_.value, rows, dim_, eps_, ctx.stream);
}

template <class TX, class TY>
void GpuRMSNorm<TX, TY>::forward_residual(cuda::DeviceContext& ctx, Ctx& c, const float* x,
                                          const TY* branch, float* h, TY* y, int64_t rows) const
  requires std::is_same_v<TX, float>
{
  c = Ctx{};
  c.x = h;
  c.rows = rows;
  if (rows == 0) return;
  c.rstd = cuda::DeviceArray<float>(ctx, rows);
  cuda::residual_rmsnorm_fwd<TY>(h, y, c.rstd.data(), x, branch, storage_.value, rows, dim_, eps_,
                                 ctx.stream);
}

template <class TX, class TY>
void GpuRMSNorm<TX, TY>::backward_add(cuda::DeviceContext& ctx, Ctx& c, const TY* dy,
                                      const float* skip, float* dx, TY* dx_t) const
  requires std::is_same_v<TX, float>
{
  const int64_t rows = c.rows;
  if (rows > 0) {
    FRUGAL_CHECK(c.x != nullptr && c.rstd.data() != nullptr,
                 "GpuRMSNorm::backward_add without a forward");
    cuda::rmsnorm_bwd_input_add<TY>(dx, dx_t, dy, c.x, storage_.value, c.rstd.data(), skip, rows,
                                    dim_, ctx.stream);
    weight_backward(ctx, c, dy);
  }
  c = Ctx{};
}

template <class TX, class TY>
void GpuRMSNorm<TX, TY>::weight_backward(cuda::DeviceContext& ctx, const Ctx& c,
                                         const TY* dy) const {
  cuda::DeviceArray<float> workspace(ctx, cuda::rmsnorm_bwd_weight_workspace_floats(c.rows, dim_));
  cuda::rmsnorm_bwd_weight<TX, TY>(storage_.grad, dy, c.x, c.rstd.data(), c.rows, dim_,
                                   workspace.data(), ctx.stream);
}

template <class TX, class TY>
void GpuRMSNorm<TX, TY>::backward(cuda::DeviceContext& ctx, Ctx& c, const TY* dy, TX* dx) const {
  const int64_t rows = c.rows;
  if (rows > 0) {
    FRUGAL_CHECK(c.x != nullptr && c.rstd.data() != nullptr,
                 "GpuRMSNorm::backward without a forward");
    cuda::rmsnorm_bwd_input<TX, TY>(dx, dy, c.x, storage_.value, c.rstd.data(), rows, dim_,
                                    ctx.stream);
    weight_backward(ctx, c, dy);
  }
  c = Ctx{};
}

template class GpuRMSNorm<float, float>;
template class GpuRMSNorm<float, bf16>;
template class GpuRMSNorm<bf16, bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
