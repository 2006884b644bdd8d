// Router settings for the router tests (CPU test_router.cc, CUDA test_moe_cuda.cc) in one call.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/moe/router.h"

namespace frugal::testing {

inline cpu::RouterParams router_params(int64_t experts, int64_t top_k, int64_t n_group,
                                       int64_t topk_group, cpu::ScoringFunc func,
                                       cpu::TopkMethod method, bool norm, double scale,
                                       double masked_group_fill = -INFINITY) {
  cpu::RouterParams p;
  p.n_experts = experts;
  p.top_k = top_k;
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.scoring_func = func;
  p.topk_method = method;
  p.norm_topk_prob = norm;
  p.routed_scaling_factor = scale;
  p.masked_group_fill = masked_group_fill;
  return p;
}

}  // namespace frugal::testing
