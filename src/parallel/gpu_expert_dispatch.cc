// GpuExpertDispatch (see gpu_expert_dispatch.h): the routing layouts (local permutation, exchanged
// per-expert counts, the source-major <-> expert-major reorders) and the two BF16 exchanges.
#ifdef FRUGAL_HAVE_CUDA

#include "parallel/gpu_expert_dispatch.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "kernels/moe/moe_cuda.h"

namespace frugal::gpu {

using bf16 = __nv_bfloat16;

GpuExpertDispatch::GpuExpertDispatch(cuda::DeviceContext& ctx, Communicator& comm,
                                     int64_t n_experts, int64_t hidden)
    : ctx_(ctx), comm_(comm), n_experts_(n_experts), hidden_(hidden), ep_(comm.size()) {
  FRUGAL_CHECK(n_experts_ > 0 && hidden_ > 0,
               "GpuExpertDispatch: {} experts and hidden size {} must be positive", n_experts_,
               hidden_);
  FRUGAL_CHECK(n_experts_ % ep_ == 0,
               "GpuExpertDispatch: {} routed experts do not split evenly over {} EP ranks",
               n_experts_, ep_);
  local_experts_ = n_experts_ / ep_;
  first_local_expert_ = comm.rank() * local_experts_;
  expert_offsets_ = cuda::DeviceArray<int64_t>(ctx_, n_experts_ + 1);
  expert_counts_ = cuda::DeviceArray<int64_t>(ctx_, n_experts_);
  send_rows_.assign(static_cast<size_t>(ep_), 0);
  recv_rows_.assign(static_cast<size_t>(ep_), 0);
  local_offsets_.assign(static_cast<size_t>(local_experts_ + 1), 0);
}

void GpuExpertDispatch::plan(const int32_t* topk_idx, int64_t tokens, int64_t top_k,
                             int64_t* load) {
  FRUGAL_CHECK(tokens >= 0 && top_k > 0 && top_k <= n_experts_,
               "GpuExpertDispatch::plan: {} tokens, top_k {} of {} experts", tokens, top_k,
               n_experts_);
  const int64_t assignments = tokens * top_k, E = n_experts_, EL = local_experts_;
  FRUGAL_CHECK(assignments < std::numeric_limits<int32_t>::max(),
               "GpuExpertDispatch::plan: {} assignments exceed int32 row indices", assignments);
  const cudaStream_t stream = ctx_.stream;
  if (tokens != tokens_ || top_k != top_k_) {
    assignment_row_ = cuda::DeviceArray<int32_t>(ctx_, std::max<int64_t>(assignments, 1));
    row_assignment_ = cuda::DeviceArray<int32_t>(ctx_, std::max<int64_t>(assignments, 1));
    tokens_ = tokens;
    top_k_ = top_k;
  }
  if (assignments > 0) {
    cuda::DeviceArray<uint8_t> workspace(
        ctx_, static_cast<int64_t>(cuda::expert_permutation_workspace_bytes(tokens, top_k, E)));
    cuda::build_expert_permutation(expert_offsets_.data(), expert_counts_.data(), load,
                                   assignment_row_.data(), row_assignment_.data(), topk_idx, tokens,
                                   top_k, E, /*row_align=*/1, workspace.data(), stream);
  } else {
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(expert_counts_.data(), 0, expert_counts_.bytes(), stream));
  }

  // Counts of the experts each rank owns go to that rank: [source][local expert] arrive.
  cuda::DeviceArray<int64_t> received_counts(ctx_, E);  // [ep][EL]
  const std::vector<int64_t> blocks(static_cast<size_t>(ep_), EL);
  comm_.all_to_all_v(received_counts.data(), blocks, expert_counts_.data(), blocks, CommType::I64);
  std::vector<int64_t> sent(static_cast<size_t>(E)), got(static_cast<size_t>(E));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(sent.data(), expert_counts_.data(), expert_counts_.bytes(),
                                    cudaMemcpyDeviceToHost, stream));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(got.data(), received_counts.data(), received_counts.bytes(),
                                    cudaMemcpyDeviceToHost, stream));
  ctx_.synchronize();

  int64_t sent_total = 0;
  received_ = 0;
  std::fill(local_offsets_.begin(), local_offsets_.end(), 0);
  for (int64_t r = 0; r < ep_; ++r) {
    send_rows_[r] = recv_rows_[r] = 0;
    for (int64_t e = 0; e < EL; ++e) {
      const int64_t s = sent[r * EL + e], g = got[r * EL + e];
      FRUGAL_CHECK(s >= 0 && g >= 0, "GpuExpertDispatch::plan: negative row count from rank {}",
                   r);
      send_rows_[r] += s;
      recv_rows_[r] += g;
      local_offsets_[e + 1] += g;
    }
    sent_total += send_rows_[r];
    received_ += recv_rows_[r];
  }
  FRUGAL_CHECK(sent_total == assignments,
               "GpuExpertDispatch::plan: the permutation counts {} rows for {} assignments (an "
               "expert id outside [0, {})?)",
               sent_total, assignments, E);
  FRUGAL_CHECK(received_ < std::numeric_limits<int32_t>::max(),
               "GpuExpertDispatch::plan: {} received rows exceed int32 row indices", received_);
  for (int64_t e = 0; e < EL; ++e) local_offsets_[e + 1] += local_offsets_[e];

  // Source-major row sm (rank order, expert-major inside a source) <-> expert-major row em (local
  // expert order, sources in rank order inside an expert).
  std::vector<int32_t> to_expert_major(static_cast<size_t>(std::max<int64_t>(received_, 1)));
  std::vector<int32_t> to_source_major(to_expert_major.size());
  std::vector<int64_t> cursor(local_offsets_.begin(), local_offsets_.end() - 1);
  int64_t sm = 0;
  for (int64_t r = 0; r < ep_; ++r)
    for (int64_t e = 0; e < EL; ++e)
      for (int64_t i = 0; i < got[r * EL + e]; ++i, ++sm) {
        const int64_t em = cursor[e]++;
        to_expert_major[em] = static_cast<int32_t>(sm);
        to_source_major[sm] = static_cast<int32_t>(em);
      }
  to_expert_major_ = cuda::DeviceArray<int32_t>(ctx_, static_cast<int64_t>(to_expert_major.size()));
  to_source_major_ = cuda::DeviceArray<int32_t>(ctx_, static_cast<int64_t>(to_source_major.size()));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(to_expert_major_.data(), to_expert_major.data(),
                                    to_expert_major.size() * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(to_source_major_.data(), to_source_major.data(),
                                    to_source_major.size() * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, stream));
  combined_bytes_ = 0;
  ctx_.synchronize();  // the host index arrays are freed on return
}

void GpuExpertDispatch::reserve_staging(int64_t rows, size_t element_bytes) {
  const int64_t bytes = std::max<int64_t>(rows, 1) * hidden_ * static_cast<int64_t>(element_bytes);
  if (staging_.size() < bytes) {
    staging_ = cuda::DeviceArray<uint8_t>(ctx_, bytes);
    staging2_ = cuda::DeviceArray<uint8_t>(ctx_, bytes);
  }
}

namespace {

std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t hidden) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * hidden;
  return out;
}

template <class P>
constexpr CommType payload_type() {
  if constexpr (std::is_same_v<P, float>)
    return CommType::F32;
  else
    return CommType::BF16;
}

}  // namespace

template <class P>
void GpuExpertDispatch::dispatch_t(P* received, const P* x) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::dispatch before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  P* staging = reinterpret_cast<P*>(staging_.data());
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  if (assignments > 0)  // xp [assignments, hidden], owner-major
    cuda::permute_rows<P>(staging, x, row_assignment_.data(), assignments, top_k_, H, ctx_.stream);
  // [received, hidden] source-major
  comm_.all_to_all_v(staging2, times(recv_rows_, H), staging, times(send_rows_, H),
                     payload_type<P>());
  if (received_ > 0)  // [received, hidden] expert-major
    cuda::permute_rows<P>(received, staging2, to_expert_major_.data(), received_, 1, H,
                          ctx_.stream);
}

template <class P>
void GpuExpertDispatch::combine_t(P* y, const P* expert_out, const float* weights,
                                  bool accumulate) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::combine before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  const int64_t returned_bytes =
      std::max<int64_t>(assignments, 1) * H * static_cast<int64_t>(sizeof(P));
  if (returned_.size() < returned_bytes)
    returned_ = cuda::DeviceArray<uint8_t>(ctx_, returned_bytes);
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  P* returned = reinterpret_cast<P*>(returned_.data());
  if (received_ > 0)  // [received, hidden] source-major
    cuda::permute_rows<P>(staging2, expert_out, to_source_major_.data(), received_, 1, H,
                          ctx_.stream);
  // [assignments, hidden] back in this rank's owner-major order
  comm_.all_to_all_v(returned, times(send_rows_, H), staging2, times(recv_rows_, H),
                     payload_type<P>());
  if (tokens_ > 0)
    cuda::combine_fwd<P>(y, returned, weights, assignment_row_.data(), tokens_, top_k_, H,
                         accumulate, ctx_.stream);
  combined_bytes_ = sizeof(P);
}

template <class P>
void GpuExpertDispatch::dispatch_backward_t(P* dx, const P* d_received, bool accumulate) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::dispatch_backward before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  P* staging = reinterpret_cast<P*>(staging_.data());
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  if (received_ > 0)  // [received, hidden] source-major
    cuda::permute_rows<P>(staging2, d_received, to_source_major_.data(), received_, 1, H,
                          ctx_.stream);
  // [assignments, hidden] in this rank's owner-major order
  comm_.all_to_all_v(staging, times(send_rows_, H), staging2, times(recv_rows_, H),
                     payload_type<P>());
  if (tokens_ > 0)
    cuda::unpermute_sum<P>(dx, staging, assignment_row_.data(), tokens_, top_k_, H, accumulate,
                           ctx_.stream);
}

template <class P>
void GpuExpertDispatch::combine_backward_t(P* d_expert_out, float* d_weights, const P* dy,
                                           const float* weights) {
  FRUGAL_CHECK(combined_bytes_ == sizeof(P),
               "GpuExpertDispatch::combine_backward needs the combine of this plan, in the same "
               "payload type");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  P* staging = reinterpret_cast<P*>(staging_.data());
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  if (tokens_ > 0)  // [assignments, hidden] owner-major, d_weights [tokens, K]
    cuda::combine_bwd<P>(staging, d_weights, dy, reinterpret_cast<const P*>(returned_.data()),
                         weights, assignment_row_.data(), row_assignment_.data(), assignments,
                         tokens_, top_k_, H, ctx_.stream);
  // [received, hidden] source-major at the owners
  comm_.all_to_all_v(staging2, times(recv_rows_, H), staging, times(send_rows_, H),
                     payload_type<P>());
  if (received_ > 0)  // expert-major
    cuda::permute_rows<P>(d_expert_out, staging2, to_expert_major_.data(), received_, 1, H,
                          ctx_.stream);
}

template void GpuExpertDispatch::dispatch_t<bf16>(bf16*, const bf16*);
template void GpuExpertDispatch::dispatch_t<float>(float*, const float*);
template void GpuExpertDispatch::combine_t<bf16>(bf16*, const bf16*, const float*, bool);
template void GpuExpertDispatch::combine_t<float>(float*, const float*, const float*, bool);
template void GpuExpertDispatch::dispatch_backward_t<bf16>(bf16*, const bf16*, bool);
template void GpuExpertDispatch::dispatch_backward_t<float>(float*, const float*, bool);
template void GpuExpertDispatch::combine_backward_t<bf16>(bf16*, float*, const bf16*, const float*);
template void GpuExpertDispatch::combine_backward_t<float>(float*, float*, const float*,
                                                           const float*);

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
