// Non-template parts of the MoE layer (moe.h): router settings from a config, load summary.
#include "model/moe.h"

#include <algorithm>

namespace frugal {

cpu::RouterParams router_params(const ModelConfig& config) {
  cpu::RouterParams p;
  p.n_experts = config.n_routed_experts;
  p.top_k = config.num_experts_per_tok;
  p.n_group = config.n_group;
  p.topk_group = config.topk_group;
  p.scoring_func = cpu::parse_scoring_func(config.scoring_func, "model.scoring_func");
  p.topk_method = cpu::parse_topk_method(config.topk_method, "model.topk_method");
  p.norm_topk_prob = config.norm_topk_prob;
  p.routed_scaling_factor = config.routed_scaling_factor;
  cpu::validate_router(p, "model.");
  return p;
}

ExpertLoadStats expert_load_stats(const std::vector<int64_t>& load) {
  ExpertLoadStats stats;
  if (load.empty()) return stats;
  stats.min = *std::min_element(load.begin(), load.end());
  stats.max = *std::max_element(load.begin(), load.end());
  for (int64_t v : load) stats.total += v;
  stats.mean = static_cast<double>(stats.total) / static_cast<double>(load.size());
  stats.max_over_mean = stats.total > 0 ? static_cast<double>(stats.max) / stats.mean : 0.0;
  return stats;
}

}  // namespace frugal

// Compile every member once for both element types (catches errors before a caller does).
namespace frugal {
template class MLP<float>;
template class MLP<double>;
template class MoE<float>;
template class MoE<double>;
}  // namespace frugal
