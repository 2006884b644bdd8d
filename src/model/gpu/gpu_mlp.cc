// GpuMlp (see gpu_mlp.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_mlp.h"

#include <type_traits>

#include "core/error.h"
#include "kernels/quant/quant.h"
#include "kernels/swiglu/swiglu.h"

namespace frugal::gpu {

template <class T>
GpuMlp<T>::GpuMlp(ParamRegistry& registry, const std::string& prefix, int64_t hidden, int64_t inter,
                  Recipe recipe)
    : hidden_(hidden),
      inter_(inter),
      gate_up_(registry, hidden, 2 * inter, block_linear_precision(recipe, hidden, 2 * inter)),
      down_(registry, inter, hidden, block_linear_precision(recipe, inter, hidden)) {
  FRUGAL_CHECK(hidden > 0 && inter > 0, "{}: bad MLP sizes hidden {} intermediate {}", prefix,
               hidden, inter);
  GpuWeight& gu = gate_up_.weight();
  registry.add(prefix + ".gate_proj.weight", {inter, hidden}, ParamKind::Matrix, gu.value(),
               gu.grad());
  registry.add(prefix + ".up_proj.weight", {inter, hidden}, ParamKind::Matrix,
               gu.value() + inter * hidden, gu.grad() + inter * hidden);
  down_.register_as(registry, prefix + ".down_proj.weight");
}

template <class T>
void GpuMlp<T>::refresh(cuda::DeviceContext& ctx) {
  gate_up_.refresh(ctx);
  down_.refresh(ctx);
}

template <class T>
void GpuMlp<T>::forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t rows) const {
  c = Ctx{};
  c.rows = rows;
  if (rows == 0) return;
  const int64_t width = 2 * inter_;
  cuda::DeviceArray<T> gu(ctx, rows * width);  // [rows, 2*inter]
  gate_up_.forward(ctx, c.gate_up, x, gu.data(), rows);
  cuda::DeviceArray<T> h(ctx, rows * inter_);  // [rows, inter]
  cuda::swiglu_fwd<T>(h.data(), gu.data(), gu.data() + inter_, rows, inter_, width, ctx.stream);
  down_.forward(ctx, c.down, h.data(), y, rows);  // [rows, hidden]
  if (gate_up_.weight().precision() == GemmPrecision::Fp8) {
    if constexpr (std::is_same_v<T, bf16>) {  // fp8 weights only meet bf16 activations
      c.gu_q = cuda::DeviceArray<uint8_t>(ctx, rows * width);
      c.gu_scales = cuda::DeviceArray<float>(ctx, fp8_block_count(width) * rows);
      cuda::quantize_act_1x128<T>(c.gu_q.data(), c.gu_scales.data(), gu.data(), rows, width,
                                  kFp8PowerOfTwoScales, ctx.stream);
    }
  } else {
    c.gu = std::move(gu);
  }
  if (down_.keeps_input_pointer()) c.h = std::move(h);
}

template <class T>
void GpuMlp<T>::backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx,
                         bool accumulate_dx, WeightGradQueue* deferred) const {
  const int64_t rows = c.rows, width = 2 * inter_;
  if (rows == 0) {
    c = Ctx{};
    return;
  }
  cuda::DeviceArray<T> dh(ctx, rows * inter_);  // [rows, inter]
  down_.backward(ctx, c.down, dy, dh.data(), false, deferred);
  c.h.reset();
  cuda::DeviceArray<T> gu_dequantized;
  const T* gu = c.gu.data();
  if (gu == nullptr) {  // fp8: expand the FP8 cache of the SwiGLU input
    FRUGAL_CHECK(c.gu_q.data() != nullptr, "GpuMlp::backward without a forward");
    if constexpr (std::is_same_v<T, bf16>) {
      gu_dequantized = cuda::DeviceArray<T>(ctx, rows * width);
      cuda::dequantize_act_1x128<T>(gu_dequantized.data(), c.gu_q.data(), c.gu_scales.data(), rows,
                                    width, ctx.stream);
      gu = gu_dequantized.data();
    }
    FRUGAL_CHECK(gu != nullptr, "GpuMlp::backward: no saved SwiGLU input");
  }
  cuda::DeviceArray<T> dgu(ctx, rows * width);  // [rows, 2*inter] = [dg | du]
  cuda::swiglu_bwd<T>(dgu.data(), dgu.data() + inter_, dh.data(), gu, gu + inter_, rows, inter_,
                      width, ctx.stream);
  gate_up_.backward(ctx, c.gate_up, dgu.data(), dx, accumulate_dx, deferred);  // [rows, hidden]
  c = Ctx{};
}

template class GpuMlp<float>;
template class GpuMlp<bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
