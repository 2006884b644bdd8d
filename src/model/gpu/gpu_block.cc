// GpuBlock (see gpu_block.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_block.h"

#include <type_traits>

#include "core/error.h"
#include "core/gpu_profiler.h"
#include "kernels/cast/cast_cuda.h"
#include "model/gpu/gpu_model_kernels.h"

namespace frugal::gpu {

template <class T>
GpuBlock<T>::GpuBlock(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg,
                      int64_t layer_index, Recipe recipe)
    : hidden_(cfg.hidden_size),
      attn_norm_(registry, prefix + ".input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
      ffn_norm_(registry, prefix + ".post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps) {
  attn_ = std::make_unique<GpuMla<T>>(registry, prefix + ".self_attn", cfg, recipe);
  if (cfg.is_moe_layer(layer_index))
    moe_ = std::make_unique<GpuMoe<T>>(registry, prefix + ".mlp", cfg, recipe);
  else
    mlp_ = std::make_unique<GpuMlp<T>>(registry, prefix + ".mlp", cfg.hidden_size,
                                       cfg.intermediate_size, recipe);
}

template <class T>
void GpuBlock<T>::refresh(cuda::DeviceContext& ctx) {
  attn_->refresh(ctx);
  if (moe_)
    moe_->refresh(ctx);
  else
    mlp_->refresh(ctx);
}

template <class T>
void GpuBlock<T>::forward(cuda::DeviceContext& ctx, Ctx& c, const float* x, float* y, int64_t batch,
                          int64_t seq, const RopeInputs& rope, double balance_alpha,
                          bool count_load, double* balance_loss) {
  const int64_t rows = batch * seq, n = rows * hidden_;
  c = Ctx{};
  c.rows = rows;
  FRUGAL_CHECK(moe_ == nullptr || balance_loss != nullptr,
               "GpuBlock::forward: an MoE layer needs a balance-loss slot");
  c.attn_in = cuda::DeviceArray<T>(ctx, n);  // [rows, hidden]
  {
    cuda::ScopedSection section(ctx.stream, "norm.fwd");
    attn_norm_.forward(ctx, c.attn_norm, x, c.attn_in.data(), rows);
  }
  cuda::DeviceArray<T> branch(ctx, n);  // [rows, hidden]
  {
    cuda::ScopedSection section(ctx.stream, "attn.fwd");
    attn_->forward(ctx, c.attn, c.attn_in.data(), branch.data(), batch, seq, rope);
  }
  if (!attn_->keeps_input_pointer()) c.attn_in.reset();
  c.h = cuda::DeviceArray<float>(ctx, n);
  c.ffn_in = cuda::DeviceArray<T>(ctx, n);
  {
    cuda::ScopedSection section(ctx.stream, "norm.fwd");
    // h = x + attention, ffn_in = post_attention_layernorm(h): one pass.
    ffn_norm_.forward_residual(ctx, c.ffn_norm, x, branch.data(), c.h.data(), c.ffn_in.data(),
                               rows);
  }
  if (moe_) {
    cuda::ScopedSection section(ctx.stream, "moe.fwd");
    moe_->forward(ctx, c.moe, c.ffn_in.data(), branch.data(), batch, seq, balance_alpha, count_load,
                  balance_loss);
  } else {
    {
      cuda::ScopedSection section(ctx.stream, "mlp.fwd");
      mlp_->forward(ctx, c.mlp, c.ffn_in.data(), branch.data(), rows);
    }
    if (!mlp_->keeps_input_pointer()) c.ffn_in.reset();
  }
  cuda::residual_add<T>(y, c.h.data(), branch.data(), n, ctx.stream);  // y = h + ffn
}

template <class T>
void GpuBlock<T>::backward(cuda::DeviceContext& ctx, Ctx& c, const float* dy, float* dx,
                           double dbalance, WeightGradQueue* deferred, const T* dy_t,
                           T* dx_t) const {
  const int64_t rows = c.rows, n = rows * hidden_;
  FRUGAL_CHECK(dx != dy, "GpuBlock::backward: dx must not alias dy");
  cuda::DeviceArray<float> dh(ctx, n);  // [rows, hidden] gradient of h
  cuda::DeviceArray<T> dh_copy;         // [rows, hidden] dh rounded to T (bf16 only)
  {
    cuda::DeviceArray<T> dy_copy;  // [rows, hidden] dy rounded to T, when the caller has none
    const T* dy_branch = nullptr;  // dy as T: an alias under fp32
    if constexpr (std::is_same_v<T, float>) {
      dy_branch = dy;
    } else if (dy_t != nullptr) {
      dy_branch = dy_t;
    } else {
      dy_copy = cuda::DeviceArray<T>(ctx, n);
      cuda::cast<float, T>(dy_copy.data(), dy, n, ctx.stream);
      dy_branch = dy_copy.data();
    }
    cuda::DeviceArray<T> d_ffn_in(ctx, n);
    if (moe_) {
      cuda::ScopedSection section(ctx.stream, "moe.bwd");
      moe_->backward(ctx, c.moe, dy_branch, d_ffn_in.data(), dbalance, deferred);
    } else {
      cuda::ScopedSection section(ctx.stream, "mlp.bwd");
      mlp_->backward(ctx, c.mlp, dy_branch, d_ffn_in.data(), false, deferred);
    }
    c.ffn_in.reset();
    cuda::ScopedSection section(ctx.stream, "norm.bwd");
    // dh = dy + d(ffn branch), and its T copy for the attention's backward: one pass.
    if constexpr (!std::is_same_v<T, float>) dh_copy = cuda::DeviceArray<T>(ctx, n);
    ffn_norm_.backward_add(ctx, c.ffn_norm, d_ffn_in.data(), dy, dh.data(), dh_copy.data());
  }
  c.h.reset();
  {
    const T* dh_t = nullptr;  // dh as T: an alias under fp32
    if constexpr (std::is_same_v<T, float>)
      dh_t = dh.data();
    else
      dh_t = dh_copy.data();
    cuda::DeviceArray<T> d_attn_in(ctx, n);
    {
      cuda::ScopedSection section(ctx.stream, "attn.bwd");
      attn_->backward(ctx, c.attn, dh_t, d_attn_in.data(), deferred);
    }
    dh_copy.reset();
    c.attn_in.reset();
    cuda::ScopedSection section(ctx.stream, "norm.bwd");
    // dx = dh + d(attention branch) (and its T copy when asked for).
    attn_norm_.backward_add(ctx, c.attn_norm, d_attn_in.data(), dh.data(), dx, dx_t);
  }
  c = Ctx{};
}

template class GpuBlock<float>;
template class GpuBlock<bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
