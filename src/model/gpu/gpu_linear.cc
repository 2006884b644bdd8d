// GpuWeight and GpuLinear (see gpu_linear.h for the GEMM mapping and the accumulation rule).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_linear.h"

#include <iterator>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "kernels/quant/quant.h"

namespace frugal::gpu {

GpuWeight::GpuWeight(ParamRegistry& registry, int64_t groups, int64_t out, int64_t in,
                     GemmPrecision precision)
    : precision_(precision), groups_(groups), out_(out), in_(in) {
  FRUGAL_CHECK(groups > 0 && out > 0 && in > 0, "GpuWeight: bad shape [{}][{}][{}]", groups, out,
               in);
  if (precision == GemmPrecision::Fp8)
    FRUGAL_CHECK(out % kFp8BlockSize == 0 && in % kFp8BlockSize == 0,
                 "GpuWeight: an fp8 weight needs dims that are multiples of {}, got [{}, {}]",
                 kFp8BlockSize, out, in);
  storage_ = registry.allocate(count(), /*trainable=*/true);
  cuda::DeviceContext& ctx = registry.context();
  if (precision == GemmPrecision::Bf16) {
    bf16_ = cuda::DeviceArray<bf16>(ctx, count());
  } else if (precision == GemmPrecision::Fp8) {
    const int64_t blocks = groups * (out / kFp8BlockSize) * (in / kFp8BlockSize);
    q_ = cuda::DeviceArray<uint8_t>(ctx, count());
    qT_ = cuda::DeviceArray<uint8_t>(ctx, count());
    scales_ = cuda::DeviceArray<float>(ctx, blocks);
    scalesT_ = cuda::DeviceArray<float>(ctx, blocks);
  }
  if (precision != GemmPrecision::Fp32) {
    copy_state_ = std::make_shared<WeightCopyState>();
    WeightCopies& c = copy_state_->copies;
    c.precision = precision;
    c.value = storage_.value;
    c.groups = groups;
    c.out = out;
    c.in = in;
    c.bf16_copy = bf16_.data();
    c.q = q_.data();
    c.scales = scales_.data();
    c.qT = qT_.data();
    c.scalesT = scalesT_.data();
    c.power_of_two_scales = kFp8PowerOfTwoScales;
    registry.attach_copies(storage_.value, copy_state_);
  }
  refresh(ctx);
}

void GpuWeight::refresh(cuda::DeviceContext& ctx) {
  if (copy_state_ != nullptr && copy_state_->written_by_optimizer) {
    copy_state_->written_by_optimizer = false;  // the optimizer's pass wrote the copies
    return;
  }
  if (precision_ == GemmPrecision::Bf16) {
    cuda::cast<float, bf16>(bf16_.data(), storage_.value, count(), ctx.stream);
  } else if (precision_ == GemmPrecision::Fp8) {
    cuda::quantize_weights_128x128_with_transpose(q_.data(), scales_.data(), qT_.data(),
                                                  scalesT_.data(), storage_.value, groups_, out_,
                                                  in_, kFp8PowerOfTwoScales, ctx.stream);
  }
}

const void* GpuWeight::operand() const {
  FRUGAL_CHECK(precision_ != GemmPrecision::Fp8,
               "GpuWeight: an fp8 weight has no fp32/bf16 operand");
  return precision_ == GemmPrecision::Bf16 ? static_cast<const void*>(bf16_.data())
                                           : static_cast<const void*>(storage_.value);
}

cuda::DataType GpuWeight::operand_type() const {
  return precision_ == GemmPrecision::Bf16 ? cuda::DataType::BF16 : cuda::DataType::F32;
}

template <class T>
cuda::DeviceArray<T> pad_rows(cuda::DeviceContext& ctx, const T* x, int64_t rows, int64_t cols,
                              int64_t padded_rows) {
  cuda::DeviceArray<T> out(ctx, padded_rows * cols);
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(out.data(), x, static_cast<size_t>(rows * cols) * sizeof(T),
                                    cudaMemcpyDeviceToDevice, ctx.stream));
  zero_async(ctx, out.data() + rows * cols,
             static_cast<size_t>((padded_rows - rows) * cols) * sizeof(T));
  return out;
}

namespace {

// cuBLASLt's 1x128-scaled FP8 operand needs a row count that is a multiple of 16 (MTP layers
// run batch * (seq - k) rows). Such a call runs on a copy padded with zero rows; the padding's
// output rows are dropped. out[rows, n] (+)= op over a [rows, k] input quantized here.
constexpr int64_t kFp8RowMultiple = 16;

void fp8_gemm_rows(cuda::DeviceContext& ctx, const bf16* x, int64_t rows, int64_t k, int64_t n,
                   const uint8_t* w, const float* w_scales, float beta, bf16* out) {
  const int64_t padded = round_up(rows, kFp8RowMultiple);
  cuda::DeviceArray<bf16> x_padded, out_padded;
  const bf16* source = x;
  bf16* target = out;
  if (padded != rows) {
    x_padded = pad_rows<bf16>(ctx, x, rows, k, padded);
    source = x_padded.data();
    out_padded = cuda::DeviceArray<bf16>(ctx, padded * n);
    target = out_padded.data();
    if (beta != 0.0f)
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(target, out, static_cast<size_t>(rows * n) * sizeof(bf16),
                                        cudaMemcpyDeviceToDevice, ctx.stream));
  }
  cuda::DeviceArray<uint8_t> q(ctx, padded * k);
  cuda::DeviceArray<float> scales(ctx, fp8_block_count(k) * padded);
  cuda::quantize_act_1x128<bf16>(q.data(), scales.data(), source, padded, k, kFp8PowerOfTwoScales,
                                 ctx.stream);
  cuda::gemm_fp8_nt(ctx.blas, padded, n, k, q.data(), scales.data(), w, w_scales,
                    cuda::Fp8Scaling::Block128x128, beta, target, n, cuda::DataType::BF16,
                    ctx.stream);  // [padded, n]
  if (target != out)
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(out, target, static_cast<size_t>(rows * n) * sizeof(bf16),
                                      cudaMemcpyDeviceToDevice, ctx.stream));
}

// The FP8 halves of GpuLinear (bf16 activations only: fp32 activations never meet an fp8 weight,
// so these are not instantiated for float).
void linear_forward_fp8(cuda::DeviceContext& ctx, const GpuWeight& weight, GpuLinear<bf16>::Ctx& c,
                        const bf16* x, bf16* y, int64_t rows, const Fp8Input* x_fp8) {
  using T = bf16;
  const int64_t in = weight.in(), out = weight.out();
  // FP8 Fprop: x in 1x128 tiles along in, W in 128x128 blocks; the Wgrad operand x^T
  // [in, padded_rows] quantized along the rows, kept for the backward.
  const int64_t padded = round_up(rows, kFp8BlockSize);
  c.xT_q = cuda::DeviceArray<uint8_t>(ctx, in * padded);
  c.xT_scales = cuda::DeviceArray<float>(ctx, padded / kFp8BlockSize * in);
  if (x_fp8 == nullptr && padded == rows) {  // one pass over x makes both operands
    cuda::DeviceArray<uint8_t> q(ctx, rows * in);
    cuda::DeviceArray<float> scales(ctx, fp8_block_count(in) * rows);
    cuda::quantize_act_1x128_dual(q.data(), scales.data(), c.xT_q.data(), c.xT_scales.data(), x,
                                  rows, in, kFp8PowerOfTwoScales, ctx.stream);
    cuda::gemm_fp8_nt(ctx.blas, rows, out, in, q.data(), scales.data(), weight.fp8(),
                      weight.fp8_scales(), cuda::Fp8Scaling::Block128x128, 0.0f, y, out,
                      cuda::DataType::BF16, ctx.stream);  // [rows, out]
    return;
  }
  if (x_fp8 != nullptr && rows % kFp8RowMultiple == 0) {
    cuda::gemm_fp8_nt(ctx.blas, rows, out, in, x_fp8->q, x_fp8->scales, weight.fp8(),
                      weight.fp8_scales(), cuda::Fp8Scaling::Block128x128, 0.0f, y, out,
                      cuda::DataType::BF16, ctx.stream);  // [rows, out]
  } else {
    fp8_gemm_rows(ctx, x, rows, in, out, weight.fp8(), weight.fp8_scales(), 0.0f, y);
  }
  cuda::DeviceArray<T> x_padded;
  const T* source = x;
  if (padded != rows) {
    x_padded = pad_rows<T>(ctx, x, rows, in, padded);
    source = x_padded.data();
  }
  cuda::transpose_quantize_1x128<T>(c.xT_q.data(), c.xT_scales.data(), source, padded, in,
                                    kFp8PowerOfTwoScales, ctx.stream);
}

// FP8 Wgrad: dW[out, in] += dyT[out, padded] · xT[in, padded]^T, reduction over the rows.
void linear_wgrad_fp8(cuda::DeviceContext& ctx, const GpuWeight& weight, int64_t padded,
                      const uint8_t* dyT_q, const float* dyT_scales, const uint8_t* xT_q,
                      const float* xT_scales) {
  cuda::gemm_fp8_nt(ctx.blas, weight.out(), weight.in(), padded, dyT_q, dyT_scales, xT_q,
                    xT_scales, cuda::Fp8Scaling::Tile1x128, 1.0f, weight.grad(), weight.in(),
                    cuda::DataType::F32, ctx.stream);  // [out, in] +=
}

// Dgrad now; the Wgrad now (deferred null) or queued with the FP8 x^T and dy^T it reads.
void linear_backward_fp8(cuda::DeviceContext& ctx, const GpuWeight& weight, GpuLinear<bf16>::Ctx& c,
                         const bf16* dy, bf16* dx, float beta, WeightGradQueue* deferred) {
  using T = bf16;
  const int64_t in = weight.in(), out = weight.out(), rows = c.rows;
  FRUGAL_CHECK(c.xT_q.data() != nullptr, "GpuLinear::backward without a forward");
  // FP8 Dgrad: dy in 1x128 tiles along out, WT [in, out] in 128x128 blocks. FP8 Wgrad:
  // dW[out, in] += dyT[out, padded] · xT[in, padded]^T, reduction over the rows.
  const int64_t padded = round_up(rows, kFp8BlockSize);
  cuda::DeviceArray<uint8_t> dyT_q(ctx, out * padded);
  cuda::DeviceArray<float> dyT_scales(ctx, padded / kFp8BlockSize * out);
  if (padded == rows) {  // one pass over dy makes both operands
    cuda::DeviceArray<uint8_t> dy_q(ctx, rows * out);
    cuda::DeviceArray<float> dy_scales(ctx, fp8_block_count(out) * rows);
    cuda::quantize_act_1x128_dual(dy_q.data(), dy_scales.data(), dyT_q.data(), dyT_scales.data(),
                                  dy, rows, out, kFp8PowerOfTwoScales, ctx.stream);
    if (dx != nullptr)
      cuda::gemm_fp8_nt(ctx.blas, rows, in, out, dy_q.data(), dy_scales.data(),
                        weight.fp8_transposed(), weight.fp8_transposed_scales(),
                        cuda::Fp8Scaling::Block128x128, beta, dx, in, cuda::DataType::BF16,
                        ctx.stream);  // [rows, in]
  } else {
    if (dx != nullptr)
      fp8_gemm_rows(ctx, dy, rows, out, in, weight.fp8_transposed(),
                    weight.fp8_transposed_scales(), beta, dx);  // [rows, in]
    const cuda::DeviceArray<T> dy_padded = pad_rows<T>(ctx, dy, rows, out, padded);
    cuda::transpose_quantize_1x128<T>(dyT_q.data(), dyT_scales.data(), dy_padded.data(), padded,
                                      out, kFp8PowerOfTwoScales, ctx.stream);
  }
  if (deferred == nullptr) {
    linear_wgrad_fp8(ctx, weight, padded, dyT_q.data(), dyT_scales.data(), c.xT_q.data(),
                     c.xT_scales.data());
    return;
  }
  const size_t bytes = dyT_q.bytes() + dyT_scales.bytes() + c.xT_q.bytes() + c.xT_scales.bytes();
  deferred->defer(bytes, [&weight, padded, dyT_q = std::move(dyT_q),
                          dyT_scales = std::move(dyT_scales), xT_q = std::move(c.xT_q),
                          xT_scales = std::move(c.xT_scales)](cuda::DeviceContext& w_ctx) {
    linear_wgrad_fp8(w_ctx, weight, padded, dyT_q.data(), dyT_scales.data(), xT_q.data(),
                     xT_scales.data());
  });
}

}  // namespace

template <class T>
GpuLinear<T>::GpuLinear(ParamRegistry& registry, int64_t in, int64_t out, GemmPrecision precision)
    : weight_(registry, 1, out, in, precision) {
  // The activation type follows the precision: fp32 GEMMs read float, bf16/fp8 ones bf16.
  constexpr bool kFloat = std::is_same_v<T, float>;
  FRUGAL_CHECK((precision == GemmPrecision::Fp32) == kFloat,
               "GpuLinear: {} GEMMs with {} activations", precision_name(precision),
               kFloat ? "fp32" : "bf16");
}

template <class T>
void GpuLinear<T>::register_as(ParamRegistry& registry, const std::string& name) {
  registry.add(name, {out(), in()}, ParamKind::Matrix, weight_.value(), weight_.grad());
}

template <class T>
void GpuLinear<T>::forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t rows,
                           const Fp8Input* x_fp8) const {
  FRUGAL_CHECK(rows >= 0, "GpuLinear::forward: {} rows", rows);
  const int64_t in = weight_.in(), out = weight_.out();
  c = Ctx{};
  c.rows = rows;
  if (rows == 0) return;
  if (weight_.precision() != GemmPrecision::Fp8) {
    c.x = x;
    cuda::gemm(ctx.blas, false, true, rows, out, in, 1.0f, x, in, weight_.operand(), in,
               weight_.operand_type(), 0.0f, y, out, data_type_of<T>(), ctx.stream);  // [rows, out]
    return;
  }
  if constexpr (std::is_same_v<T, bf16>) linear_forward_fp8(ctx, weight_, c, x, y, rows, x_fp8);
}

namespace {

// fp32/bf16 Wgrad: dW[out, in] += dy^T · x.
template <class T>
void linear_wgrad(cuda::DeviceContext& ctx, const GpuWeight& weight, const T* dy, const T* x,
                  int64_t rows) {
  const int64_t in = weight.in(), out = weight.out();
  cuda::gemm(ctx.blas, true, false, out, in, rows, 1.0f, dy, out, x, in, data_type_of<T>(), 1.0f,
             weight.grad(), in, cuda::DataType::F32, ctx.stream);  // [out, in] +=
}

}  // namespace

template <class T>
void GpuLinear<T>::backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx,
                            bool accumulate_dx, WeightGradQueue* deferred) const {
  const int64_t in = weight_.in(), out = weight_.out(), rows = c.rows;
  if (rows == 0) {
    c = Ctx{};
    return;
  }
  const float beta = accumulate_dx ? 1.0f : 0.0f;
  if (weight_.precision() != GemmPrecision::Fp8) {
    FRUGAL_CHECK(c.x != nullptr, "GpuLinear::backward without a forward");
    if (dx != nullptr)
      cuda::gemm(ctx.blas, false, false, rows, in, out, 1.0f, dy, out, weight_.operand(), in,
                 weight_.operand_type(), beta, dx, in, data_type_of<T>(),
                 ctx.stream);  // [rows, in]
    if (deferred == nullptr) {
      linear_wgrad<T>(ctx, weight_, dy, c.x, rows);
    } else {  // the caller frees x and dy during B: the GEMM keeps copies
      cuda::DeviceArray<T> x_copy = device_copy<T>(ctx, c.x, rows * in);
      cuda::DeviceArray<T> dy_copy = device_copy<T>(ctx, dy, rows * out);
      const size_t bytes = x_copy.bytes() + dy_copy.bytes();
      deferred->defer(bytes, [&weight = weight_, rows, x = std::move(x_copy),
                              dy = std::move(dy_copy)](cuda::DeviceContext& w_ctx) {
        linear_wgrad<T>(w_ctx, weight, dy.data(), x.data(), rows);
      });
    }
    c = Ctx{};
    return;
  }
  if constexpr (std::is_same_v<T, bf16>)
    linear_backward_fp8(ctx, weight_, c, dy, dx, beta, deferred);
  c = Ctx{};
}

template cuda::DeviceArray<float> pad_rows<float>(cuda::DeviceContext&, const float*, int64_t,
                                                  int64_t, int64_t);
template cuda::DeviceArray<bf16> pad_rows<bf16>(cuda::DeviceContext&, const bf16*, int64_t, int64_t,
                                                int64_t);
template class GpuLinear<float>;
template class GpuLinear<bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
