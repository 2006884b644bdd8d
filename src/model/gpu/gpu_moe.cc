// GpuMoe forward and backward (see gpu_moe.h).
#ifdef FRUGAL_HAVE_CUDA

#include "model/gpu/gpu_moe.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/gpu_profiler.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/moe/fp8_rows.h"
#include "kernels/moe/moe_cuda.h"
#include "kernels/quant/quant.h"
#include "kernels/swiglu/swiglu.h"
#include "model/gpu/gpu_model_kernels.h"
#include "model/moe.h"

namespace frugal::gpu {
namespace {

thread_local Communicator* current_ep_comm = nullptr;

// gate_up_proj's FP8 forward over rows that arrived quantized (GpuExpertDispatch::dispatch_fp8):
// q [received, in] E4M3 and scales [in/128][received] (expert-major over the local experts) ->
// gu [rows, out] over the tile-padded local layout (offsets.rows rows; pad_map [rows]: padded row
// -> received row, -1 on padding rows). What the grouped GEMM reads is bit for bit what
// GpuGroupedLinear's forward would quantize from the padded BF16 rows (the same quantizer ran on
// the sender; codes 0 and the scale of a zero row on padding rows); only the scale layout changes
// (grouped: expert g's scales [in/128][rows_g] at offsets[g]*in/128). The Wgrad cache (x_g^T in
// 128x1 tiles, GpuGroupedLinear::Ctx) is quantized from the rows dequantized to fp32, as
// DeepSeek-V3 does (the BF16 rows never reach this rank): the one place where the expert-parallel
// fp8 path differs from the single-GPU one (gate_up's weight gradient, by FP8 rounding).
void gate_up_forward_fp8_dispatched(cuda::DeviceContext& ctx, const GpuWeight& weight,
                                    GpuGroupedLinear<bf16>::Ctx& c, const uint8_t* q,
                                    const float* scales, int64_t received, const int32_t* pad_map,
                                    const GroupOffsets& offsets, bf16* gu) {
  const int64_t in = weight.in(), out = weight.out(), rows = offsets.rows,
                tiles = in / kFp8BlockSize;
  const cudaStream_t stream = ctx.stream;
  FRUGAL_CHECK(weight.precision() == GemmPrecision::Fp8 && in % kFp8BlockSize == 0 &&
                   rows % cuda::kFp8GroupRowAlign == 0 && rows >= received && received > 0,
               "gate_up FP8 forward from dispatched rows: {} x {} weights, {} padded rows for {} "
               "received",
               out, in, rows, received);
  c = {};
  {
    cuda::DeviceArray<uint8_t> q_padded(ctx, rows * in);        // [rows, in]
    cuda::DeviceArray<float> scales_grouped(ctx, tiles * rows);  // per expert [tiles][rows_g]
    cuda::gather_byte_rows(q_padded.data(), in, q, in, pad_map, rows, in, stream);
    const float zero_row_scale = fp8_scale_from_amax(0.0f, kFp8PowerOfTwoScales);
    for (int64_t g = 0; g < offsets.groups; ++g) {
      const int64_t base = offsets.host[g], group_rows = offsets.host[g + 1] - base;
      if (group_rows > 0)
        cuda::gather_scales(scales_grouped.data() + base * tiles, 1, group_rows, scales, 1,
                            received, pad_map + base, group_rows, tiles, zero_row_scale, stream);
    }
    grouped_fp8_nt(ctx, offsets, out, in, q_padded.data(), scales_grouped.data(), weight.fp8(),
                   weight.fp8_scales(), gu);  // [rows, out]
  }
  cuda::DeviceArray<float> x_padded(ctx, rows * in);  // [rows, in], zero padding rows
  {
    cuda::DeviceArray<float> x_received(ctx, received * in);  // [received, in]
    cuda::dequantize_act_1x128<float>(x_received.data(), q, scales, received, in, stream);
    cuda::permute_rows<float>(x_padded.data(), x_received.data(), pad_map, rows, 1, in, stream);
  }
  c.xT_q = cuda::DeviceArray<uint8_t>(ctx, rows * in);
  c.xT_scales = cuda::DeviceArray<float>(ctx, rows / kFp8BlockSize * in);
  cuda::transpose_quantize_1x128_grouped<float>(c.xT_q.data(), c.xT_scales.data(), x_padded.data(),
                                                offsets.device, offsets.groups, rows, in,
                                                kFp8PowerOfTwoScales, stream);
}

// The process-wide switch of the fused SwiGLU kernels (gpu_moe.h): off unless
// FRUGAL_FUSED_SWIGLU_FP8=1, read on first use.
std::atomic<bool>& fused_swiglu_fp8_flag() {
  static std::atomic<bool> flag{[] {
    const char* value = std::getenv("FRUGAL_FUSED_SWIGLU_FP8");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }()};
  return flag;
}

std::atomic<int64_t> fused_swiglu_fp8_run_count{0};

}  // namespace

int64_t fused_swiglu_fp8_runs() {
  return fused_swiglu_fp8_run_count.load(std::memory_order_relaxed);
}

bool fused_swiglu_fp8_enabled() {
  return fused_swiglu_fp8_flag().load(std::memory_order_relaxed);
}

void set_fused_swiglu_fp8(bool enabled) {
  fused_swiglu_fp8_flag().store(enabled, std::memory_order_relaxed);
}

ExpertParallelScope::ExpertParallelScope(Communicator* ep_comm) {
  FRUGAL_CHECK(current_ep_comm == nullptr, "ExpertParallelScope: scopes do not nest");
  current_ep_comm = ep_comm;
}

ExpertParallelScope::~ExpertParallelScope() {
  current_ep_comm = nullptr;
}

Communicator* ExpertParallelScope::current() {
  return current_ep_comm;
}

template <class T>
GpuMoe<T>::GpuMoe(ParamRegistry& registry, const std::string& prefix, const ModelConfig& cfg,
                  Recipe recipe)
    : prefix_(prefix),
      router_(router_params(cfg)),
      hidden_(cfg.hidden_size),
      inter_(cfg.moe_intermediate_size) {
  FRUGAL_CHECK(hidden_ > 0 && inter_ > 0 && cfg.n_shared_experts >= 0,
               "{}: bad MoE sizes (hidden {}, moe_intermediate_size {}, n_shared_experts {})",
               prefix, hidden_, inter_, cfg.n_shared_experts);
  cuda::DeviceContext& ctx = registry.context();
  const int64_t E = router_.n_experts, H = hidden_, I = inter_;
  // Registration in the CPU order: gate, bias, experts, shared experts.
  gate_ = GpuLinear<float>(registry, H, E, GemmPrecision::Fp32);
  gate_.register_as(registry, prefix + ".gate.weight");
  if (router_.topk_method == cpu::TopkMethod::NoauxTc) {
    bias_ = registry.allocate(E, /*trainable=*/false);
    registry.add(prefix + ".gate.e_score_correction_bias", {E}, ParamKind::Buffer, bias_.value,
                 nullptr);
  }
  // One precision for both expert matrices, so they share the permutation's row padding.
  const GemmPrecision expert_precision = block_linear_precision(recipe, H, I);
  local_experts_ = E;
  if (Communicator* ep_comm = ExpertParallelScope::current();
      ep_comm != nullptr && ep_comm->size() > 1) {
    dispatch_ = std::make_unique<GpuExpertDispatch>(ctx, *ep_comm, E, H);  // checks E % ep
    first_expert_ = dispatch_->first_local_expert();
    local_experts_ = dispatch_->local_experts();
  }
  const int64_t EL = local_experts_;
  gate_up_ = GpuGroupedLinear<T>(registry, EL, H, 2 * I, expert_precision);
  down_ = GpuGroupedLinear<T>(registry, EL, I, H, expert_precision);
  for (int64_t l = 0; l < EL; ++l) {  // local expert l is global expert first_expert_ + l
    const std::string name = prefix + ".experts." + std::to_string(first_expert_ + l);
    const int64_t gu_offset = l * 2 * I * H, down_offset = l * H * I;
    GpuWeight& gu = gate_up_.weight();
    registry.add(name + ".gate_proj.weight", {I, H}, ParamKind::Matrix, gu.value() + gu_offset,
                 gu.grad() + gu_offset);
    registry.add(name + ".up_proj.weight", {I, H}, ParamKind::Matrix,
                 gu.value() + gu_offset + I * H, gu.grad() + gu_offset + I * H);
    registry.add(name + ".down_proj.weight", {H, I}, ParamKind::Matrix,
                 down_.weight().value() + down_offset, down_.weight().grad() + down_offset);
  }
  if (cfg.n_shared_experts > 0) {
    has_shared_ = true;
    shared_ = GpuMlp<T>(registry, prefix + ".shared_experts", H, I * cfg.n_shared_experts, recipe);
  }
  load_ = cuda::DeviceArray<int64_t>(ctx, E);
  zero_async(ctx, load_.data(), load_.bytes());
  offsets_staging_ = PinnedArray<int64_t>(E + 1);
}

template <class T>
void GpuMoe<T>::refresh(cuda::DeviceContext& ctx) {
  gate_up_.refresh(ctx);
  down_.refresh(ctx);
  if (has_shared_) shared_.refresh(ctx);
}

template <class T>
void GpuMoe<T>::forward(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, int64_t batch,
                        int64_t seq, double balance_alpha, bool count_load, double* balance_loss) {
  const int64_t rows = batch * seq, E = router_.n_experts, K = router_.top_k, H = hidden_,
                I = inter_;
  const cudaStream_t stream = ctx.stream;
  c = Ctx{};
  c.x = x;
  c.rows = rows;
  c.batch = batch;
  c.seq = seq;
  c.balance_alpha = balance_alpha;
  zero_async(ctx, balance_loss, sizeof(double));
  if (rows == 0) return;

  // Router in fp32.
  cuda::ScopedSection route_section(stream, "moe.route+permute.fwd");
  {
    AsFloat<T> x32(ctx, x, rows * H);
    cuda::DeviceArray<float> logits(ctx, rows * E);  // [rows, E]
    typename GpuLinear<float>::Ctx gate_ctx;  // the backward widens x again instead of keeping it
    gate_.forward(ctx, gate_ctx, x32.get(), logits.data(), rows);
    c.scores = cuda::DeviceArray<float>(ctx, rows * E);
    c.topk_idx = cuda::DeviceArray<int32_t>(ctx, rows * K);
    c.topk_weight = cuda::DeviceArray<float>(ctx, rows * K);
    cuda::router_fwd(c.topk_idx.data(), c.topk_weight.data(), c.scores.data(), logits.data(),
                     bias_.value, rows, router_, stream);  // [rows, K]
  }

  if (dispatch_ != nullptr) {
    route_section.close();
    forward_ep(ctx, c, x, y, count_load, balance_loss);
    return;
  }

  // Permutation; the host learns the expert row offsets (the layer's one sync) unless the grouped
  // GEMMs read them on the device only (bf16 on sm_90), where the row count rows*K is known.
  const bool fp8 = gate_up_.weight().precision() == GemmPrecision::Fp8;
  const bool host_offsets = !(gate_up_.device_offsets_only() && down_.device_offsets_only());
  const int64_t row_align = fp8 ? cuda::kFp8GroupRowAlign : 1;
  const int64_t bound = rows * K + E * (row_align - 1);  // padded rows, at most
  c.expert_offsets = cuda::DeviceArray<int64_t>(ctx, E + 1);
  c.assignment_row = cuda::DeviceArray<int32_t>(ctx, rows * K);
  c.row_assignment = cuda::DeviceArray<int32_t>(ctx, bound);
  {
    cuda::DeviceArray<int64_t> counts(ctx, E);
    cuda::DeviceArray<uint8_t> workspace(
        ctx, static_cast<int64_t>(cuda::expert_permutation_workspace_bytes(rows, K, E)));
    cuda::build_expert_permutation(c.expert_offsets.data(), counts.data(),
                                   count_load ? load_.data() : nullptr, c.assignment_row.data(),
                                   c.row_assignment.data(), c.topk_idx.data(), rows, K, E,
                                   row_align, workspace.data(), stream);
    if (host_offsets) {
      cuda::ScopedSection sync_section(stream, "host_sync");
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(offsets_staging_.data(), c.expert_offsets.data(),
                                        static_cast<size_t>(E + 1) * sizeof(int64_t),
                                        cudaMemcpyDeviceToHost, stream));
      ctx.synchronize();
    }
  }
  c.host_offsets.clear();
  if (host_offsets)
    c.host_offsets.assign(offsets_staging_.data(), offsets_staging_.data() + E + 1);
  const int64_t padded = host_offsets ? c.host_offsets[E] : rows * K;  // row_align 1: exact
  FRUGAL_CHECK(padded >= rows * K && padded <= bound,
               "{}: the permutation reports {} rows for {} assignments (at most {})", prefix_,
               padded, rows * K, bound);
  const GroupOffsets offsets{host_offsets ? c.host_offsets.data() : nullptr,
                             c.expert_offsets.data(), E, padded};

  // Routed experts over their row blocks. Under FP8 the permuted rows are never written: gate_up's
  // two FP8 operands are quantized straight from the rows of x they gather (the same bits).
  const bool gather_fp8 = std::is_same_v<T, bf16> && fp8;
  cuda::DeviceArray<T> xp;  // [padded, hidden], bf16/fp32 only
  if (!gather_fp8) {
    xp = cuda::DeviceArray<T>(ctx, bound * H);
    cuda::permute_rows<T>(xp.data(), x, c.row_assignment.data(), padded, K, H, stream);
  }
  route_section.close();
  cuda::ScopedSection experts_section(stream, "moe.experts.fwd");
  cuda::DeviceArray<T> gu(ctx, bound * 2 * I);  // [padded, 2*inter]
  if (gather_fp8)
    gate_up_.forward_gathered(ctx, c.gate_up, x, c.row_assignment.data(), K, gu.data(), offsets);
  else
    gate_up_.forward(ctx, c.gate_up, xp.data(), gu.data(), offsets);
  c.expert_out = cuda::DeviceArray<T>(ctx, bound * H);  // [padded, hidden]
  if (fused_swiglu_fp8()) {  // SwiGLU, the gu cache and h's FP8 operands in one kernel
    swiglu_down_forward_fp8(ctx, c, gu.data(), c.expert_out.data(), offsets);
  } else {
    cuda::DeviceArray<T> h(ctx, bound * I);  // [padded, inter]
    cuda::swiglu_fwd<T>(h.data(), gu.data(), gu.data() + I, padded, I, 2 * I, stream);
    down_.forward(ctx, c.down, h.data(), c.expert_out.data(), offsets);
    if (gate_up_.keeps_input_pointer()) c.xp = std::move(xp);
    if (fp8) {                                  // the SwiGLU input cached in FP8 (spec §4.4)
      if constexpr (std::is_same_v<T, bf16>) {  // fp8 weights only meet bf16 activations
        c.gu_q = cuda::DeviceArray<uint8_t>(ctx, padded * 2 * I);
        c.gu_scales = cuda::DeviceArray<float>(ctx, fp8_block_count(2 * I) * padded);
        cuda::quantize_act_1x128<T>(c.gu_q.data(), c.gu_scales.data(), gu.data(), padded, 2 * I,
                                    kFp8PowerOfTwoScales, stream);
      }
    } else {
      c.gu = std::move(gu);
    }
    if (down_.keeps_input_pointer()) c.h = std::move(h);
  }
  experts_section.close();

  // Shared experts, then the weighted combine.
  if (has_shared_) {
    cuda::ScopedSection section(stream, "moe.shared.fwd");
    shared_.forward(ctx, c.shared, x, y, rows);  // [rows, hidden]
  }
  cuda::ScopedSection combine_section(stream, "moe.combine.fwd");
  cuda::combine_fwd<T>(y, c.expert_out.data(), c.topk_weight.data(), c.assignment_row.data(), rows,
                       K, H, /*accumulate=*/has_shared_, stream);

  if (balance_alpha != 0.0)
    cuda::seq_balance_loss_fwd(balance_loss, c.scores.data(), c.topk_idx.data(), batch, seq, E, K,
                               balance_alpha, stream);
}

template <class T>
bool GpuMoe<T>::fused_swiglu_fp8() const {
  return std::is_same_v<T, bf16> && gate_up_.weight().precision() == GemmPrecision::Fp8 &&
         down_.weight().precision() == GemmPrecision::Fp8 && inter_ % kFp8BlockSize == 0 &&
         fused_swiglu_fp8_enabled();
}

// gu [rows, 2*inter] -> c.gu_q [rows, 2*inter], c.gu_scales [2*inter/128][rows] (the FP8 cache of
// the SwiGLU input, spec §4.4) and h's Fprop operand and Wgrad cache in one kernel, then
// down_proj's FP8 GEMM from them: out [rows, hidden]. Bitwise the unfused swiglu_fwd, down_.forward
// and quantize_act_1x128 of gu.
template <class T>
void GpuMoe<T>::swiglu_down_forward_fp8(cuda::DeviceContext& ctx, Ctx& c, const T* gu, T* out,
                                        const GroupOffsets& offsets) const {
  if constexpr (std::is_same_v<T, bf16>) {
    const int64_t rows = offsets.rows, I = inter_;
    c.gu_q = cuda::DeviceArray<uint8_t>(ctx, rows * 2 * I);
    c.gu_scales = cuda::DeviceArray<float>(ctx, fp8_block_count(2 * I) * rows);
    cuda::DeviceArray<uint8_t> hT_q(ctx, rows * I);  // per expert [inter, rows_e]
    cuda::DeviceArray<float> hT_scales(ctx, rows / kFp8BlockSize * I);
    cuda::DeviceArray<uint8_t> h_q(ctx, rows * I);  // [rows, inter]
    cuda::DeviceArray<float> h_scales(ctx, fp8_block_count(I) * rows);
    cuda::swiglu_fwd_fp8_grouped(c.gu_q.data(), c.gu_scales.data(), h_q.data(), h_scales.data(),
                                 hT_q.data(), hT_scales.data(), gu, offsets.device, offsets.groups,
                                 rows, I, kFp8PowerOfTwoScales, ctx.stream);
    fused_swiglu_fp8_run_count.fetch_add(1, std::memory_order_relaxed);
    down_.forward_quantized(ctx, c.down, h_q.data(), h_scales.data(), std::move(hT_q),
                            std::move(hT_scales), out, offsets);  // [rows, hidden]
  } else {
    (void)ctx, (void)c, (void)gu, (void)out, (void)offsets;
    fail("{}: the fused FP8 SwiGLU needs bf16 activations", prefix_);
  }
}

// The routed experts' backward over their grouped rows: d_out [rows, hidden] (the gradient of the
// experts' output; freed here) -> the gradient of their input [rows, hidden], through down_proj,
// SwiGLU (its FP8-cached input expanded first under fp8) and gate_up_proj. Frees the saved h, gu
// and xp. `capacity` >= rows sizes the buffers (the permutation's padded bound).
template <class T>
cuda::DeviceArray<T> GpuMoe<T>::experts_backward(cuda::DeviceContext& ctx, Ctx& c,
                                                 cuda::DeviceArray<T>& d_out, int64_t rows,
                                                 int64_t capacity,
                                                 const GroupOffsets& offsets,
                                                 WeightGradQueue* deferred) const {
  const cudaStream_t stream = ctx.stream;
  const int64_t H = hidden_, I = inter_;
  cuda::DeviceArray<T> dh(ctx, capacity * I);  // [rows, inter]
  down_.backward(ctx, c.down, d_out.data(), dh.data(), offsets, deferred);
  d_out.reset();
  c.h.reset();
  if (fused_swiglu_fp8()) {
    if constexpr (std::is_same_v<T, bf16>) {
      // dgu's two FP8 operands straight from dh and the gu cache (no dgu, no dequantized gu).
      FRUGAL_CHECK(c.gu_q.data() != nullptr && rows == offsets.rows,
                   "{}: no FP8 SwiGLU input cached for the fused backward", prefix_);
      cuda::DeviceArray<uint8_t> dguT_q(ctx, rows * 2 * I);  // per expert [2*inter, rows_e]
      cuda::DeviceArray<float> dguT_scales(ctx, rows / kFp8BlockSize * 2 * I);
      cuda::DeviceArray<uint8_t> dgu_q(ctx, rows * 2 * I);  // [rows, 2*inter]
      cuda::DeviceArray<float> dgu_scales(ctx, fp8_block_count(2 * I) * rows);
      cuda::swiglu_bwd_fp8_grouped(dgu_q.data(), dgu_scales.data(), dguT_q.data(),
                                   dguT_scales.data(), dh.data(), c.gu_q.data(),
                                   c.gu_scales.data(), offsets.device, offsets.groups, rows, I,
                                   kFp8PowerOfTwoScales, stream);
      fused_swiglu_fp8_run_count.fetch_add(1, std::memory_order_relaxed);
      dh.reset();
      c.gu_q.reset();
      c.gu_scales.reset();
      cuda::DeviceArray<T> dxp(ctx, capacity * H);  // [rows, hidden]
      gate_up_.backward_quantized(ctx, c.gate_up, dgu_q.data(), dgu_scales.data(),
                                  std::move(dguT_q), std::move(dguT_scales), dxp.data(), offsets,
                                  deferred);
      c.xp.reset();
      return dxp;
    }
  }
  cuda::DeviceArray<T> gu_dequantized;
  const T* gu = c.gu.data();
  if constexpr (std::is_same_v<T, bf16>) {
    if (gu == nullptr) {  // fp8: expand the FP8 cache of the SwiGLU input
      gu_dequantized = cuda::DeviceArray<T>(ctx, rows * 2 * I);
      cuda::dequantize_act_1x128<T>(gu_dequantized.data(), c.gu_q.data(), c.gu_scales.data(), rows,
                                    2 * I, stream);
      gu = gu_dequantized.data();
    }
  }
  FRUGAL_CHECK(gu != nullptr, "{}: no saved SwiGLU input", prefix_);
  cuda::DeviceArray<T> dgu(ctx, capacity * 2 * I);  // [rows, 2*inter] = [dg | du]
  cuda::swiglu_bwd<T>(dgu.data(), dgu.data() + I, dh.data(), gu, gu + I, rows, I, 2 * I, stream);
  dh.reset();
  gu_dequantized.reset();
  c.gu.reset();
  c.gu_q.reset();
  c.gu_scales.reset();
  cuda::DeviceArray<T> dxp(ctx, capacity * H);  // [rows, hidden]
  gate_up_.backward(ctx, c.gate_up, dgu.data(), dxp.data(), offsets, deferred);
  c.xp.reset();
  return dxp;
}

template <class T>
void GpuMoe<T>::backward(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx,
                         double dloss_balance, WeightGradQueue* deferred) const {
  const int64_t rows = c.rows, E = router_.n_experts, K = router_.top_k, H = hidden_;
  const cudaStream_t stream = ctx.stream;
  if (rows == 0) {
    c = Ctx{};
    return;
  }
  FRUGAL_CHECK(c.scores.data() != nullptr, "GpuMoe::backward without a forward");
  if (dispatch_ != nullptr) {
    backward_ep(ctx, c, dy, dx, dloss_balance, deferred);
    c = Ctx{};
    return;
  }
  if (has_shared_) {
    cuda::ScopedSection section(stream, "moe.shared.bwd");
    shared_.backward(ctx, c.shared, dy, dx, false, deferred);
  } else {
    zero_async(ctx, dx, static_cast<size_t>(rows * H) * sizeof(T));
  }

  cuda::DeviceArray<float> dweights(ctx, rows * K);  // [rows, K]
  {
    const bool host_offsets = !c.host_offsets.empty();  // else bf16 on sm_90: rows*K rows
    const int64_t padded = host_offsets ? c.host_offsets[E] : rows * K;
    const int64_t bound = c.row_assignment.size();
    const GroupOffsets offsets{host_offsets ? c.host_offsets.data() : nullptr,
                               c.expert_offsets.data(), E, padded};
    cuda::ScopedSection combine_section(stream, "moe.combine.bwd");
    cuda::DeviceArray<T> d_out(ctx, bound * H);  // [padded, hidden]
    cuda::combine_bwd<T>(d_out.data(), dweights.data(), dy, c.expert_out.data(),
                         c.topk_weight.data(), c.assignment_row.data(), c.row_assignment.data(),
                         padded, rows, K, H, stream);
    c.expert_out.reset();
    combine_section.close();
    cuda::ScopedSection experts_section(stream, "moe.experts.bwd");
    cuda::DeviceArray<T> dxp = experts_backward(ctx, c, d_out, padded, bound, offsets, deferred);
    experts_section.close();
    cuda::ScopedSection unpermute_section(stream, "moe.unpermute.bwd");
    cuda::unpermute_sum<T>(dx, dxp.data(), c.assignment_row.data(), rows, K, H,
                           /*accumulate=*/true, stream);
  }

  // Router: routing-weight and balance-loss gradients into the logits, then the gate.
  cuda::ScopedSection route_section(stream, "moe.route+permute.bwd");
  cuda::DeviceArray<float> dlogits = logits_backward(ctx, c, dweights.data(), dloss_balance);
  cuda::DeviceArray<float> dx_gate = gate_backward(ctx, c, dlogits.data(), dx);
  if constexpr (!std::is_same_v<T, float>)
    cuda::add_into<T, float>(dx, dx_gate.data(), rows * H, stream);
  c = Ctx{};
}

// The routing-weight and balance-loss gradients into the logits: dlogits [rows, E].
template <class T>
cuda::DeviceArray<float> GpuMoe<T>::logits_backward(cuda::DeviceContext& ctx, const Ctx& c,
                                                    const float* dweights,
                                                    double dloss_balance) const {
  const int64_t rows = c.rows, E = router_.n_experts, K = router_.top_k;
  cuda::DeviceArray<float> dscores;
  if (c.balance_alpha != 0.0 && dloss_balance != 0.0) {
    dscores = cuda::DeviceArray<float>(ctx, rows * E);
    cuda::seq_balance_loss_bwd(dscores.data(), c.scores.data(), c.topk_idx.data(), c.batch, c.seq,
                               E, K, c.balance_alpha, dloss_balance, false, ctx.stream);
  }
  cuda::DeviceArray<float> dlogits(ctx, rows * E);  // [rows, E]
  cuda::router_bwd(dlogits.data(), dweights, dscores.data(), c.scores.data(), c.topk_idx.data(),
                   rows, router_, ctx.stream);
  return dlogits;
}

// The gate's backward: its weight gradient (+=) and its part of dx, which under fp32 is added into
// dx by the GEMM (nothing returned) and otherwise returned as fp32 [rows, hidden] for the caller
// to add into dx.
template <class T>
cuda::DeviceArray<float> GpuMoe<T>::gate_backward(cuda::DeviceContext& ctx, const Ctx& c,
                                                  const float* dlogits, T* dx) const {
  const int64_t rows = c.rows, H = hidden_;
  AsFloat<T> x32(ctx, c.x, rows * H);
  typename GpuLinear<float>::Ctx gate_ctx;
  gate_ctx.x = x32.get();
  gate_ctx.rows = rows;
  if constexpr (std::is_same_v<T, float>) {
    gate_.backward(ctx, gate_ctx, dlogits, dx, /*accumulate_dx=*/true);
    return {};
  } else {
    (void)dx;
    cuda::DeviceArray<float> dx_gate(ctx, rows * H);  // [rows, hidden]
    gate_.backward(ctx, gate_ctx, dlogits, dx_gate.data(), false);
    return dx_gate;
  }
}

template <class T>
void GpuMoe<T>::forward_ep(cuda::DeviceContext& ctx, Ctx& c, const T* x, T* y, bool count_load,
                           double* balance_loss) {
  const int64_t rows = c.rows, E = router_.n_experts, K = router_.top_k, H = hidden_, I = inter_,
                EL = local_experts_;
  const cudaStream_t stream = ctx.stream;
  GpuExpertDispatch& exchange = *dispatch_;
  cuda::ScopedSection dispatch_section(stream, "moe.dispatch.fwd");
  // The layouts (collective, one host sync); the load counts this rank's tokens on all experts.
  exchange.plan(c.topk_idx.data(), rows, K, count_load ? load_.data() : nullptr);
  const int64_t received = exchange.received_rows();
  const bool fp8 = gate_up_.weight().precision() == GemmPrecision::Fp8;
  // Local layout: the received rows, expert-major; under fp8 each expert's block padded to the
  // FP8 tile with zero rows (pad_map: padded row -> received row or -1; unpad_map: the inverse).
  const std::vector<int64_t>& received_offsets = exchange.local_offsets();  // [EL+1]
  c.host_offsets.assign(static_cast<size_t>(EL + 1), 0);
  for (int64_t l = 0; l < EL; ++l) {
    const int64_t n = received_offsets[l + 1] - received_offsets[l];
    const int64_t block =
        fp8 ? (n + cuda::kFp8GroupRowAlign - 1) / cuda::kFp8GroupRowAlign * cuda::kFp8GroupRowAlign
            : n;
    c.host_offsets[l + 1] = c.host_offsets[l] + block;
  }
  const int64_t local_rows = c.host_offsets[EL];
  FRUGAL_CHECK(received_offsets[EL] == received && local_rows >= received,
               "{}: the dispatch reports {} received rows but its expert offsets end at {}",
               prefix_, received, received_offsets[EL]);
  c.expert_offsets = cuda::DeviceArray<int64_t>(ctx, EL + 1);
  // Pageable host source: the copy is staged before cudaMemcpyAsync returns.
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(c.expert_offsets.data(), c.host_offsets.data(),
                                    static_cast<size_t>(EL + 1) * sizeof(int64_t),
                                    cudaMemcpyHostToDevice, stream));
  if (fp8 && received > 0) {
    std::vector<int32_t> pad(static_cast<size_t>(local_rows), -1),
        unpad(static_cast<size_t>(received));
    for (int64_t l = 0; l < EL; ++l)
      for (int64_t i = received_offsets[l]; i < received_offsets[l + 1]; ++i) {
        const int64_t p = c.host_offsets[l] + (i - received_offsets[l]);
        pad[p] = static_cast<int32_t>(i);
        unpad[i] = static_cast<int32_t>(p);
      }
    c.pad_map = cuda::DeviceArray<int32_t>(ctx, local_rows);
    c.unpad_map = cuda::DeviceArray<int32_t>(ctx, received);
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(c.pad_map.data(), pad.data(), c.pad_map.bytes(),
                                      cudaMemcpyHostToDevice, stream));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(c.unpad_map.data(), unpad.data(), c.unpad_map.bytes(),
                                      cudaMemcpyHostToDevice, stream));
  }
  // The shared experts (y assigned) run beside the dispatch's exchange (gpu_expert_dispatch.h);
  // every buffer the exchange touches (xp, or xq and its scales, here) is allocated before it.
  // Under fp8 (BF16 activations, hidden a multiple of 128) the rows travel quantized (spec §5):
  // xq [received, hidden] E4M3, xq_scales [hidden/128][received], fed to gate_up's FP8 GEMM as
  // they are; otherwise BF16/fp32 rows (quantized here by the GEMM under fp8).
  const auto shared_beside = [&] {
    if (!has_shared_) return;
    cuda::ScopedSection section(stream, "moe.shared.fwd");
    shared_.forward(ctx, c.shared, x, y, rows);  // [rows, hidden]
  };
  bool fp8_dispatch = false;
  cuda::DeviceArray<T> xp;
  cuda::DeviceArray<uint8_t> xq;
  cuda::DeviceArray<float> xq_scales;
  if constexpr (std::is_same_v<T, bf16>) fp8_dispatch = fp8 && H % kFp8BlockSize == 0;
  if (fp8_dispatch) {
    if constexpr (std::is_same_v<T, bf16>) {
      xq = cuda::DeviceArray<uint8_t>(ctx, std::max<int64_t>(received, 1) * H);
      xq_scales =
          cuda::DeviceArray<float>(ctx, std::max<int64_t>(received, 1) * (H / kFp8BlockSize));
      exchange.dispatch_fp8(xq.data(), xq_scales.data(), x, kFp8PowerOfTwoScales, shared_beside);
    }
  } else {
    xp = cuda::DeviceArray<T>(ctx, std::max<int64_t>(received, 1) * H);  // [received, hidden]
    exchange.dispatch(xp.data(), x, shared_beside);
  }
  if (fp8 && !fp8_dispatch && received > 0) {  // [local_rows, hidden] tile-padded
    cuda::DeviceArray<T> padded(ctx, local_rows * H);
    cuda::permute_rows<T>(padded.data(), xp.data(), c.pad_map.data(), local_rows, 1, H, stream);
    xp = std::move(padded);
  }
  dispatch_section.close();

  // The local experts over the rows every EP rank sent (none: no GEMM, the collectives still run).
  cuda::DeviceArray<T> expert_out(ctx, std::max<int64_t>(received, 1) * H);  // [received, hidden]
  if (local_rows > 0) {
    cuda::ScopedSection experts_section(stream, "moe.experts.fwd");
    const GroupOffsets offsets{c.host_offsets.data(), c.expert_offsets.data(), EL, local_rows};
    cuda::DeviceArray<T> gu(ctx, local_rows * 2 * I);  // [local_rows, 2*inter]
    if (fp8_dispatch) {
      if constexpr (std::is_same_v<T, bf16>) {
        gate_up_forward_fp8_dispatched(ctx, gate_up_.weight(), c.gate_up, xq.data(),
                                       xq_scales.data(), received, c.pad_map.data(), offsets,
                                       gu.data());
        xq.reset();
        xq_scales.reset();
      }
    } else {
      gate_up_.forward(ctx, c.gate_up, xp.data(), gu.data(), offsets);
    }
    cuda::DeviceArray<T> out(ctx, local_rows * H);  // [local_rows, hidden]
    cuda::DeviceArray<T> h;
    const bool fused = fused_swiglu_fp8();
    if (fused) {  // SwiGLU, the gu cache and h's FP8 operands in one kernel
      swiglu_down_forward_fp8(ctx, c, gu.data(), out.data(), offsets);
    } else {
      h = cuda::DeviceArray<T>(ctx, local_rows * I);  // [local_rows, inter]
      cuda::swiglu_fwd<T>(h.data(), gu.data(), gu.data() + I, local_rows, I, 2 * I, stream);
      down_.forward(ctx, c.down, h.data(), out.data(), offsets);
    }
    if (gate_up_.keeps_input_pointer()) c.xp = std::move(xp);
    if (fp8) {
      if constexpr (std::is_same_v<T, bf16>) {
        if (!fused) {  // else the fused kernel wrote the cache
          c.gu_q = cuda::DeviceArray<uint8_t>(ctx, local_rows * 2 * I);
          c.gu_scales = cuda::DeviceArray<float>(ctx, fp8_block_count(2 * I) * local_rows);
          cuda::quantize_act_1x128<T>(c.gu_q.data(), c.gu_scales.data(), gu.data(), local_rows,
                                      2 * I, kFp8PowerOfTwoScales, stream);
        }
      }
      if (received > 0)  // back to the received rows
        cuda::permute_rows<T>(expert_out.data(), out.data(), c.unpad_map.data(), received, 1, H,
                              stream);
    } else {
      c.gu = std::move(gu);
      expert_out = std::move(out);
    }
    if (down_.keeps_input_pointer()) c.h = std::move(h);
  }

  // The combine adds the routed experts into y, which holds the shared experts' output; the
  // balance loss runs beside its exchange.
  cuda::ScopedSection combine_section(stream, "moe.combine.fwd");
  exchange.combine(y, expert_out.data(), c.topk_weight.data(), /*accumulate=*/has_shared_, [&] {
    if (c.balance_alpha != 0.0)
      cuda::seq_balance_loss_fwd(balance_loss, c.scores.data(), c.topk_idx.data(), c.batch, c.seq,
                                 E, K, c.balance_alpha, stream);
  });
}

template <class T>
void GpuMoe<T>::backward_ep(cuda::DeviceContext& ctx, Ctx& c, const T* dy, T* dx,
                            double dloss_balance, WeightGradQueue* deferred) const {
  const int64_t rows = c.rows, K = router_.top_k, EL = local_experts_, H = hidden_;
  const cudaStream_t stream = ctx.stream;
  GpuExpertDispatch& exchange = *dispatch_;
  const int64_t received = exchange.received_rows(), local_rows = c.host_offsets[EL];
  const bool fp8 = gate_up_.weight().precision() == GemmPrecision::Fp8;
  // The combine's exchange writes dweights and d_out, allocated before it; the shared experts'
  // backward (dx assigned) runs beside it.
  cuda::DeviceArray<float> dweights(ctx, rows * K);  // [rows, K]
  cuda::ScopedSection combine_section(stream, "moe.combine.bwd");
  cuda::DeviceArray<T> d_out(ctx, std::max<int64_t>(received, 1) * H);  // [received, hidden]
  exchange.combine_backward(d_out.data(), dweights.data(), dy, c.topk_weight.data(), [&] {
    if (has_shared_) {
      cuda::ScopedSection section(stream, "moe.shared.bwd");
      shared_.backward(ctx, c.shared, dy, dx, false, deferred);
    } else {
      zero_async(ctx, dx, static_cast<size_t>(rows * H) * sizeof(T));
    }
  });
  combine_section.close();
  cuda::DeviceArray<T> d_received(ctx, std::max<int64_t>(received, 1) * H);  // [received, hidden]
  if (local_rows > 0) {
    cuda::ScopedSection experts_section(stream, "moe.experts.bwd");
    const GroupOffsets offsets{c.host_offsets.data(), c.expert_offsets.data(), EL, local_rows};
    if (fp8) {  // [local_rows, hidden] tile-padded (zero padding rows)
      cuda::DeviceArray<T> padded(ctx, local_rows * H);
      cuda::permute_rows<T>(padded.data(), d_out.data(), c.pad_map.data(), local_rows, 1, H,
                            stream);
      d_out = std::move(padded);
    }
    cuda::DeviceArray<T> dxp =
        experts_backward(ctx, c, d_out, local_rows, local_rows, offsets, deferred);
    if (fp8) {
      if (received > 0)
        cuda::permute_rows<T>(d_received.data(), dxp.data(), c.unpad_map.data(), received, 1, H,
                              stream);
    } else {
      d_received = std::move(dxp);
    }
  }
  // The router's backward beside the dispatch's exchange: the logits' gradient, and under BF16 the
  // gate's whole backward into its own fp32 array. dx then gets the routed rows (unpermute_sum,
  // after the exchange) before the gate's part, as without expert parallelism: under fp32 the
  // gate's GEMM adds into dx itself, so it waits for the exchange.
  cuda::ScopedSection dispatch_section(stream, "moe.dispatch.bwd");
  cuda::DeviceArray<float> dlogits, dx_gate;
  exchange.dispatch_backward(dx, d_received.data(), /*accumulate=*/true, [&] {
    cuda::ScopedSection route_section(stream, "moe.route+permute.bwd");
    dlogits = logits_backward(ctx, c, dweights.data(), dloss_balance);
    if constexpr (!std::is_same_v<T, float>) dx_gate = gate_backward(ctx, c, dlogits.data(), dx);
  });
  dispatch_section.close();
  cuda::ScopedSection route_section(stream, "moe.route+permute.bwd");
  if constexpr (std::is_same_v<T, float>)
    gate_backward(ctx, c, dlogits.data(), dx);
  else
    cuda::add_into<T, float>(dx, dx_gate.data(), rows * H, stream);
}

template <class T>
std::vector<int64_t> GpuMoe<T>::load(cuda::DeviceContext& ctx) const {
  std::vector<int64_t> host(static_cast<size_t>(router_.n_experts));
  ctx.synchronize();
  FRUGAL_CUDA_CHECK(cudaMemcpy(host.data(), load_.data(), load_.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

template <class T>
void GpuMoe<T>::reset_load(cuda::DeviceContext& ctx) {
  zero_async(ctx, load_.data(), load_.bytes());
}

template <class T>
void GpuMoe<T>::update_bias(cuda::DeviceContext& ctx, double gamma) {
  if (gamma != 0.0) {
    FRUGAL_CHECK(has_bias(),
                 "{}: the bias update (gamma={}) needs topk_method \"noaux_tc\"; set the bias "
                 "update speed to 0 for this router",
                 prefix_, gamma);
    cuda::update_balance_bias(bias_.value, load_.data(), router_.n_experts,
                              static_cast<float>(gamma), ctx.stream);
  }
  reset_load(ctx);
}

template class GpuMoe<float>;
template class GpuMoe<bf16>;

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
