// CUDA sequence-wise balance loss (formulas in balance_loss.h, interface in moe_cuda.h) and the
// auxiliary-loss-free bias update (spec §2.2, MoE::update_bias in model/moe.h).
//   scores [batch*seq, E] fp32, topk_idx [batch*seq, K] int32 -> loss[0] (double, written) and
//   dscores [batch*seq, E] (assigned or accumulated).
//
// Each block takes a chunk of tokens of one sequence and first counts that sequence's routed
// assignments per expert (shared-memory integer histogram, so f_i is exact). Per token, one warp
// forms the token's share of the loss, term_t = sum_i f_i s_it / sum_j s_jt, in double.
// Forward, deterministic without a workspace: each term is rounded to a 64-bit fixed-point integer
// (scale 2^shift, chosen from the bound term_t <= E/K so the total cannot overflow; resolution
// 2^-shift, below 1e-11 at any realistic size) and the integers are summed with atomics into
// loss[0]'s 8 bytes. Integer addition is associative, so the bits do not depend on scheduling;
// a one-thread kernel then turns the integer into alpha / (batch*seq) * total.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/moe/moe_cuda.h"

namespace frugal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int64_t kMaxExperts = 8192;  // the per-block histogram: E ints of shared memory
constexpr int64_t kTargetBlocks = 264; // two blocks per H200 SM
constexpr int64_t kMinChunkTokens = 32;
constexpr int kBiasThreads = 1024;

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

struct BalanceGrid {
  int64_t chunk_tokens = 0, chunks_per_sequence = 0;
};

// Block b covers tokens [c*chunk, min(seq, (c+1)*chunk)) of sequence b / chunks.
BalanceGrid balance_grid(int64_t batch, int64_t seq) {
  BalanceGrid g;
  const int64_t wanted = std::max<int64_t>(1, (kTargetBlocks + batch - 1) / batch);
  const int64_t most = std::max<int64_t>(1, (seq + kMinChunkTokens - 1) / kMinChunkTokens);
  const int64_t chunks = std::min(wanted, most);
  g.chunk_tokens = (seq + chunks - 1) / chunks;
  g.chunks_per_sequence = (seq + g.chunk_tokens - 1) / g.chunk_tokens;
  return g;
}

// counts[e] = assignments of sequence `b` routed to e.
__device__ void count_sequence(int32_t* counts, const int32_t* __restrict__ topk_idx, int64_t b,
                               int64_t seq, int E, int K) {
  for (int e = threadIdx.x; e < E; e += kThreads) counts[e] = 0;
  __syncthreads();
  const int32_t* idx = topk_idx + b * seq * K;
  for (int64_t a = threadIdx.x; a < seq * K; a += kThreads) {
    const int32_t e = idx[a];
    if (e >= 0 && e < E) atomicAdd(&counts[e], 1);  // integer: order-free
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads)
    balance_loss_fwd_kernel(unsigned long long* __restrict__ accumulator,
                            const float* __restrict__ scores, const int32_t* __restrict__ topk_idx,
                            int64_t seq, int E, int K, int64_t chunk_tokens, int64_t chunks,
                            double f_norm, double fixed_scale) {
  extern __shared__ int32_t counts[];  // [E]
  __shared__ long long warp_totals[kWarps];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t b = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  count_sequence(counts, topk_idx, b, seq, E, K);
  const int64_t begin = chunk * chunk_tokens, end = min(seq, begin + chunk_tokens);
  long long total = 0;  // lane 0's fixed-point sum over this warp's tokens
  for (int64_t t = begin + warp; t < end; t += kWarps) {
    const float* s = scores + (b * seq + t) * E;
    double sum = 0.0, weighted = 0.0;
    for (int e = lane; e < E; e += kWarpSize) {
      const double v = s[e];
      sum += v;
      weighted += static_cast<double>(counts[e]) * v;
    }
    sum = warp_sum(sum);
    weighted = warp_sum(weighted);
    const double term = f_norm * weighted / sum;  // sum_i f_i s'_i of this token
    total += __double2ll_rn(term * fixed_scale);
  }
  if (lane == 0) warp_totals[warp] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long block_total = 0;
    for (int w = 0; w < kWarps; ++w) block_total += warp_totals[w];
    atomicAdd(accumulator, static_cast<unsigned long long>(block_total));
  }
}

__global__ void balance_loss_finish_kernel(double* loss, double scale) {
  const long long total = *reinterpret_cast<const long long*>(loss);
  *loss = static_cast<double>(total) * scale;
}

__global__ void __launch_bounds__(kThreads)
    balance_loss_bwd_kernel(float* __restrict__ dscores, const float* __restrict__ scores,
                            const int32_t* __restrict__ topk_idx, int64_t seq, int E, int K,
                            int64_t chunk_tokens, int64_t chunks, double f_norm, double coef,
                            bool accumulate) {
  extern __shared__ int32_t counts[];  // [E]
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t b = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  count_sequence(counts, topk_idx, b, seq, E, K);
  const int64_t begin = chunk * chunk_tokens, end = min(seq, begin + chunk_tokens);
  for (int64_t t = begin + warp; t < end; t += kWarps) {
    const int64_t row = (b * seq + t) * E;
    const float* s = scores + row;
    double sum = 0.0;
    for (int e = lane; e < E; e += kWarpSize) sum += s[e];
    sum = warp_sum(sum);
    double dot = 0.0;  // sum_i g_i s'_i, g_i = coef * f_i
    for (int e = lane; e < E; e += kWarpSize)
      dot += coef * (static_cast<double>(counts[e]) * f_norm) * s[e] / sum;
    dot = warp_sum(dot);
    for (int e = lane; e < E; e += kWarpSize) {
      const float grad =
          static_cast<float>((coef * (static_cast<double>(counts[e]) * f_norm) - dot) / sum);
      dscores[row + e] = accumulate ? dscores[row + e] + grad : grad;
    }
  }
}

__global__ void __launch_bounds__(kBiasThreads)
    update_balance_bias_kernel(float* __restrict__ bias, const int64_t* __restrict__ load,
                               int64_t n_experts, float speed) {
  __shared__ long long warp_totals[kBiasThreads / kWarpSize];
  long long partial = 0;
  for (int64_t e = threadIdx.x; e < n_experts; e += kBiasThreads) partial += load[e];
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    partial += __shfl_xor_sync(kFullMask, partial, offset);
  if (threadIdx.x % kWarpSize == 0) warp_totals[threadIdx.x / kWarpSize] = partial;
  __syncthreads();
  long long total = 0;
  for (int w = 0; w < kBiasThreads / kWarpSize; ++w) total += warp_totals[w];
  const double mean = static_cast<double>(total) / static_cast<double>(n_experts);
  for (int64_t e = threadIdx.x; e < n_experts; e += kBiasThreads) {
    const double gap = mean - static_cast<double>(load[e]);
    const float step = gap > 0 ? speed : (gap < 0 ? -speed : 0.0f);
    bias[e] += step;
  }
}

void check_balance_args(int64_t batch, int64_t seq, int64_t n_experts, int64_t top_k,
                        const char* message) {
  FRUGAL_CUDA_REQUIRE(batch >= 0 && seq >= 0, message);
  FRUGAL_CUDA_REQUIRE(n_experts >= 1 && n_experts <= kMaxExperts, message);
  FRUGAL_CUDA_REQUIRE(top_k >= 1 && top_k <= n_experts, message);
}

}  // namespace

void seq_balance_loss_fwd(double* loss, const float* scores, const int32_t* topk_idx,
                          int64_t batch, int64_t seq, int64_t n_experts, int64_t top_k,
                          double alpha, cudaStream_t stream) {
  check_balance_args(batch, seq, n_experts, top_k,
                     "seq_balance_loss_fwd: bad sizes (batch, seq >= 0; 1 <= K <= E <= 8192)");
  FRUGAL_CUDA_REQUIRE(loss != nullptr, "seq_balance_loss_fwd: null loss");
  FRUGAL_CUDA_CHECK(cudaMemsetAsync(loss, 0, sizeof(double), stream));  // also the 0 of no tokens
  const int64_t tokens = batch * seq;
  if (tokens == 0) return;
  FRUGAL_CUDA_REQUIRE(scores != nullptr && topk_idx != nullptr,
                      "seq_balance_loss_fwd: null scores or topk_idx");
  // sum_t term_t <= tokens * E / K: keep it below 2^62 in fixed point.
  const double bound = static_cast<double>(tokens) * static_cast<double>(n_experts) /
                       static_cast<double>(top_k);
  const int shift = std::min(52, 62 - static_cast<int>(std::ceil(std::log2(bound + 1.0))));
  FRUGAL_CUDA_REQUIRE(shift >= 24, "seq_balance_loss_fwd: too many tokens for the fixed-point sum");
  const double fixed_scale = std::ldexp(1.0, shift);
  const BalanceGrid g = balance_grid(batch, seq);
  FRUGAL_CUDA_REQUIRE(batch * g.chunks_per_sequence < INT_MAX, "seq_balance_loss_fwd: grid too large");
  const double f_norm = static_cast<double>(n_experts) / static_cast<double>(top_k * seq);
  balance_loss_fwd_kernel<<<static_cast<unsigned>(batch * g.chunks_per_sequence), kThreads,
                            n_experts * sizeof(int32_t), stream>>>(
      reinterpret_cast<unsigned long long*>(loss), scores, topk_idx, seq,
      static_cast<int>(n_experts), static_cast<int>(top_k), g.chunk_tokens,
      g.chunks_per_sequence, f_norm, fixed_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
  const double scale = alpha / static_cast<double>(tokens) / fixed_scale;
  balance_loss_finish_kernel<<<1, 1, 0, stream>>>(loss, scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void seq_balance_loss_bwd(float* dscores, const float* scores, const int32_t* topk_idx,
                          int64_t batch, int64_t seq, int64_t n_experts, int64_t top_k,
                          double alpha, double dloss, bool accumulate, cudaStream_t stream) {
  check_balance_args(batch, seq, n_experts, top_k,
                     "seq_balance_loss_bwd: bad sizes (batch, seq >= 0; 1 <= K <= E <= 8192)");
  const int64_t tokens = batch * seq;
  if (tokens == 0) return;
  FRUGAL_CUDA_REQUIRE(dscores != nullptr && scores != nullptr && topk_idx != nullptr,
                      "seq_balance_loss_bwd: null tensor");
  const BalanceGrid g = balance_grid(batch, seq);
  FRUGAL_CUDA_REQUIRE(batch * g.chunks_per_sequence < INT_MAX, "seq_balance_loss_bwd: grid too large");
  const double f_norm = static_cast<double>(n_experts) / static_cast<double>(top_k * seq);
  const double coef = dloss * alpha / static_cast<double>(batch) / static_cast<double>(seq);
  balance_loss_bwd_kernel<<<static_cast<unsigned>(batch * g.chunks_per_sequence), kThreads,
                            n_experts * sizeof(int32_t), stream>>>(
      dscores, scores, topk_idx, seq, static_cast<int>(n_experts), static_cast<int>(top_k),
      g.chunk_tokens, g.chunks_per_sequence, f_norm, coef, accumulate);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void update_balance_bias(float* bias, const int64_t* load, int64_t n_experts, float speed,
                         cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(n_experts >= 1, "update_balance_bias: expert count must be positive");
  FRUGAL_CUDA_REQUIRE(bias != nullptr && load != nullptr, "update_balance_bias: null tensor");
  update_balance_bias_kernel<<<1, kBiasThreads, 0, stream>>>(bias, load, n_experts, speed);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
