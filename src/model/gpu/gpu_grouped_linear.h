// The expert matrices of an MoE layer on the GPU: `groups` (= experts) Linears stacked
// [groups][out][in] (GpuWeight), run as grouped GEMMs over the expert-major permuted rows:
// group g owns rows [offsets[g], offsets[g+1]) (kernels/moe/moe_cuda.h permutation).
//   Fprop  y_g  = x_g · W_g^T        grouped_gemm_nt   | grouped_gemm_fp8_nt (x quantized per
//   group) Dgrad  dx_g = dy_g · W_g         grouped_gemm_nn   | grouped_gemm_fp8_nt (dy quantized,
//   WT_g) Wgrad  dW_g += dy_g^T · x_g      grouped_gemm_tn   | grouped_gemm_fp8_wgrad (both
//   transposed
//                                                         and quantized along each group's rows)
// bf16 on sm_90: grouped_gemm_sm90_nt / _nn / _tn instead, one launch each over the device offsets;
// fp8 on sm_90: grouped_gemm_fp8_sm90_nt / _wgrad likewise (FRUGAL_GROUPED_GEMM_FP8=cublas: the
// cuBLASLt calls).
// Under fp8 every group's row count is a multiple of 128 (the permutation pads with zero rows, see
// kFp8GroupRowAlign) and the forward caches x^T per group in FP8 for Wgrad; under fp32/bf16 the
// context keeps a pointer to x, which the caller keeps alive until backward.
//
// Accumulation rule: every W_g.grad accumulates (+=); dx is assigned. backward computes input and
// weight gradients together and releases the context; given a WeightGradQueue (gpu_weight_grad.h)
// it computes dx (and under fp8 the dy^T quantization) and queues the Wgrad GEMM with what it
// reads: fp32/bf16 copies of x and dy, fp8 the cached x^T and dy^T codes and scales, and a copy of
// the row offsets (device, plus host for the cuBLASLt calls).
#pragma once

#include <cstdint>

#include "model/gpu/gpu_linear.h"

namespace frugal::gpu {

// Row blocks of the groups: host and device copies of offsets [groups+1]; rows = offsets[groups].
// `host` may be null when every grouped linear it is given to is device_offsets_only().
struct GroupOffsets {
  const int64_t* host = nullptr;
  const int64_t* device = nullptr;
  int64_t groups = 0;
  int64_t rows = 0;
};

// y[rows, n] = A[rows, k] · B_g[n, k]^T in FP8 over the groups' row blocks (A: E4M3 with per-group
// 1x128 tile scales as cuda::quantize_act_1x128_grouped lays them out; B_g: E4M3 [n, k] with
// 128x128 block scales, stacked per group), BF16 out: the sm_90 kernel where it runs, else the
// cuBLASLt calls (which need offsets.host).
void grouped_fp8_nt(cuda::DeviceContext& ctx, const GroupOffsets& offsets, int64_t n, int64_t k,
                    const uint8_t* a, const float* a_scales, const uint8_t* b,
                    const float* b_scales, bf16* y);

template <class T>
class GpuGroupedLinear {
 public:
  struct Ctx {
    const T* x = nullptr;                // fp32/bf16: [rows, in] (kept alive by the caller)
    cuda::DeviceArray<uint8_t> xT_q;     // fp8: group g's x_g^T [in, rows_g] at offsets[g]*in
    cuda::DeviceArray<float> xT_scales;  // fp8: group g's [rows_g/128][in] at offsets[g]/128*in
  };

  GpuGroupedLinear() = default;
  GpuGroupedLinear(ParamRegistry& registry, int64_t groups, int64_t in, int64_t out,
                   GemmPrecision precision);

  // x [rows, in] -> y [rows, out] over the groups' row blocks.
  void forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y,
               const GroupOffsets& offsets) const;
  // dy [rows, out] -> dx [rows, in] (assigned); W_g.grad += dy_g^T x_g, now or, given
  // `deferred`, queued there. Releases the context.
  void backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx, const GroupOffsets& offsets,
                WeightGradQueue* deferred = nullptr) const;

  // The FP8 forms from operands already quantized (FP8 weights and bf16 activations only, else
  // frugal::Error), for producers that make them in their own pass (cuda::swiglu_fwd_fp8_grouped,
  // swiglu_bwd_fp8_grouped): exactly forward / backward given the bf16 matrix these operands
  // quantize. x_q [rows, in] with group g's 1x128 scales [in/128][rows_g] at
  // x_scales + offsets[g]*in/128, and x^T per group (Ctx::xT_q, xT_scales layouts; moved into the
  // context as the Wgrad cache), as cuda::quantize_act_1x128_dual_grouped writes them; likewise
  // dy_q [rows, out], dy_scales and dy^T for backward (which queues the Wgrad given `deferred`,
  // taking dy^T with it). The caller keeps x_q / dy_q alive until the call returns.
  // FP8 forward of the rows cuda::permute_rows(xp, x, row_assignment, offsets.rows, top_k, in)
  // would gather from x [tokens, in], without writing xp: exactly forward(xp) (FP8 weights and
  // bf16 activations only, else frugal::Error).
  void forward_gathered(cuda::DeviceContext& ctx, Ctx& c, const T* x,
                        const int32_t* row_assignment, int64_t top_k, T* y,
                        const GroupOffsets& offsets) const;
  void forward_quantized(cuda::DeviceContext& ctx, Ctx& c, const uint8_t* x_q,
                         const float* x_scales, cuda::DeviceArray<uint8_t> xT_q,
                         cuda::DeviceArray<float> xT_scales, T* y,
                         const GroupOffsets& offsets) const;
  void backward_quantized(cuda::DeviceContext& ctx, Ctx& c, const uint8_t* dy_q,
                          const float* dy_scales, cuda::DeviceArray<uint8_t> dyT_q,
                          cuda::DeviceArray<float> dyT_scales, T* dx, const GroupOffsets& offsets,
                          WeightGradQueue* deferred = nullptr) const;

  bool keeps_input_pointer() const { return weight_.precision() != GemmPrecision::Fp8; }
  // True when the GEMMs run as the sm_90 grouped kernels (kernels/gemm/grouped_gemm_sm90.h), which
  // read the offsets on the device only: bf16 weights and activations, an sm_90 device, shapes
  // they take, and FRUGAL_GROUPED_GEMM unset or not "cublas". Otherwise (fp32, fp8, other
  // devices) the cuBLASLt calls need GroupOffsets::host.
  bool device_offsets_only() const;
  void refresh(cuda::DeviceContext& ctx) { weight_.refresh(ctx); }
  GpuWeight& weight() { return weight_; }
  const GpuWeight& weight() const { return weight_; }

 private:
  GpuWeight weight_;
};

extern template class GpuGroupedLinear<float>;
extern template class GpuGroupedLinear<bf16>;

}  // namespace frugal::gpu
