// GpuGroupedLinear (see gpu_grouped_linear.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_grouped_linear.h"

#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/gemm/grouped_gemm_fp8_sm90.h"
#include "kernels/gemm/grouped_gemm_sm90.h"
#include "kernels/quant/quant.h"

namespace frugal::gpu {

namespace {

// Whether the FP8 grouped GEMMs of an [n, k] weight run as the sm_90 kernels
// (grouped_gemm_fp8_sm90.h) rather than the cuBLASLt calls.
bool fp8_on_sm90(int64_t n, int64_t k) {
  return cuda::grouped_gemm_fp8_sm90_enabled() && cuda::grouped_gemm_fp8_sm90_supported(n, k);
}

// The row offsets a deferred Wgrad reads (the MoE context that owns them is freed during B).
struct DeferredOffsets {
  DeferredOffsets(cuda::DeviceContext& ctx, const GroupOffsets& offsets)
      : device(device_copy<int64_t>(ctx, offsets.device, offsets.groups + 1)),
        groups(offsets.groups),
        rows(offsets.rows) {
    if (offsets.host != nullptr) host.assign(offsets.host, offsets.host + offsets.groups + 1);
  }
  GroupOffsets view() const {
    return {host.empty() ? nullptr : host.data(), device.data(), groups, rows};
  }
  cuda::DeviceArray<int64_t> device;  // [groups+1]
  std::vector<int64_t> host;          // [groups+1], empty when the caller had none
  int64_t groups = 0, rows = 0;
};

// One row group per stacked matrix.
void require_matching_groups(const GpuWeight& weight, const GroupOffsets& offsets) {
  FRUGAL_CHECK(offsets.groups == weight.groups(),
               "GpuGroupedLinear: {} row groups for {} stacked matrices", offsets.groups,
               weight.groups());
}

// The FP8 entry points (`method` names the one called) need FP8 weights and bf16 activations.
template <class T>
void require_fp8_bf16(const GpuWeight& weight, const char* method) {
  FRUGAL_CHECK((std::is_same_v<T, bf16>) && weight.precision() == GemmPrecision::Fp8,
               "GpuGroupedLinear::{}: needs FP8 weights and bf16 activations ({})", method,
               precision_name(weight.precision()));
}

}  // namespace

void grouped_fp8_nt(cuda::DeviceContext& ctx, const GroupOffsets& offsets, int64_t n, int64_t k,
                    const uint8_t* a, const float* a_scales, const uint8_t* b,
                    const float* b_scales, bf16* y) {
  if (fp8_on_sm90(n, k))
    cuda::grouped_gemm_fp8_sm90_nt(offsets.groups, offsets.device, offsets.rows, n, k, a,
                                   a_scales, b, b_scales, y, ctx.stream);
  else
    cuda::grouped_gemm_fp8_nt(ctx.blas, offsets.groups, offsets.host, n, k, a, a_scales, b,
                              b_scales, y, cuda::DataType::BF16, ctx.stream);
}

namespace {

// The FP8 halves (bf16 activations only; not instantiated for float).

// Fprop from x's operands: x_q [rows, in] with its per-group 1x128 scales, and x^T's (the Wgrad
// cache, moved into the context).
void grouped_forward_fp8_quantized(cuda::DeviceContext& ctx, const GpuWeight& weight,
                                   GpuGroupedLinear<bf16>::Ctx& c, const uint8_t* x_q,
                                   const float* x_scales, cuda::DeviceArray<uint8_t> xT_q,
                                   cuda::DeviceArray<float> xT_scales, bf16* y,
                                   const GroupOffsets& offsets) {
  const int64_t in = weight.in(), out = weight.out(), rows = offsets.rows;
  FRUGAL_CHECK(rows % cuda::kFp8GroupRowAlign == 0,
               "GpuGroupedLinear: {} permuted rows are not padded to {}", rows,
               cuda::kFp8GroupRowAlign);
  FRUGAL_CHECK(x_q != nullptr && x_scales != nullptr && xT_q.size() >= rows * in &&
                   xT_scales.size() >= rows / kFp8BlockSize * in,
               "GpuGroupedLinear: FP8 forward given missing or short operands ({} rows x {})",
               rows, in);
  c.xT_q = std::move(xT_q);
  c.xT_scales = std::move(xT_scales);
  grouped_fp8_nt(ctx, offsets, out, in, x_q, x_scales, weight.fp8(), weight.fp8_scales(),
                 y);  // [rows, out]
}

// gather (may be null): x's rows are those permute_rows(xp, x, gather, rows, top_k, in) would
// gather, read straight from x (quantize_act_1x128_dual_grouped_gather).
void grouped_forward_fp8(cuda::DeviceContext& ctx, const GpuWeight& weight,
                         GpuGroupedLinear<bf16>::Ctx& c, const bf16* x, bf16* y,
                         const GroupOffsets& offsets, const int32_t* gather = nullptr,
                         int64_t top_k = 1) {
  const int64_t in = weight.in(), rows = offsets.rows;
  FRUGAL_CHECK(rows % cuda::kFp8GroupRowAlign == 0,
               "GpuGroupedLinear: {} permuted rows are not padded to {}", rows,
               cuda::kFp8GroupRowAlign);
  // One pass over x makes the Fprop operand and the Wgrad cache x^T (per group).
  cuda::DeviceArray<uint8_t> xT_q(ctx, rows * in);
  cuda::DeviceArray<float> xT_scales(ctx, rows / kFp8BlockSize * in);
  cuda::DeviceArray<uint8_t> q(ctx, rows * in);
  cuda::DeviceArray<float> scales(ctx, fp8_block_count(in) * rows);
  if (gather != nullptr)
    cuda::quantize_act_1x128_dual_grouped_gather(q.data(), scales.data(), xT_q.data(),
                                                 xT_scales.data(), x, gather, top_k,
                                                 offsets.device, offsets.groups, rows, in,
                                                 kFp8PowerOfTwoScales, ctx.stream);
  else
    cuda::quantize_act_1x128_dual_grouped(q.data(), scales.data(), xT_q.data(), xT_scales.data(),
                                          x, offsets.device, offsets.groups, rows, in,
                                          kFp8PowerOfTwoScales, ctx.stream);
  grouped_forward_fp8_quantized(ctx, weight, c, q.data(), scales.data(), std::move(xT_q),
                                std::move(xT_scales), y, offsets);
}

// FP8 Wgrad of every group: dW_g += dyT_g · xT_g^T over the group's rows.
void grouped_wgrad_fp8(cuda::DeviceContext& ctx, const GpuWeight& weight,
                       const GroupOffsets& offsets, const uint8_t* dyT_q, const float* dyT_scales,
                       const uint8_t* xT_q, const float* xT_scales) {
  const int64_t in = weight.in(), out = weight.out();
  if (fp8_on_sm90(out, in))
    cuda::grouped_gemm_fp8_sm90_wgrad(offsets.groups, offsets.device, offsets.rows, out, in,
                                      dyT_q, dyT_scales, xT_q, xT_scales, weight.grad(),
                                      /*accumulate=*/true, ctx.stream);
  else
    cuda::grouped_gemm_fp8_wgrad(ctx.blas, offsets.groups, offsets.host, out, in, dyT_q,
                                 dyT_scales, xT_q, xT_scales, weight.grad(), /*accumulate=*/true,
                                 ctx.stream);
}

// The Wgrad from dy^T's operands: now (deferred null) or queued with the FP8 x^T, dy^T and offsets
// it reads.
void grouped_wgrad_fp8_now_or_deferred(cuda::DeviceContext& ctx, const GpuWeight& weight,
                                       GpuGroupedLinear<bf16>::Ctx& c,
                                       cuda::DeviceArray<uint8_t> dyT_q,
                                       cuda::DeviceArray<float> dyT_scales,
                                       const GroupOffsets& offsets, WeightGradQueue* deferred) {
  if (deferred == nullptr) {
    grouped_wgrad_fp8(ctx, weight, offsets, dyT_q.data(), dyT_scales.data(), c.xT_q.data(),
                      c.xT_scales.data());
    return;
  }
  DeferredOffsets kept(ctx, offsets);
  const size_t bytes = dyT_q.bytes() + dyT_scales.bytes() + c.xT_q.bytes() + c.xT_scales.bytes() +
                       kept.device.bytes();
  deferred->defer(bytes, [&weight, kept = std::move(kept), dyT_q = std::move(dyT_q),
                          dyT_scales = std::move(dyT_scales), xT_q = std::move(c.xT_q),
                          xT_scales = std::move(c.xT_scales)](cuda::DeviceContext& w_ctx) {
    grouped_wgrad_fp8(w_ctx, weight, kept.view(), dyT_q.data(), dyT_scales.data(), xT_q.data(),
                      xT_scales.data());
  });
}

// From dy's operands (dy_q [rows, out] with its per-group 1x128 scales for Dgrad, dy^T's for
// Wgrad): Dgrad now, then the Wgrad now or deferred.
void grouped_backward_fp8_quantized(cuda::DeviceContext& ctx, const GpuWeight& weight,
                                    GpuGroupedLinear<bf16>::Ctx& c, const uint8_t* dy_q,
                                    const float* dy_scales, cuda::DeviceArray<uint8_t> dyT_q,
                                    cuda::DeviceArray<float> dyT_scales, bf16* dx,
                                    const GroupOffsets& offsets, WeightGradQueue* deferred) {
  const int64_t in = weight.in(), out = weight.out(), rows = offsets.rows;
  FRUGAL_CHECK(c.xT_q.data() != nullptr, "GpuGroupedLinear::backward without a forward");
  FRUGAL_CHECK(dy_q != nullptr && dy_scales != nullptr && dyT_q.size() >= rows * out &&
                   dyT_scales.size() >= rows / kFp8BlockSize * out,
               "GpuGroupedLinear: FP8 backward given missing or short operands ({} rows x {})",
               rows, out);
  grouped_fp8_nt(ctx, offsets, in, out, dy_q, dy_scales, weight.fp8_transposed(),
                 weight.fp8_transposed_scales(), dx);  // [rows, in]
  grouped_wgrad_fp8_now_or_deferred(ctx, weight, c, std::move(dyT_q), std::move(dyT_scales),
                                    offsets, deferred);
}

void grouped_backward_fp8(cuda::DeviceContext& ctx, const GpuWeight& weight,
                          GpuGroupedLinear<bf16>::Ctx& c, const bf16* dy, bf16* dx,
                          const GroupOffsets& offsets, WeightGradQueue* deferred) {
  const int64_t in = weight.in(), out = weight.out(), rows = offsets.rows;
  FRUGAL_CHECK(c.xT_q.data() != nullptr, "GpuGroupedLinear::backward without a forward");
  // One pass over dy makes the Dgrad operand and the Wgrad operand dy^T (per group).
  cuda::DeviceArray<uint8_t> dyT_q(ctx, rows * out);
  cuda::DeviceArray<float> dyT_scales(ctx, rows / kFp8BlockSize * out);
  {
    cuda::DeviceArray<uint8_t> dy_q(ctx, rows * out);
    cuda::DeviceArray<float> dy_scales(ctx, fp8_block_count(out) * rows);
    cuda::quantize_act_1x128_dual_grouped(dy_q.data(), dy_scales.data(), dyT_q.data(),
                                          dyT_scales.data(), dy, offsets.device, offsets.groups,
                                          rows, out, kFp8PowerOfTwoScales, ctx.stream);
    grouped_fp8_nt(ctx, offsets, in, out, dy_q.data(), dy_scales.data(),
                   weight.fp8_transposed(), weight.fp8_transposed_scales(), dx);  // [rows, in]
  }
  grouped_wgrad_fp8_now_or_deferred(ctx, weight, c, std::move(dyT_q), std::move(dyT_scales),
                                    offsets, deferred);
}

}  // namespace

template <class T>
GpuGroupedLinear<T>::GpuGroupedLinear(ParamRegistry& registry, int64_t groups, int64_t in,
                                      int64_t out, GemmPrecision precision)
    : weight_(registry, groups, out, in, precision) {
  constexpr bool kFloat = std::is_same_v<T, float>;
  FRUGAL_CHECK((precision == GemmPrecision::Fp32) == kFloat,
               "GpuGroupedLinear: {} GEMMs with {} activations", precision_name(precision),
               kFloat ? "fp32" : "bf16");
}

template <class T>
bool GpuGroupedLinear<T>::device_offsets_only() const {
  return std::is_same_v<T, bf16> && weight_.precision() == GemmPrecision::Bf16 &&
         cuda::grouped_gemm_sm90_enabled() &&
         cuda::grouped_gemm_sm90_supported(weight_.out(), weight_.in());
}

template <class T>
void GpuGroupedLinear<T>::forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y,
                                  const GroupOffsets& offsets) const {
  const int64_t in = weight_.in(), out = weight_.out(), rows = offsets.rows;
  require_matching_groups(weight_, offsets);
  c = Ctx{};
  if (rows == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (device_offsets_only()) {
      c.x = x;
      cuda::grouped_gemm_sm90_nt(offsets.groups, offsets.device, rows, out, in, x,
                                 static_cast<const bf16*>(weight_.operand()), y,
                                 ctx.stream);  // [rows, out]
      return;
    }
  }
  if (weight_.precision() != GemmPrecision::Fp8) {
    c.x = x;
    cuda::grouped_gemm_nt(ctx.blas, offsets.groups, offsets.host, out, in, x, weight_.operand(),
                          weight_.operand_type(), y, data_type_of<T>(), ctx.stream);  // [rows, out]
    return;
  }
  if constexpr (std::is_same_v<T, bf16>) grouped_forward_fp8(ctx, weight_, c, x, y, offsets);
}

namespace {

// fp32/bf16 Wgrad of every group: dW_g[out, in] += dy_g^T · x_g (the sm_90 kernel under
// `sm90`, else the cuBLASLt calls).
template <class T>
void grouped_wgrad(cuda::DeviceContext& ctx, const GpuWeight& weight, const GroupOffsets& offsets,
                   bool sm90, const T* dy, const T* x) {
  const int64_t in = weight.in(), out = weight.out();
  if constexpr (std::is_same_v<T, bf16>) {
    if (sm90) {
      cuda::grouped_gemm_sm90_tn(offsets.groups, offsets.device, offsets.rows, out, in, dy, x,
                                 weight.grad(), /*accumulate=*/true,
                                 ctx.stream);  // [groups][out, in] +=
      return;
    }
  }
  cuda::grouped_gemm_tn(ctx.blas, offsets.groups, offsets.host, out, in, dy, x, data_type_of<T>(),
                        weight.grad(), cuda::DataType::F32, /*accumulate=*/true,
                        ctx.stream);  // [groups][out, in] +=
}

}  // namespace

template <class T>
void GpuGroupedLinear<T>::backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx,
                                   const GroupOffsets& offsets, WeightGradQueue* deferred) const {
  const int64_t in = weight_.in(), out = weight_.out(), rows = offsets.rows;
  if (rows == 0) {
    c = Ctx{};
    return;
  }
  if (weight_.precision() == GemmPrecision::Fp8) {
    if constexpr (std::is_same_v<T, bf16>)
      grouped_backward_fp8(ctx, weight_, c, dy, dx, offsets, deferred);
    c = Ctx{};
    return;
  }
  FRUGAL_CHECK(c.x != nullptr, "GpuGroupedLinear::backward without a forward");
  const bool sm90 = device_offsets_only();
  if constexpr (std::is_same_v<T, bf16>) {
    if (sm90)
      cuda::grouped_gemm_sm90_nn(offsets.groups, offsets.device, rows, out, in, dy,
                                 static_cast<const bf16*>(weight_.operand()), dx,
                                 ctx.stream);  // [rows, in]
  }
  if (!sm90)
    cuda::grouped_gemm_nn(ctx.blas, offsets.groups, offsets.host, out, in, dy, weight_.operand(),
                          weight_.operand_type(), dx, data_type_of<T>(), ctx.stream);  // [rows, in]
  if (deferred == nullptr) {
    grouped_wgrad<T>(ctx, weight_, offsets, sm90, dy, c.x);
  } else {  // the caller frees x, dy and the offsets during B: the GEMM keeps copies
    DeferredOffsets kept(ctx, offsets);
    cuda::DeviceArray<T> x_copy = device_copy<T>(ctx, c.x, rows * in);
    cuda::DeviceArray<T> dy_copy = device_copy<T>(ctx, dy, rows * out);
    const size_t bytes = x_copy.bytes() + dy_copy.bytes() + kept.device.bytes();
    deferred->defer(bytes, [&weight = weight_, sm90, kept = std::move(kept),
                            x = std::move(x_copy),
                            dy = std::move(dy_copy)](cuda::DeviceContext& w_ctx) {
      grouped_wgrad<T>(w_ctx, weight, kept.view(), sm90, dy.data(), x.data());
    });
  }
  c = Ctx{};
}

template <class T>
void GpuGroupedLinear<T>::forward_gathered(cuda::DeviceContext& ctx, Ctx& c, const T* x,
                                           const int32_t* row_assignment, int64_t top_k, T* y,
                                           const GroupOffsets& offsets) const {
  require_fp8_bf16<T>(weight_, "forward_gathered");
  require_matching_groups(weight_, offsets);
  c = Ctx{};
  if (offsets.rows == 0) return;
  if constexpr (std::is_same_v<T, bf16>)
    grouped_forward_fp8(ctx, weight_, c, x, y, offsets, row_assignment, top_k);
}

template <class T>
void GpuGroupedLinear<T>::forward_quantized(cuda::DeviceContext& ctx, Ctx& c, const uint8_t* x_q,
                                            const float* x_scales,
                                            cuda::DeviceArray<uint8_t> xT_q,
                                            cuda::DeviceArray<float> xT_scales, T* y,
                                            const GroupOffsets& offsets) const {
  require_fp8_bf16<T>(weight_, "forward_quantized");
  require_matching_groups(weight_, offsets);
  c = Ctx{};
  if (offsets.rows == 0) return;
  if constexpr (std::is_same_v<T, bf16>)
    grouped_forward_fp8_quantized(ctx, weight_, c, x_q, x_scales, std::move(xT_q),
                                  std::move(xT_scales), y, offsets);
}

template <class T>
void GpuGroupedLinear<T>::backward_quantized(cuda::DeviceContext& ctx, Ctx& c, const uint8_t* dy_q,
                                             const float* dy_scales,
                                             cuda::DeviceArray<uint8_t> dyT_q,
                                             cuda::DeviceArray<float> dyT_scales, T* dx,
                                             const GroupOffsets& offsets,
                                             WeightGradQueue* deferred) const {
  require_fp8_bf16<T>(weight_, "backward_quantized");
  if (offsets.rows == 0) {
    c = Ctx{};
    return;
  }
  if constexpr (std::is_same_v<T, bf16>)
    grouped_backward_fp8_quantized(ctx, weight_, c, dy_q, dy_scales, std::move(dyT_q),
                                   std::move(dyT_scales), dx, offsets, deferred);
  c = Ctx{};
}

template class GpuGroupedLinear<float>;
template class GpuGroupedLinear<bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
