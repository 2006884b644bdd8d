// CUDA MoE router (rules in router.h, interface in moe_cuda.h): scores, expert selection and
// routing weights per token, and the backward to the logits.
//   logits [tokens, E] fp32, bias [E] fp32 or null  ->  scores [tokens, E], topk_idx [tokens, K]
//   (int32), topk_weight [tokens, K];   dweights [tokens, K] (+ dscores) -> dlogits [tokens, E].
//
// One warp per token; each warp keeps its token's scores s and selection scores c in shared
// memory. A selection is K rounds of a warp arg-max: each lane scans its experts (lane, lane+32,
// ...) in ascending order, then a shuffle tree keeps the larger value, the lower index on equal
// values. That order is total, so the winner is the CPU's (partial_sort by value, then index).
// Group scores (noaux_tc: sum of the group's two largest c; group_limited_greedy: the largest)
// are computed by one lane per group with the CPU's loop. Weights are summed by lane 0 in k order.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/moe/moe_cuda.h"

namespace frugal::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kRouterWarps = 4;  // tokens per block
// A lane owns experts lane + 32*i, i < 32: its "already chosen" flags fit in one uint32, and the
// per-warp shared arrays (s, c, group scores: 3E floats x 4 warps) stay within 48 KiB.
constexpr int64_t kRouterMaxExperts = 1024;
constexpr int kNoIndex = INT_MAX;

struct RouterArgs {
  int n_experts, top_k, n_group, topk_group, group_size;
  bool softmax;      // scoring function softmax (else sigmoid)
  bool noaux_tc;     // group score = sum of top-2 (else max)
  bool grouped;      // group-limited selection (method not greedy and n_group > 1)
  bool add_bias;     // noaux_tc with a bias
  bool norm_topk_prob;
  float routed_scaling;
  float masked_fill;
};

struct Candidate {
  float value;
  int index;
};

// a ranks before b: larger value, then lower index; an empty candidate ranks last.
__device__ __forceinline__ bool ranks_before(Candidate a, Candidate b) {
  if (a.index == kNoIndex) return false;
  if (b.index == kNoIndex) return true;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// The best candidate of the warp, the same on every lane (lane 0's result is broadcast so that
// lanes agree even on NaN inputs, where the order is not total).
__device__ __forceinline__ Candidate warp_best(Candidate c) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    Candidate other{__shfl_xor_sync(kFullMask, c.value, offset),
                    __shfl_xor_sync(kFullMask, c.index, offset)};
    if (ranks_before(other, c)) c = other;
  }
  return Candidate{__shfl_sync(kFullMask, c.value, 0), __shfl_sync(kFullMask, c.index, 0)};
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Butterfly sum: every lane adds the same pairs (a+b = b+a), so all lanes hold the same bits.
__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// The best of values[lane + 32*i] (i < count_per_lane, index < n) whose bit i is clear in `taken`.
__device__ __forceinline__ Candidate lane_best(const float* values, int n, int lane,
                                               uint32_t taken) {
  Candidate best{-INFINITY, kNoIndex};
  for (int i = 0, e = lane; e < n; ++i, e += kWarpSize) {
    if (taken & (1u << i)) continue;
    const Candidate c{values[e], e};
    if (ranks_before(c, best)) best = c;
  }
  return best;
}

__global__ void __launch_bounds__(kRouterWarps* kWarpSize)
    router_fwd_kernel(int32_t* __restrict__ topk_idx, float* __restrict__ topk_weight,
                      float* __restrict__ scores, const float* __restrict__ logits,
                      const float* __restrict__ bias, int64_t tokens, RouterArgs a) {
  extern __shared__ float router_shared[];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouterWarps + warp;
  if (t >= tokens) return;  // whole warps leave; only __syncwarp below
  const int E = a.n_experts;
  float* s = router_shared + static_cast<int64_t>(warp) * (2 * E + a.n_group);  // [E]
  float* c = s + E;                                                             // [E]
  float* group = c + E;                                                         // [n_group]
  const float* z = logits + t * E;
  float* s_out = scores + t * E;

  // 1. scores, the CPU's formulas
  if (a.softmax) {
    float mx = -INFINITY;
    for (int e = lane; e < E; e += kWarpSize) mx = fmaxf(mx, z[e]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < E; e += kWarpSize) {
      const float v = expf(z[e] - mx);
      s[e] = v;
      sum += v;
    }
    sum = warp_sum(sum);
    for (int e = lane; e < E; e += kWarpSize) s[e] = s[e] / sum;
  } else {
    for (int e = lane; e < E; e += kWarpSize) {
      const float v = z[e];
      s[e] = v >= 0.0f ? 1.0f / (1.0f + expf(-v)) : expf(v) / (1.0f + expf(v));
    }
  }
  for (int e = lane; e < E; e += kWarpSize) {
    s_out[e] = s[e];
    c[e] = a.add_bias ? s[e] + bias[e] : s[e];
  }
  __syncwarp();

  // 2. group limit: keep the topk_group best groups, fill the others' c
  if (a.grouped) {
    for (int g = lane; g < a.n_group; g += kWarpSize) {
      const float* cg = c + g * a.group_size;
      if (a.noaux_tc) {
        float first = -INFINITY, second = -INFINITY;
        for (int j = 0; j < a.group_size; ++j) {
          if (cg[j] > first) {
            second = first;
            first = cg[j];
          } else if (cg[j] > second) {
            second = cg[j];
          }
        }
        group[g] = first + second;
      } else {
        float best = cg[0];
        for (int j = 1; j < a.group_size; ++j) best = fmaxf(best, cg[j]);
        group[g] = best;
      }
    }
    __syncwarp();
    uint32_t kept = 0;  // bit i: group lane + 32*i kept
    for (int r = 0; r < a.topk_group; ++r) {
      const Candidate win = warp_best(lane_best(group, a.n_group, lane, kept));
      if (win.index != kNoIndex && win.index % kWarpSize == lane) kept |= 1u << (win.index / kWarpSize);
    }
    __syncwarp();
    for (int i = 0, g = lane; g < a.n_group; ++i, g += kWarpSize)
      group[g] = (kept & (1u << i)) ? 1.0f : 0.0f;
    __syncwarp();
    for (int e = lane; e < E; e += kWarpSize)
      if (group[e / a.group_size] == 0.0f) c[e] = a.masked_fill;
    __syncwarp();
  }

  // 3. top-K by c, 4. weights from the unbiased s
  int32_t* idx_out = topk_idx + t * a.top_k;
  float* w_out = topk_weight + t * a.top_k;
  uint32_t taken = 0;
  float sum = 0.0f;
  for (int k = 0; k < a.top_k; ++k) {
    const Candidate win = warp_best(lane_best(c, E, lane, taken));
    // validate_router guarantees K <= E, so a winner exists; index 0 guards against NaN logic
    const int chosen = win.index == kNoIndex ? 0 : win.index;
    if (chosen % kWarpSize == lane) taken |= 1u << (chosen / kWarpSize);
    if (lane == 0) {
      idx_out[k] = chosen;
      w_out[k] = s[chosen];
      sum += s[chosen];
    }
  }
  if (lane == 0) {
    const float denom = a.norm_topk_prob ? sum + 1e-20f : 1.0f;
    for (int k = 0; k < a.top_k; ++k) w_out[k] = w_out[k] / denom * a.routed_scaling;
  }
}

__global__ void __launch_bounds__(kRouterWarps* kWarpSize)
    router_bwd_kernel(float* __restrict__ dlogits, const float* __restrict__ dweights,
                      const float* __restrict__ dscores, const float* __restrict__ scores,
                      const int32_t* __restrict__ topk_idx, int64_t tokens, int E, int K,
                      bool softmax, bool norm_topk_prob, float routed_scaling) {
  extern __shared__ float router_shared[];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouterWarps + warp;
  if (t >= tokens) return;
  float* ds = router_shared + static_cast<int64_t>(warp) * E;  // [E] d loss / d s
  const float* s = scores + t * E;
  const int32_t* idx = topk_idx + t * K;
  const float* dw = dweights + t * K;
  for (int e = lane; e < E; e += kWarpSize) ds[e] = dscores != nullptr ? dscores[t * E + e] : 0.0f;
  __syncwarp();
  // w_k = scale * u_k / D, u_k = s[idx_k], D = sum_j u_j + 1e-20 (or 1); the experts of one token
  // are distinct, so each lane adds into its own ds entries.
  if (norm_topk_prob) {
    float sum = 0.0f, dot = 0.0f;  // every lane, in k order as the CPU
    for (int k = 0; k < K; ++k) {
      const int i = idx[k];
      const float u = (i >= 0 && i < E) ? s[i] : 0.0f;
      sum += u;
      dot += dw[k] * u;
    }
    const float denom = sum + 1e-20f;
    for (int k = lane; k < K; k += kWarpSize) {
      const int i = idx[k];
      if (i >= 0 && i < E) ds[i] += routed_scaling * (dw[k] / denom - dot / (denom * denom));
    }
  } else {
    for (int k = lane; k < K; k += kWarpSize) {
      const int i = idx[k];
      if (i >= 0 && i < E) ds[i] += routed_scaling * dw[k];
    }
  }
  __syncwarp();
  float* dl = dlogits + t * E;
  if (softmax) {  // dl = s * (ds - sum_j ds_j s_j)
    float dot = 0.0f;
    for (int e = lane; e < E; e += kWarpSize) dot += ds[e] * s[e];
    dot = warp_sum(dot);
    for (int e = lane; e < E; e += kWarpSize) dl[e] = s[e] * (ds[e] - dot);
  } else {
    for (int e = lane; e < E; e += kWarpSize) dl[e] = ds[e] * s[e] * (1.0f - s[e]);
  }
}

unsigned router_blocks(int64_t tokens) {
  return static_cast<unsigned>((tokens + kRouterWarps - 1) / kRouterWarps);
}

}  // namespace

void router_fwd(int32_t* topk_idx, float* topk_weight, float* scores, const float* logits,
                const float* bias, int64_t tokens, const cpu::RouterParams& params,
                cudaStream_t stream) {
  cpu::validate_router(params);
  FRUGAL_CUDA_REQUIRE(tokens >= 0, "router_fwd: negative token count");
  FRUGAL_CUDA_REQUIRE(params.n_experts <= kRouterMaxExperts,
                      "router_fwd: at most 1024 experts on the GPU");
  FRUGAL_CUDA_REQUIRE(tokens / kRouterWarps < INT_MAX, "router_fwd: too many tokens for one grid");
  if (tokens == 0) return;
  FRUGAL_CUDA_REQUIRE(topk_idx != nullptr && topk_weight != nullptr && scores != nullptr &&
                          logits != nullptr,
                      "router_fwd: null tensor");
  RouterArgs a;
  a.n_experts = static_cast<int>(params.n_experts);
  a.top_k = static_cast<int>(params.top_k);
  a.grouped = params.topk_method != cpu::TopkMethod::Greedy && params.n_group > 1;
  a.n_group = a.grouped ? static_cast<int>(params.n_group) : 1;
  a.topk_group = a.grouped ? static_cast<int>(params.topk_group) : 1;
  a.group_size = a.n_experts / a.n_group;
  a.softmax = params.scoring_func == cpu::ScoringFunc::Softmax;
  a.noaux_tc = params.topk_method == cpu::TopkMethod::NoauxTc;
  a.add_bias = a.noaux_tc && bias != nullptr;
  a.norm_topk_prob = params.norm_topk_prob;
  a.routed_scaling = static_cast<float>(params.routed_scaling_factor);
  a.masked_fill = static_cast<float>(params.masked_group_fill);
  const size_t shared = sizeof(float) * kRouterWarps * (2 * a.n_experts + a.n_group);
  router_fwd_kernel<<<router_blocks(tokens), kRouterWarps * kWarpSize, shared, stream>>>(
      topk_idx, topk_weight, scores, logits, bias, tokens, a);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

void router_bwd(float* dlogits, const float* dweights, const float* dscores, const float* scores,
                const int32_t* topk_idx, int64_t tokens, const cpu::RouterParams& params,
                cudaStream_t stream) {
  FRUGAL_CUDA_REQUIRE(tokens >= 0, "router_bwd: negative token count");
  FRUGAL_CUDA_REQUIRE(params.n_experts > 0 && params.n_experts <= kRouterMaxExperts,
                      "router_bwd: expert count must be in [1, 1024]");
  FRUGAL_CUDA_REQUIRE(params.top_k >= 1 && params.top_k <= params.n_experts,
                      "router_bwd: top_k must be in [1, n_experts]");
  FRUGAL_CUDA_REQUIRE(tokens / kRouterWarps < INT_MAX, "router_bwd: too many tokens for one grid");
  if (tokens == 0) return;
  FRUGAL_CUDA_REQUIRE(dlogits != nullptr && dweights != nullptr && scores != nullptr &&
                          topk_idx != nullptr,
                      "router_bwd: null tensor");
  const size_t shared = sizeof(float) * kRouterWarps * params.n_experts;
  router_bwd_kernel<<<router_blocks(tokens), kRouterWarps * kWarpSize, shared, stream>>>(
      dlogits, dweights, dscores, scores, topk_idx, tokens, static_cast<int>(params.n_experts),
      static_cast<int>(params.top_k), params.scoring_func == cpu::ScoringFunc::Softmax,
      params.norm_topk_prob, static_cast<float>(params.routed_scaling_factor));
  FRUGAL_CUDA_CHECK_LAUNCH();
}

}  // namespace frugal::cuda
