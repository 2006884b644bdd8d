// GpuExpertDispatch (see gpu_expert_dispatch.h): the routing layouts (local permutation, exchanged
// per-expert counts, the source-major <-> expert-major reorders) and the two BF16 exchanges.
#ifdef FRUGAL_HAVE_CUDA

#include "parallel/gpu_expert_dispatch.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <limits>

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

void GpuExpertDispatch::plan(const int32_t* topk_idx, int64_t tokens, int64_t top_k) {
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
    cuda::build_expert_permutation(expert_offsets_.data(), expert_counts_.data(), nullptr,
                                   assignment_row_.data(), row_assignment_.data(), topk_idx,
                                   tokens, top_k, E, /*row_align=*/1, workspace.data(), stream);
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
  const int64_t staging_rows = std::max<int64_t>({assignments, received_, 1});
  if (staging_.size() < staging_rows * hidden_) {
    staging_ = cuda::DeviceArray<bf16>(ctx_, staging_rows * hidden_);
    staging2_ = cuda::DeviceArray<bf16>(ctx_, staging_rows * hidden_);
  }
  combined_ = false;
  ctx_.synchronize();  // the host index arrays are freed on return
}

namespace {

std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t hidden) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * hidden;
  return out;
}

}  // namespace

void GpuExpertDispatch::dispatch(bf16* received, const bf16* x) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::dispatch before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  if (assignments > 0)  // xp [assignments, hidden], owner-major
    cuda::permute_rows<bf16>(staging_.data(), x, row_assignment_.data(), assignments, top_k_, H,
                             ctx_.stream);
  // [received, hidden] source-major
  comm_.all_to_all_v(staging2_.data(), times(recv_rows_, H), staging_.data(),
                     times(send_rows_, H), CommType::BF16);
  if (received_ > 0)  // [received, hidden] expert-major
    cuda::permute_rows<bf16>(received, staging2_.data(), to_expert_major_.data(), received_, 1, H,
                             ctx_.stream);
}

void GpuExpertDispatch::combine(bf16* y, const bf16* expert_out, const float* weights) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::combine before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  if (returned_.size() < std::max<int64_t>(assignments, 1) * H)
    returned_ = cuda::DeviceArray<bf16>(ctx_, std::max<int64_t>(assignments, 1) * H);
  if (received_ > 0)  // [received, hidden] source-major
    cuda::permute_rows<bf16>(staging2_.data(), expert_out, to_source_major_.data(), received_, 1,
                             H, ctx_.stream);
  // [assignments, hidden] back in this rank's owner-major order
  comm_.all_to_all_v(returned_.data(), times(send_rows_, H), staging2_.data(),
                     times(recv_rows_, H), CommType::BF16);
  if (tokens_ > 0)
    cuda::combine_fwd<bf16>(y, returned_.data(), weights, assignment_row_.data(), tokens_, top_k_,
                            H, /*accumulate=*/false, ctx_.stream);
  combined_ = true;
}

void GpuExpertDispatch::dispatch_backward(bf16* dx, const bf16* d_received) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::dispatch_backward before plan");
  const int64_t H = hidden_;
  if (received_ > 0)  // [received, hidden] source-major
    cuda::permute_rows<bf16>(staging2_.data(), d_received, to_source_major_.data(), received_, 1,
                             H, ctx_.stream);
  // [assignments, hidden] in this rank's owner-major order
  comm_.all_to_all_v(staging_.data(), times(send_rows_, H), staging2_.data(),
                     times(recv_rows_, H), CommType::BF16);
  if (tokens_ > 0)
    cuda::unpermute_sum<bf16>(dx, staging_.data(), assignment_row_.data(), tokens_, top_k_, H,
                              /*accumulate=*/false, ctx_.stream);
}

void GpuExpertDispatch::combine_backward(bf16* d_expert_out, float* d_weights, const bf16* dy,
                                         const float* weights) {
  FRUGAL_CHECK(combined_, "GpuExpertDispatch::combine_backward needs the combine of this plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  if (tokens_ > 0)  // [assignments, hidden] owner-major, d_weights [tokens, K]
    cuda::combine_bwd<bf16>(staging_.data(), d_weights, dy, returned_.data(), weights,
                            assignment_row_.data(), row_assignment_.data(), assignments, tokens_,
                            top_k_, H, ctx_.stream);
  // [received, hidden] source-major at the owners
  comm_.all_to_all_v(staging2_.data(), times(recv_rows_, H), staging_.data(),
                     times(send_rows_, H), CommType::BF16);
  if (received_ > 0)  // expert-major
    cuda::permute_rows<bf16>(d_expert_out, staging2_.data(), to_expert_major_.data(), received_, 1,
                             H, ctx_.stream);
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
