// Expert-parallel token exchange on GPUs (spec §5.1: EP inside DP), the building block of GPU
// expert parallelism: every rank of an EP group of `ep` ranks routes its own tokens over all
// n_experts routed experts; rank r owns experts [r*E/ep, (r+1)*E/ep) (parallel/expert_parallel.h).
//
//   plan(topk_idx)  the tokens' assignments sorted expert-major (stable, so tokens ascend inside
//                   each expert; cuda::build_expert_permutation), which is owner-major too; the
//                   per-expert row counts are exchanged (one int64 all-to-all) and copied to the
//                   host (one synchronisation), which then knows every peer's rows for each of its
//                   local experts and builds the reorder between the two received layouts.
//   dispatch(x)     xp[tokens*K, hidden] = x permuted expert-major; all-to-all-v of xp's row blocks
//                   to their owners (BF16 payload); the received rows, source-major (rank order,
//                   expert-major inside each source), reordered expert-major over the local experts
//                   (sources in rank order inside each expert): `received` rows grouped by
//                   local_offsets, ready for the local experts' grouped GEMMs.
//   combine(out)    the inverse: expert outputs [received, hidden] (expert-major) reordered
//                   source-major, all-to-all-v back to the tokens' ranks, then
//                   y[t] = sum_k w[t,k] * out_back[row(t,k)] (cuda::combine_fwd, k in order, fp32
//                   accumulation, BF16 result).
// The backward mirrors them over the same layouts:
//   dispatch_backward(d_received)  d_received (expert-major) reordered source-major, all-to-all-v
//                   back to the tokens' ranks, dx[t] = sum_k d_back[row(t,k)] (cuda::unpermute_sum)
//   combine_backward(dy)  at the tokens' rank d_back[row(t,k)] = w[t,k] * dy[t] and
//                   d_weights[t,k] = dy[t] . out_back[row(t,k)] (cuda::combine_bwd, using the rows
//                   the last combine brought back), then d_back sent to the experts' owners and
//                   reordered expert-major: d_expert_out [received, hidden].
//   dispatch_fp8(x)  the fp8 recipe's dispatch (spec §5: FP8 payload plus scales): xp as above,
//                   quantized 1x128 by the sender with cuda::quantize_act_1x128 (the FP8 grouped
//                   GEMM's own quantizer), then one all-to-all-v of per-row records (hidden E4M3
//                   bytes, then hidden/128 fp32 scales: ~0.52x the BF16 bytes), reordered
//                   expert-major on arrival (pure copies, kernels/moe/fp8_rows.h): the codes and
//                   scales are bit for bit those cuda::quantize_act_1x128 gives for the rows
//                   dispatch() would deliver. Scales arrive in the quantizer's layout
//                   [hidden/128][received]. combine and the backward stay BF16.
// Payload: BF16 (__nv_bfloat16) or fp32 (float, the fp32 recipe's exact path); every method comes
// in both types, and one plan serves either. combine and dispatch_backward can accumulate into
// their output (y += ..., dx += ...: an MoE layer's shared-expert branch is already there).
//
// `comm` is an NCCL communicator over the EP group (nccl_communicator.h) whose input stream is the
// context's stream; its operations return complete. Only for builds with CUDA (FRUGAL_HAVE_CUDA).
//
// Overlap (spec §5: the all-to-all hidden under computation on separate streams). Each of the four
// exchanges takes `beside`, work that the caller enqueues on the context's stream (ctx.stream) to
// run while the exchange is in flight (an MoE layer's shared experts). With overlap on (the
// default; FRUGAL_EP_OVERLAP=0 in the environment, read once, or set_ep_overlap(false) turns it
// off) and an NCCL communicator, an exchange runs as:
//   1. on ctx.stream: the staging the exchange needs is (re)allocated; then the event `forked`;
//   2. on the side stream (this dispatcher's own, high priority), after `forked`: the exchange's
//      reorder kernels (and combine_backward's combine_bwd); then the NCCL all-to-all, whose
//      input stream is switched to the side stream for the call (and restored after);
//   3. on ctx.stream, enqueued by the host BEFORE it blocks in the NCCL call: `beside`;
//   4. once the all-to-all returns, the side stream's remaining reorder, then the event `joined`,
//      which ctx.stream waits for; only then, on ctx.stream, the accumulating kernels into the
//      caller's tensors (combine's combine_fwd into y, dispatch_backward's unpermute_sum into dx),
//      so they follow `beside` exactly as they followed the same work in the serial order: the
//      results are bitwise those of the serial path (same kernels, same accumulation order).
// With overlap off, or another communicator, the same steps run in the same order on ctx.stream
// alone (serial: the all-to-all waits for `beside`).
//
// Allocator rule (core/device_context.h: a block released on ctx.stream may be handed out again at
// once, because every user of it is assumed to run on ctx.stream): every buffer the side stream
// touches is allocated BEFORE `forked` (the caller's inputs and outputs, this dispatcher's plan
// arrays and staging, which only grows in step 1) and none of them is released before ctx.stream
// has waited on `joined` (the dispatcher's members live across exchanges; the caller keeps its
// buffers alive over the call, and staging grows only at step 1 of a later exchange, after that
// wait). `beside` may allocate and release freely: its blocks live on ctx.stream only. `beside`
// must not write what the exchange reads (x, expert_out, d_received, dy, weights) nor read what it
// writes before the call returns (received, d_expert_out, d_weights); it may write y / dx, which
// the exchange accumulates into only after `beside`. If anything throws between fork and join,
// ctx.stream still waits on the side stream before the exception leaves the call.
//
// Measurement (FRUGAL_OVERLAP_STATS=1, read once, or set_ep_overlap_stats(true)): every all-to-all
// of a dispatcher records timing events on the NCCL communicator's own stream around its NCCL work
// (set_op_timing), and `beside` records timing events on ctx.stream around its kernels, in the
// dispatcher's EventTimeline (parallel/overlap_stats.h). take_ep_overlap_stats() resolves every
// live dispatcher's events into intervals: per exchange (counts, dispatch, combine) the all-to-all
// time and the part of it inside the compute stream's busy intervals.
#pragma once

#include <cuda_bf16.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "core/device_context.h"
#include "parallel/communicator.h"
#include "parallel/overlap_stats.h"

namespace frugal::gpu {

// Overlap of the exchanges with the computation: on unless FRUGAL_EP_OVERLAP=0 (read once);
// set_ep_overlap overrides the environment for this process (std::nullopt: back to it).
bool ep_overlap_enabled();
void set_ep_overlap(std::optional<bool> on);
// The overlap measurement: on iff FRUGAL_OVERLAP_STATS=1 (read once), unless overridden.
bool ep_overlap_stats_enabled();
void set_ep_overlap_stats(std::optional<bool> on);
// Waits for and resolves the timing events every live dispatcher of this process recorded since
// the last call, and returns their sum (zeros when nothing was measured). Not collective.
ExchangeOverlap take_ep_overlap_stats();
// The sum of everything take_ep_overlap_stats() returned since the last reset (tests, summaries).
ExchangeOverlap ep_overlap_stats_total();
void reset_ep_overlap_stats_total();

// Work enqueued on the context's stream while an exchange is in flight (see above); may be empty.
using BesideWork = std::function<void()>;

class GpuExpertDispatch {
 public:
  // n_experts % comm.size() == 0 (checked). `ctx` and `comm` must outlive the dispatcher.
  GpuExpertDispatch(cuda::DeviceContext& ctx, Communicator& comm, int64_t n_experts,
                    int64_t hidden);
  ~GpuExpertDispatch();  // destroys the side stream and its events
  GpuExpertDispatch(const GpuExpertDispatch&) = delete;
  GpuExpertDispatch& operator=(const GpuExpertDispatch&) = delete;

  // The layouts of one batch of `tokens` tokens routed to top_k experts each: topk_idx
  // [tokens, top_k] (device, global expert ids, distinct per token). Collective over the group.
  // load: optional device int64 [n_experts] counter that gets this rank's assignments per expert
  // added (all experts, not only the local ones).
  void plan(const int32_t* topk_idx, int64_t tokens, int64_t top_k, int64_t* load = nullptr);

  // x [tokens, hidden] -> received [received_rows(), hidden] (expert-major over the local
  // experts). Collective.
  void dispatch(__nv_bfloat16* received, const __nv_bfloat16* x, const BesideWork& beside = {}) {
    dispatch_t(received, x, beside);
  }
  void dispatch(float* received, const float* x, const BesideWork& beside = {}) {
    dispatch_t(received, x, beside);
  }
  // x [tokens, hidden] BF16 -> received_q [received_rows(), hidden] E4M3 codes and
  // received_scales [hidden/128][received_rows()] fp32 (expert-major; see dispatch_fp8 above).
  // hidden % 128 == 0 (checked). power_of_two_scale as cuda::quantize_act_1x128. Collective.
  void dispatch_fp8(uint8_t* received_q, float* received_scales, const __nv_bfloat16* x,
                    bool power_of_two_scale, const BesideWork& beside = {});
  // Bytes one row takes in dispatch_fp8's all-to-all: hidden codes, hidden/128 fp32 scales, padded
  // to 16 bytes (the padding is sent unset).
  int64_t fp8_record_bytes() const { return (hidden_ + hidden_ / 128 * 4 + 15) / 16 * 16; }

  // expert_out [received_rows(), hidden] (expert-major) -> y [tokens, hidden] (+)=
  // sum_k weights[t,k] * expert_out[row of (t,k)]; weights [tokens, top_k] (device). Collective.
  void combine(__nv_bfloat16* y, const __nv_bfloat16* expert_out, const float* weights,
               bool accumulate = false, const BesideWork& beside = {}) {
    combine_t(y, expert_out, weights, accumulate, beside);
  }
  void combine(float* y, const float* expert_out, const float* weights, bool accumulate = false,
               const BesideWork& beside = {}) {
    combine_t(y, expert_out, weights, accumulate, beside);
  }

  // dx [tokens, hidden] (assigned, or accumulated) from d_received [received_rows(), hidden].
  // Collective.
  void dispatch_backward(__nv_bfloat16* dx, const __nv_bfloat16* d_received,
                         bool accumulate = false, const BesideWork& beside = {}) {
    dispatch_backward_t(dx, d_received, accumulate, beside);
  }
  void dispatch_backward(float* dx, const float* d_received, bool accumulate = false,
                         const BesideWork& beside = {}) {
    dispatch_backward_t(dx, d_received, accumulate, beside);
  }
  // After combine (same payload type): dy [tokens, hidden] -> d_expert_out [received_rows(),
  // hidden] (expert-major) and d_weights [tokens, top_k] (fp32, assigned). Collective.
  void combine_backward(__nv_bfloat16* d_expert_out, float* d_weights, const __nv_bfloat16* dy,
                        const float* weights, const BesideWork& beside = {}) {
    combine_backward_t(d_expert_out, d_weights, dy, weights, beside);
  }
  void combine_backward(float* d_expert_out, float* d_weights, const float* dy,
                        const float* weights, const BesideWork& beside = {}) {
    combine_backward_t(d_expert_out, d_weights, dy, weights, beside);
  }

  int64_t local_experts() const { return local_experts_; }
  int64_t first_local_expert() const { return first_local_expert_; }
  int64_t received_rows() const { return received_; }
  // [local_experts + 1]: the received rows of local expert e are [offsets[e], offsets[e+1]).
  const std::vector<int64_t>& local_offsets() const { return local_offsets_; }
  // Rows sent to / received from each rank of the group by dispatch (combine the reverse).
  const std::vector<int64_t>& send_rows() const { return send_rows_; }
  const std::vector<int64_t>& recv_rows() const { return recv_rows_; }

  // The timing this dispatcher recorded since the last call, resolved (see take_ep_overlap_stats).
  ExchangeOverlap take_overlap_stats();

 private:
  class Fork;    // one exchange's side-stream fork and join (gpu_expert_dispatch.cc)
  struct Timing;  // the event timeline and the communicator's op timer
  template <class P>
  void dispatch_t(P* received, const P* x, const BesideWork& beside);
  template <class P>
  void combine_t(P* y, const P* expert_out, const float* weights, bool accumulate,
                 const BesideWork& beside);
  template <class P>
  void dispatch_backward_t(P* dx, const P* d_received, bool accumulate, const BesideWork& beside);
  template <class P>
  void combine_backward_t(P* d_expert_out, float* d_weights, const P* dy, const float* weights,
                          const BesideWork& beside);
  // The all-to-all of one exchange, with `stream` as the communicator's input stream and its
  // timing on `track` when measuring.
  void all_to_all(int track, cudaStream_t stream, void* recv, const std::vector<int64_t>& recv_counts,
                  const void* send, const std::vector<int64_t>& send_counts, CommType type);
  // `beside` on the context's stream, timed as busy when measuring.
  void run_beside(const BesideWork& beside);
  // Staging of `rows` rows of P (grown on demand; the bytes are reused by either payload type).
  void reserve_staging(int64_t rows, size_t element_bytes);

  cuda::DeviceContext& ctx_;
  Communicator& comm_;
  int64_t n_experts_, hidden_, ep_, local_experts_, first_local_expert_;
  int64_t tokens_ = -1, top_k_ = 0, received_ = 0;
  cuda::DeviceArray<int64_t> expert_offsets_, expert_counts_;  // [E+1], [E]
  cuda::DeviceArray<int32_t> assignment_row_, row_assignment_;  // [tokens*K]
  cuda::DeviceArray<int32_t> to_expert_major_;  // [received]: source-major row of expert-major row
  cuda::DeviceArray<int32_t> to_source_major_;  // [received]: expert-major row of source-major row
  cuda::DeviceArray<uint8_t> staging_;   // [max(tokens*K, received), hidden] payload elements
  cuda::DeviceArray<uint8_t> staging2_;  // [max(tokens*K, received), hidden] payload elements
  cuda::DeviceArray<uint8_t> returned_;  // [tokens*K, hidden] rows the last combine got back
  size_t combined_bytes_ = 0;            // payload element size of the last combine of this plan
                                         // (0: none yet)
  std::vector<int64_t> send_rows_, recv_rows_, local_offsets_;
  bool nccl_ = false;                  // comm_ is an NCCL communicator (overlap and timing need it)
  cudaStream_t side_ = nullptr;        // the exchanges' stream under overlap (NCCL only)
  cudaEvent_t forked_ = nullptr, joined_ = nullptr;  // ctx.stream -> side_, side_ -> ctx.stream
  std::unique_ptr<Timing> timing_;
};

}  // namespace frugal::gpu
