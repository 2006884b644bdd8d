// Linear layers of the GPU model:  y[rows, out] = x[rows, in] · W[out, in]^T, no bias.
//
// GpuWeight holds the GEMM forms of `groups` stacked matrices [groups][out][in] whose fp32 master
// values and gradients live in ParamRegistry storage:
//   fp32  the master itself (the fp32 recipe: every GEMM in true fp32, no TF32)
//   bf16  a BF16 copy of the master
//   fp8   W_q [out, in] in 128x128 blocks and its transpose WT_q [in, out] (for Dgrad), both made
//         by quantize_weight_128x128_with_transpose
// refresh() rebuilds the copies from the master: once per optimizer step (weights_updated), not
// per micro-batch. The optimizer may write the copies itself while it updates the master (GpuAdamW
// fuses the BF16 cast and the FP8 quantization into its AdamW pass): it finds a weight's copies
// through its parameters (DeviceParam::copies, attached by the ParamRegistry) and sets
// WeightCopyState::written_by_optimizer for the weights it wrote, only around its own refresh callback; refresh() then skips that weight once
// and clears the flag. Every other refresh (upload, a checkpoint load) rebuilds the copies.
//
// GpuLinear<T> runs one matrix with activations in T (float for fp32, __nv_bfloat16 otherwise):
//   Fprop  y  = x · W^T                 gemm(trans_b)   | x quantized 1x128, gemm_fp8_nt(x_q, W_q)
//   Dgrad  dx = dy · W                  gemm()          | dy quantized 1x128, gemm_fp8_nt(dy_q,
//   WT_q) Wgrad  dW += dy^T · x               gemm(trans_a)   | gemm_fp8_nt(dyT_q, xT_q), both
//                                                         transpose-quantized along rows
// Under fp8 the forward caches x^T in FP8 (1x128 tiles along the rows, the spec's 128x1 tiles of
// x) for Wgrad instead of keeping x; rows are padded with zeros to a multiple of 128 for the
// Wgrad GEMM's reduction. Under fp32/bf16 the context keeps a pointer to x, which the caller
// keeps alive until backward.
//
// Accumulation rule: W.grad accumulates (+=); dx is assigned, or added when accumulate_dx.
// backward does Dgrad and Wgrad at once and releases the context; given a WeightGradQueue
// (gpu_weight_grad.h) it does Dgrad (and under fp8 the dy^T quantization) and queues the Wgrad
// GEMM with the operands it reads (fp32/bf16: copies of x and dy; fp8: the cached x^T and dy^T
// in FP8), to run at the pipeline's W step.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/gpu/gpu_common.h"
#include "model/gpu/gpu_weight_grad.h"

namespace frugal::gpu {

// An activation already quantized in 1x128 tiles along its columns: q [rows, cols],
// scales [ceil(cols/128)][rows] (e.g. by rmsnorm_fwd_quant or a shared quantization of an input
// that feeds two Linears).
struct Fp8Input {
  const uint8_t* q = nullptr;
  const float* scales = nullptr;
};

// Where a GpuWeight (bf16 or fp8) keeps the copies its GEMMs read, for an optimizer that writes
// them (see above). Device pointers, valid while the GpuWeight lives.
struct WeightCopies {
  GemmPrecision precision = GemmPrecision::Fp32;
  float* value = nullptr;  // [groups][out][in] the fp32 master (the weight's whole storage)
  int64_t groups = 0, out = 0, in = 0;
  bf16* bf16_copy = nullptr;  // bf16: [groups][out][in], the master rounded to nearest even
  uint8_t* q = nullptr;       // fp8: codes [groups][out][in]
  float* scales = nullptr;    //      [groups][out/128][in/128]
  uint8_t* qT = nullptr;      //      transposed codes [groups][in][out]
  float* scalesT = nullptr;   //      [groups][in/128][out/128]
  bool power_of_two_scales = kFp8PowerOfTwoScales;  // the scale rule the fp8 copies use
  int64_t count() const { return groups * out * in; }
};
struct WeightCopyState {
  WeightCopies copies;
  bool written_by_optimizer = false;  // the next refresh() skips the weight (and clears this)
};

class GpuWeight {
 public:
  GpuWeight() = default;
  GpuWeight(ParamRegistry& registry, int64_t groups, int64_t out, int64_t in,
            GemmPrecision precision);

  // Rebuilds the bf16 copy / fp8 forms from the fp32 master (no-op for fp32), unless the
  // optimizer has just written them (WeightCopyState::written_by_optimizer: skipped once).
  void refresh(cuda::DeviceContext& ctx);

  GemmPrecision precision() const { return precision_; }
  int64_t groups() const { return groups_; }
  int64_t out() const { return out_; }
  int64_t in() const { return in_; }
  int64_t count() const { return groups_ * out_ * in_; }
  float* value() const { return storage_.value; }
  float* grad() const { return storage_.grad; }

  // fp32/bf16: the stacked matrices the GEMMs read, and their type.
  const void* operand() const;
  cuda::DataType operand_type() const;
  // fp8: codes [groups][out][in], scales [groups][out/128][in/128]; transposed codes
  // [groups][in][out], scales [groups][in/128][out/128].
  const uint8_t* fp8() const { return q_.data(); }
  const float* fp8_scales() const { return scales_.data(); }
  const uint8_t* fp8_transposed() const { return qT_.data(); }
  const float* fp8_transposed_scales() const { return scalesT_.data(); }

 private:
  GemmPrecision precision_ = GemmPrecision::Fp32;
  int64_t groups_ = 0, out_ = 0, in_ = 0;
  ParamRegistry::Storage storage_;
  cuda::DeviceArray<bf16> bf16_;
  cuda::DeviceArray<uint8_t> q_, qT_;
  cuda::DeviceArray<float> scales_, scalesT_;
  std::shared_ptr<WeightCopyState> copy_state_;  // bf16/fp8: attached to the storage's parameters
};

template <class T>
class GpuLinear {
 public:
  struct Ctx {
    const T* x = nullptr;                // fp32/bf16: the input (kept alive by the caller)
    cuda::DeviceArray<uint8_t> xT_q;     // fp8: x^T [in, padded_rows], 1x128 tiles along rows
    cuda::DeviceArray<float> xT_scales;  // fp8: [padded_rows/128][in]
    int64_t rows = 0;
  };

  GpuLinear() = default;
  // Storage for one [out, in] matrix; the caller registers the parameter(s) inside it (see
  // register_as / the fused gate|up of GpuMlp).
  GpuLinear(ParamRegistry& registry, int64_t in, int64_t out, GemmPrecision precision);
  // Registers `name` ([out, in], a Matrix) over the whole storage.
  void register_as(ParamRegistry& registry, const std::string& name);

  // x [rows, in] -> y [rows, out]. `x_fp8` (fp8 only, may be null) is x already quantized.
  void forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t rows,
               const Fp8Input* x_fp8 = nullptr) const;
  // dy [rows, out] -> dx [rows, in] (assigned, or added when accumulate_dx; skipped when dx is
  // null); W.grad += dy^T x, now or, given `deferred`, queued there. Releases the context.
  void backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx, bool accumulate_dx,
                WeightGradQueue* deferred = nullptr) const;

  // Whether the caller must keep the forward input alive until backward.
  bool keeps_input_pointer() const { return weight_.precision() != GemmPrecision::Fp8; }
  void refresh(cuda::DeviceContext& ctx) { weight_.refresh(ctx); }
  GpuWeight& weight() { return weight_; }
  const GpuWeight& weight() const { return weight_; }
  int64_t in() const { return weight_.in(); }
  int64_t out() const { return weight_.out(); }

 private:
  GpuWeight weight_;
};

// x [rows, cols] copied into a [padded_rows, cols] array whose extra rows are zero.
template <class T>
cuda::DeviceArray<T> pad_rows(cuda::DeviceContext& ctx, const T* x, int64_t rows, int64_t cols,
                              int64_t padded_rows);

extern template class GpuLinear<float>;
extern template class GpuLinear<bf16>;

}  // namespace frugal::gpu
