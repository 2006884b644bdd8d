// DeepSeekMoE feed-forward layer on the GPU (model/moe.h on the device, spec §2):
//   logits = x · W_g^T                       fp32 GEMM on x widened to fp32 (the router keeps FP32)
//   (idx, w, scores) = router(logits, bias)  cuda::router_fwd (spec §2.1)
//   permutation: assignments sorted expert-major (stable), each expert's rows padded to the FP8
//     tile (128) under fp8; ONE device->host copy of the expert row offsets per layer and forward,
//     which the cuBLASLt grouped GEMMs need on the host (none under bf16 on sm_90: the grouped
//     kernels there read the offsets on the device, GpuGroupedLinear::device_offsets_only)
//   xp = permute(x); gu = xp · [W_gate;W_up]_e^T; h = swiglu(gu); out = h · W_down_e^T (grouped)
//   y = shared_experts(x) + sum_k w_k out[row(t,k)]    (combine_fwd, k in order)
// forward writes this layer's complementary sequence-wise balance loss (spec §2.3) to a device
// double and, when counting, adds the routed tokens per expert to the layer's device load counter
// (the auxiliary-loss-free bias update of spec §2.2 reads it).
//
// Parameters (CPU order, prefix e.g. "model.layers.3.mlp"): gate.weight [E, hidden] (fp32 master,
// fp32 GEMMs in every recipe), gate.e_score_correction_bias [E] (Buffer, noaux_tc only),
// experts.{e}.{gate,up,down}_proj.weight (stored stacked: gate|up [E][2*inter][hidden] and down
// [E][hidden][inter], for the grouped GEMMs), shared_experts.{gate,up,down}_proj.weight.
//
// Expert parallelism (spec §5.1): built inside an ExpertParallelScope naming an NCCL communicator
// over the EP group (ep ranks), the layer holds only this EP rank's routed experts
// [r*E/ep, (r+1)*E/ep) (registered under their global names, so params() lists only those) and a
// GpuExpertDispatch (parallel/gpu_expert_dispatch.h). Routing, the balance loss, the load count
// (all E experts, this rank's tokens) and the shared experts are unchanged; the permuted rows go to
// their experts' owners (payload T: fp32 under the fp32 recipe, BF16 under bf16; under fp8 with
// FP8 experts E4M3 codes + 1x128 scales quantized by the sender, GpuExpertDispatch::dispatch_fp8,
// fed to gate_up's FP8 grouped GEMM as they are, its Wgrad cache quantized from the dequantized
// rows; combine and the backward stay BF16), the local experts'
// grouped GEMMs run over the rows received from every EP rank (expert-major, sources in rank
// order; under fp8 each local expert's rows are padded to the FP8 tile), and combine brings the
// outputs back; the backward mirrors it. Every forward/backward is then collective over the EP
// group. Without a scope (the default) nothing changes: the single-GPU path is the same code.
// Overlap (GpuExpertDispatch's `beside` work, FRUGAL_EP_OVERLAP): the forward's shared experts run
// on ctx.stream while the dispatch's exchange runs on the dispatcher's side stream (the balance
// loss beside the combine's); the backward's shared experts beside combine_backward's exchange
// and the router's backward (the logits' gradient; under BF16 also the gate's GEMMs) beside
// dispatch_backward's. dx and y are accumulated in the serial order (shared, routed, gate), so the
// results are bitwise those of the serial path.
//
// Fused SwiGLU under fp8 (FP8 expert weights, bf16 activations, moe_intermediate_size a multiple of
// 128): the forward's SwiGLU, the FP8 cache of its input gu and down_proj's two FP8 operands of h
// are one kernel (cuda::swiglu_fwd_fp8_grouped, fed to GpuGroupedLinear::forward_quantized), and
// the backward's cache expansion, SwiGLU backward and gate_up_proj's two FP8 operands of dgu are
// another (cuda::swiglu_bwd_fp8_grouped, GpuGroupedLinear::backward_quantized); h, dgu and the
// dequantized gu are never stored. Results are bitwise those of the unfused sequence. The fused
// kernels are opt-in (FRUGAL_FUSED_SWIGLU_FP8=1, read once per process; set_fused_swiglu_fp8
// overrides it, for tests comparing the two): on an H200 at bench-1b's sizes they are slower than
// the unfused kernels they replace (559 against 510 µs forward, 795 against 687 backward, per
// layer; docs/PERFORMANCE.md). Same in the expert-parallel path.
//
// Accumulation rule: parameter gradients accumulate (+=); dx is assigned. The balance-loss
// gradient flows through the scores into the gate; the selection carries none. backward computes
// input and weight gradients together and releases the context; given a WeightGradQueue the
// experts' (routed and shared) weight-gradient GEMMs are queued there (gpu_weight_grad.h), the
// router gate's (fp32, [E, hidden]) stays in backward.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/moe/router.h"
#include "model/config.h"
#include "model/gpu/gpu_grouped_linear.h"
#include "model/gpu/gpu_mlp.h"
#include "parallel/communicator.h"
#include "parallel/gpu_expert_dispatch.h"

namespace frugal::gpu {

// While alive, every GpuMoe constructed on this thread is expert-parallel over `ep_comm` (an NCCL
// communicator over the EP group, input stream = the model's stream). GpuModel opens one around the
// construction of its blocks; nesting is an error.
class ExpertParallelScope {
 public:
  explicit ExpertParallelScope(Communicator* ep_comm);
  ~ExpertParallelScope();
  ExpertParallelScope(const ExpertParallelScope&) = delete;
  ExpertParallelScope& operator=(const ExpertParallelScope&) = delete;
  static Communicator* current();
};

// Whether the fp8 routed experts may run the fused SwiGLU kernels (see above): true when
// FRUGAL_FUSED_SWIGLU_FP8=1 (read on the first call), false otherwise, unless set_fused_swiglu_fp8
// set it for the process since.
bool fused_swiglu_fp8_enabled();
void set_fused_swiglu_fp8(bool enabled);
// How many routed-expert forwards and backwards ran the fused kernels in this process (every
// layer's forward and backward count one each), so tests and benches can tell which path ran.
int64_t fused_swiglu_fp8_runs();

template <class T>
class GpuMoe {
 public:
  struct Ctx {
    typename GpuGroupedLinear<T>::Ctx gate_up, down;
    typename GpuMlp<T>::Ctx shared;
    const T* x = nullptr;                       // [rows, hidden] layer input (caller-owned)
    cuda::DeviceArray<float> scores;            // [rows, E]
    cuda::DeviceArray<int32_t> topk_idx;        // [rows, K]
    cuda::DeviceArray<float> topk_weight;       // [rows, K]
    cuda::DeviceArray<int64_t> expert_offsets;  // [E+1] padded row offsets
    cuda::DeviceArray<int32_t> assignment_row;  // [rows*K]
    cuda::DeviceArray<int32_t> row_assignment;  // [padded rows bound]
    std::vector<int64_t> host_offsets;          // [E+1], empty when device offsets suffice
    cuda::DeviceArray<T> xp;                    // [padded, hidden] (fp32/bf16 experts)
    cuda::DeviceArray<T> gu;                    // [padded, 2*inter] (fp32/bf16 experts)
    cuda::DeviceArray<uint8_t> gu_q;            // [padded, 2*inter] FP8 (fp8 experts)
    cuda::DeviceArray<float> gu_scales;         // [ceil(2*inter/128)][padded]
    cuda::DeviceArray<T> h;                     // [padded, inter] (fp32/bf16 experts)
    cuda::DeviceArray<T> expert_out;            // [padded, hidden]
    int64_t rows = 0, batch = 0, seq = 0;
    double balance_alpha = 0;
    // Expert parallelism under fp8: received row -> padded row, and padded row -> received row
    // (-1 on padding rows), for the tile-aligned local layout.
    cuda::DeviceArray<int32_t> unpad_map, pad_map;
  };

  GpuMoe(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg, Recipe recipe);

  // x, y [batch*seq, hidden]; x stays owned by the caller, alive until backward.
  // balance_loss: one device double, written (0 when balance_alpha is 0).
  void forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t batch, int64_t seq,
               double balance_alpha, bool count_load, double* balance_loss);
  // dy -> dx [rows, hidden] (assigned). dloss_balance = d(total loss)/d(this layer's balance loss).
  void backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx, double dloss_balance,
                WeightGradQueue* deferred = nullptr) const;

  void refresh(cuda::DeviceContext& ctx);
  // Tokens routed to each expert since the last reset (synchronous copy).
  std::vector<int64_t> load(cuda::DeviceContext& ctx) const;
  void reset_load(cuda::DeviceContext& ctx);
  // The device counter load() reads (int64 [n_routed_experts]).
  DeviceLoadCounter load_counter() { return {load_.data(), router_.n_experts}; }
  // b_i += gamma * sign(mean_load - load_i) on the device, then the counter restarts.
  void update_bias(cuda::DeviceContext& ctx, double gamma);
  bool has_bias() const { return bias_.value != nullptr; }
  // Routed experts held here: [first_local_expert(), first_local_expert() + local_experts()).
  int64_t first_local_expert() const { return first_expert_; }
  int64_t local_experts() const { return local_experts_; }
  bool expert_parallel() const { return dispatch_ != nullptr; }
  const std::string& prefix() const { return prefix_; }

 private:
  std::string prefix_;
  cpu::RouterParams router_;
  int64_t hidden_ = 0, inter_ = 0;
  bool has_shared_ = false;
  GpuLinear<float> gate_;
  ParamRegistry::Storage bias_;
  // Expert-parallel forward / backward of the routed experts (see above).
  void forward_ep(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, bool count_load,
                  double* balance_loss);
  void backward_ep(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx, double dloss_balance,
                   WeightGradQueue* deferred) const;
  // The router's backward in two parts (see gpu_moe.cc): dlogits [rows, E], then the gate's.
  cuda::DeviceArray<float> logits_backward(cuda::DeviceContext& ctx, const Ctx& c,
                                           const float* dweights, double dloss_balance) const;
  cuda::DeviceArray<float> gate_backward(cuda::DeviceContext& ctx, const Ctx& c,
                                         const float* dlogits, T* dx) const;
  // Whether this layer's experts run the fused SwiGLU kernels now (fp8, bf16, inter % 128 == 0,
  // fused_swiglu_fp8_enabled()).
  bool fused_swiglu_fp8() const;
  // The fused path's forward from gu [rows, 2*inter] (offsets.rows rows): the FP8 cache of gu into
  // c.gu_q / c.gu_scales and down_proj's output out [rows, hidden] (see gpu_moe.cc).
  void swiglu_down_forward_fp8(cuda::DeviceContext& ctx, Ctx& c, const T* gu, T* out,
                               const GroupOffsets& offsets) const;
  // down_proj, SwiGLU and gate_up_proj backward of the local experts (see gpu_moe.cc).
  cuda::DeviceArray<T> experts_backward(cuda::DeviceContext& ctx, Ctx& c,
                                        cuda::DeviceArray<T>& d_out, int64_t rows,
                                        int64_t capacity, const GroupOffsets& offsets,
                                        WeightGradQueue* deferred) const;

  int64_t first_expert_ = 0, local_experts_ = 0;
  std::unique_ptr<GpuExpertDispatch> dispatch_;  // expert parallelism only
  GpuGroupedLinear<T> gate_up_, down_;  // the local experts (all without expert parallelism)
  GpuMlp<T> shared_;
  cuda::DeviceArray<int64_t> load_;       // [E]
  PinnedArray<int64_t> offsets_staging_;  // [E+1]
};

extern template class GpuMoe<float>;
extern template class GpuMoe<bf16>;

}  // namespace frugal::gpu
