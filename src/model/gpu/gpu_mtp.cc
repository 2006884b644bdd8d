// GpuMtp (see gpu_mtp.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_mtp.h"

#include <memory>
#include <type_traits>

#include "core/error.h"
#include "kernels/cast/cast_cuda.h"

namespace frugal::gpu {

template <class T>
GpuMtp<T>::GpuMtp(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg,
                  int64_t layer_index, Recipe recipe)
    : hidden_(cfg.hidden_size),
      enorm_(registry, prefix + ".enorm", cfg.hidden_size, cfg.rms_norm_eps),
      hnorm_(registry, prefix + ".hnorm", cfg.hidden_size, cfg.rms_norm_eps),
      eh_proj_(registry, 2 * cfg.hidden_size, cfg.hidden_size, dense_precision(recipe)) {
  // Registration in the CPU order: enorm, hnorm, eh_proj, the block, shared_head.norm.
  eh_proj_.register_as(registry, prefix + ".eh_proj.weight");
  block_ = std::make_unique<GpuBlock<T>>(registry, prefix, cfg, layer_index, recipe);
  head_norm_ = GpuRMSNorm<float, T>(registry, prefix + ".shared_head.norm", cfg.hidden_size,
                                    cfg.rms_norm_eps);
}

template <class T>
void GpuMtp<T>::refresh(cuda::DeviceContext& ctx) {
  eh_proj_.refresh(ctx);
  block_->refresh(ctx);
}

template <class T>
void GpuMtp<T>::forward(cuda::DeviceContext& ctx, Ctx& c, const float* emb, const float* h_prev,
                        float* h_out, T* normed, int64_t batch, int64_t seq, const RopeInputs& rope,
                        double balance_alpha, bool count_load, double* balance_loss) {
  const int64_t rows = batch * seq, d = hidden_;
  c = Ctx{};
  c.rows = rows;
  c.cat = cuda::DeviceArray<T>(ctx, rows * 2 * d);  // [rows, 2*hidden] = [enorm(emb) ; hnorm(h)]
  {
    cuda::DeviceArray<T> e(ctx, rows * d), h(ctx, rows * d);
    enorm_.forward(ctx, c.enorm, emb, e.data(), rows);
    hnorm_.forward(ctx, c.hnorm, h_prev, h.data(), rows);
    cuda::copy_2d<T>(c.cat.data(), 2 * d, e.data(), d, rows, d, ctx.stream);
    cuda::copy_2d<T>(c.cat.data() + d, 2 * d, h.data(), d, rows, d, ctx.stream);
  }
  c.proj = cuda::DeviceArray<float>(ctx, rows * d);  // [rows, hidden]
  if constexpr (std::is_same_v<T, float>) {
    eh_proj_.forward(ctx, c.eh_proj, c.cat.data(), c.proj.data(), rows);
  } else {
    cuda::DeviceArray<T> proj(ctx, rows * d);
    eh_proj_.forward(ctx, c.eh_proj, c.cat.data(), proj.data(), rows);
    cuda::cast<T, float>(c.proj.data(), proj.data(), rows * d, ctx.stream);
  }
  if (!eh_proj_.keeps_input_pointer()) c.cat.reset();
  block_->forward(ctx, c.block, c.proj.data(), h_out, batch, seq, rope, balance_alpha, count_load,
                  balance_loss);
  head_norm_.forward(ctx, c.head_norm, h_out, normed, rows);
}

template <class T>
void GpuMtp<T>::backward(cuda::DeviceContext& ctx, Ctx& c, const float* dh_out, const T* dnormed,
                         float* demb, float* dh_prev, double dbalance,
                         WeightGradQueue* deferred) const {
  const int64_t rows = c.rows, d = hidden_;
  cuda::DeviceArray<float> dh(ctx, rows * d);  // [rows, hidden] gradient of h_out
  if (dh_out != nullptr)  // dh = dh_out + d(head norm input): one pass
    head_norm_.backward_add(ctx, c.head_norm, dnormed, dh_out, dh.data(), nullptr);
  else
    head_norm_.backward(ctx, c.head_norm, dnormed, dh.data());
  cuda::DeviceArray<float> dproj(ctx, rows * d);
  block_->backward(ctx, c.block, dh.data(), dproj.data(), dbalance, deferred);
  dh.reset();
  c.proj.reset();
  cuda::DeviceArray<T> dcat(ctx, rows * 2 * d);  // [rows, 2*hidden]
  {
    AsType<T> dproj_t(ctx, dproj.data(), rows * d);
    eh_proj_.backward(ctx, c.eh_proj, dproj_t.get(), dcat.data(), false, deferred);
  }
  c.cat.reset();
  cuda::DeviceArray<T> de(ctx, rows * d), dhn(ctx, rows * d);
  cuda::copy_2d<T>(de.data(), d, dcat.data(), 2 * d, rows, d, ctx.stream);
  cuda::copy_2d<T>(dhn.data(), d, dcat.data() + d, 2 * d, rows, d, ctx.stream);
  enorm_.backward(ctx, c.enorm, de.data(), demb);
  hnorm_.backward(ctx, c.hnorm, dhn.data(), dh_prev);
  c = Ctx{};
}

template class GpuMtp<float>;
template class GpuMtp<bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
