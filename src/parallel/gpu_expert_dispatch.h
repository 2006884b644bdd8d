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
// Payload: BF16 (__nv_bfloat16) or fp32 (float, the fp32 recipe's exact path); every method comes
// in both types, and one plan serves either. combine and dispatch_backward can accumulate into
// their output (y += ..., dx += ...: an MoE layer's shared-expert branch is already there).
//
// `comm` is an NCCL communicator over the EP group (nccl_communicator.h) whose input stream is the
// context's stream; its operations return complete. Only for builds with CUDA (FRUGAL_HAVE_CUDA).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <vector>

#include "core/device_context.h"
#include "parallel/communicator.h"

namespace frugal::gpu {

class GpuExpertDispatch {
 public:
  // n_experts % comm.size() == 0 (checked). `ctx` and `comm` must outlive the dispatcher.
  GpuExpertDispatch(cuda::DeviceContext& ctx, Communicator& comm, int64_t n_experts,
                    int64_t hidden);

  // The layouts of one batch of `tokens` tokens routed to top_k experts each: topk_idx
  // [tokens, top_k] (device, global expert ids, distinct per token). Collective over the group.
  // load: optional device int64 [n_experts] counter that gets this rank's assignments per expert
  // added (all experts, not only the local ones).
  void plan(const int32_t* topk_idx, int64_t tokens, int64_t top_k, int64_t* load = nullptr);

  // x [tokens, hidden] -> received [received_rows(), hidden] (expert-major over the local
  // experts). Collective.
  void dispatch(__nv_bfloat16* received, const __nv_bfloat16* x) { dispatch_t(received, x); }
  void dispatch(float* received, const float* x) { dispatch_t(received, x); }
  // expert_out [received_rows(), hidden] (expert-major) -> y [tokens, hidden] (+)=
  // sum_k weights[t,k] * expert_out[row of (t,k)]; weights [tokens, top_k] (device). Collective.
  void combine(__nv_bfloat16* y, const __nv_bfloat16* expert_out, const float* weights,
               bool accumulate = false) {
    combine_t(y, expert_out, weights, accumulate);
  }
  void combine(float* y, const float* expert_out, const float* weights, bool accumulate = false) {
    combine_t(y, expert_out, weights, accumulate);
  }

  // dx [tokens, hidden] (assigned, or accumulated) from d_received [received_rows(), hidden].
  // Collective.
  void dispatch_backward(__nv_bfloat16* dx, const __nv_bfloat16* d_received,
                         bool accumulate = false) {
    dispatch_backward_t(dx, d_received, accumulate);
  }
  void dispatch_backward(float* dx, const float* d_received, bool accumulate = false) {
    dispatch_backward_t(dx, d_received, accumulate);
  }
  // After combine (same payload type): dy [tokens, hidden] -> d_expert_out [received_rows(),
  // hidden] (expert-major) and d_weights [tokens, top_k] (fp32, assigned). Collective.
  void combine_backward(__nv_bfloat16* d_expert_out, float* d_weights, const __nv_bfloat16* dy,
                        const float* weights) {
    combine_backward_t(d_expert_out, d_weights, dy, weights);
  }
  void combine_backward(float* d_expert_out, float* d_weights, const float* dy,
                        const float* weights) {
    combine_backward_t(d_expert_out, d_weights, dy, weights);
  }

  int64_t local_experts() const { return local_experts_; }
  int64_t first_local_expert() const { return first_local_expert_; }
  int64_t received_rows() const { return received_; }
  // [local_experts + 1]: the received rows of local expert e are [offsets[e], offsets[e+1]).
  const std::vector<int64_t>& local_offsets() const { return local_offsets_; }
  // Rows sent to / received from each rank of the group by dispatch (combine the reverse).
  const std::vector<int64_t>& send_rows() const { return send_rows_; }
  const std::vector<int64_t>& recv_rows() const { return recv_rows_; }

 private:
  template <class P>
  void dispatch_t(P* received, const P* x);
  template <class P>
  void combine_t(P* y, const P* expert_out, const float* weights, bool accumulate);
  template <class P>
  void dispatch_backward_t(P* dx, const P* d_received, bool accumulate);
  template <class P>
  void combine_backward_t(P* d_expert_out, float* d_weights, const P* dy, const float* weights);
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
};

}  // namespace frugal::gpu
