// CPU reference of the MoE router (see router.h). One token per loop iteration: rows are
// independent, so the OpenMP loops give the same result on any thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "kernels/moe/router.h"

namespace frugal::cpu {
namespace {

// Indices of the `count` largest values, by decreasing value and then increasing index.
template <class V>
void top_indices(const std::vector<V>& values, int64_t count, std::vector<int64_t>& order) {
  order.resize(values.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](int64_t a, int64_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  order.resize(count);
}

template <class T>
void score_row(T* s, const T* logits, int64_t n, ScoringFunc func) {
  if (func == ScoringFunc::Sigmoid) {
    for (int64_t e = 0; e < n; ++e) {
      T z = logits[e];
      s[e] = z >= T(0) ? T(1) / (T(1) + std::exp(-z)) : std::exp(z) / (T(1) + std::exp(z));
    }
    return;
  }
  T mx = logits[0];
  for (int64_t e = 1; e < n; ++e) mx = std::max(mx, logits[e]);
  T sum = 0;
  for (int64_t e = 0; e < n; ++e) sum += (s[e] = std::exp(logits[e] - mx));
  for (int64_t e = 0; e < n; ++e) s[e] /= sum;
}

}  // namespace

ScoringFunc parse_scoring_func(const std::string& name, const std::string& key) {
  if (name == "sigmoid") return ScoringFunc::Sigmoid;
  if (name == "softmax") return ScoringFunc::Softmax;
  fail("{}: unknown scoring function \"{}\" (expected \"sigmoid\" or \"softmax\")", key, name);
}

TopkMethod parse_topk_method(const std::string& name, const std::string& key) {
  if (name == "noaux_tc") return TopkMethod::NoauxTc;
  if (name == "group_limited_greedy") return TopkMethod::GroupLimitedGreedy;
  if (name == "greedy") return TopkMethod::Greedy;
  fail(
      "{}: unknown top-k method \"{}\" (expected \"noaux_tc\", \"group_limited_greedy\" or "
      "\"greedy\")",
      key, name);
}

void validate_router(const RouterParams& p, const std::string& key_prefix) {
  const std::string& k = key_prefix;
  FRUGAL_CHECK(p.n_experts > 0, "{}n_routed_experts: must be positive, got {}", k, p.n_experts);
  FRUGAL_CHECK(p.top_k >= 1 && p.top_k <= p.n_experts,
               "{}num_experts_per_tok: must be in [1, {}n_routed_experts={}], got {}", k, k,
               p.n_experts, p.top_k);
  FRUGAL_CHECK(p.routed_scaling_factor > 0, "{}routed_scaling_factor: must be positive, got {}", k,
               p.routed_scaling_factor);
  if (p.topk_method == TopkMethod::Greedy) return;
  FRUGAL_CHECK(p.n_group >= 1 && p.n_experts % p.n_group == 0,
               "{}n_group: must divide {}n_routed_experts={}, got {}", k, k, p.n_experts,
               p.n_group);
  FRUGAL_CHECK(p.topk_group >= 1 && p.topk_group <= p.n_group,
               "{}topk_group: must be in [1, {}n_group={}], got {}", k, k, p.n_group, p.topk_group);
  const int64_t group_size = p.n_experts / p.n_group;
  FRUGAL_CHECK(p.top_k <= p.topk_group * group_size,
               "{}num_experts_per_tok: {} exceeds the {} experts of {}topk_group={} groups of {}",
               k, p.top_k, p.topk_group * group_size, k, p.topk_group, group_size);
  if (p.topk_method == TopkMethod::NoauxTc)
    FRUGAL_CHECK(group_size >= 2,
                 "{}n_group: noaux_tc scores a group by its top-2 experts, so a group needs at "
                 "least 2 experts ({}n_routed_experts={} / {}n_group={})",
                 k, k, p.n_experts, k, p.n_group);
}

template <class T>
void router_fwd(int64_t* topk_idx, T* topk_weight, T* scores, const T* logits, const T* bias,
                int64_t tokens, const RouterParams& p) {
  validate_router(p);
  const int64_t E = p.n_experts, K = p.top_k;
  const bool grouped = p.topk_method != TopkMethod::Greedy && p.n_group > 1;
  const int64_t group_size = grouped ? E / p.n_group : E;
#pragma omp parallel
  {
    // Selection arithmetic runs in T, as the reference implementations do in fp32.
    std::vector<T> choice(E), group_score(grouped ? p.n_group : 0);
    std::vector<int64_t> order;
    std::vector<char> kept(grouped ? p.n_group : 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      T* s = scores + t * E;
      score_row(s, logits + t * E, E, p.scoring_func);  // [E]
      for (int64_t e = 0; e < E; ++e)
        choice[e] = p.topk_method == TopkMethod::NoauxTc && bias ? s[e] + bias[e] : s[e];
      if (grouped) {
        for (int64_t g = 0; g < p.n_group; ++g) {
          const T* c = choice.data() + g * group_size;
          if (p.topk_method == TopkMethod::NoauxTc) {  // sum of the two largest
            T first = -std::numeric_limits<T>::infinity(), second = first;
            for (int64_t j = 0; j < group_size; ++j) {
              if (c[j] > first) {
                second = first;
                first = c[j];
              } else if (c[j] > second) {
                second = c[j];
              }
            }
            group_score[g] = first + second;
          } else {
            group_score[g] = *std::max_element(c, c + group_size);
          }
        }
        top_indices(group_score, p.topk_group, order);
        std::fill(kept.begin(), kept.end(), 0);
        for (int64_t g : order) kept[g] = 1;
        for (int64_t g = 0; g < p.n_group; ++g)
          if (!kept[g])
            std::fill(choice.begin() + g * group_size, choice.begin() + (g + 1) * group_size,
                      static_cast<T>(p.masked_group_fill));
      }
      top_indices(choice, K, order);  // [K] by decreasing choice score
      int64_t* idx = topk_idx + t * K;
      T* w = topk_weight + t * K;
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        idx[k] = order[k];
        w[k] = s[order[k]];  // unbiased score
        sum += w[k];
      }
      const T denom = p.norm_topk_prob ? sum + T(1e-20) : T(1);
      for (int64_t k = 0; k < K; ++k) w[k] = w[k] / denom * static_cast<T>(p.routed_scaling_factor);
    }
  }
}

template <class T>
void router_bwd(T* dlogits, const T* dweights, const T* dscores, const T* scores,
                const int64_t* topk_idx, int64_t tokens, const RouterParams& p) {
  const int64_t E = p.n_experts, K = p.top_k;
  const T scale = static_cast<T>(p.routed_scaling_factor);
#pragma omp parallel
  {
    std::vector<T> ds(E);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const T* s = scores + t * E;
      const int64_t* idx = topk_idx + t * K;
      const T* dw = dweights + t * K;
      if (dscores)
        std::copy(dscores + t * E, dscores + (t + 1) * E, ds.begin());
      else
        std::fill(ds.begin(), ds.end(), T(0));
      // w_k = scale * u_k / D with u_k = s[idx_k], D = sum_j u_j + 1e-20 (or D = 1):
      //   dL/du_j = scale * (dw_j / D - sum_k dw_k u_k / D^2)
      if (p.norm_topk_prob) {
        T sum = 0, dot = 0;
        for (int64_t k = 0; k < K; ++k) {
          sum += s[idx[k]];
          dot += dw[k] * s[idx[k]];
        }
        const T denom = sum + T(1e-20);
        for (int64_t k = 0; k < K; ++k)
          ds[idx[k]] += scale * (dw[k] / denom - dot / (denom * denom));
      } else {
        for (int64_t k = 0; k < K; ++k) ds[idx[k]] += scale * dw[k];
      }
      T* dl = dlogits + t * E;
      if (p.scoring_func == ScoringFunc::Sigmoid) {
        for (int64_t e = 0; e < E; ++e) dl[e] = ds[e] * s[e] * (T(1) - s[e]);
      } else {  // softmax: dl = s * (ds - sum_j ds_j s_j)
        T dot = 0;
        for (int64_t e = 0; e < E; ++e) dot += ds[e] * s[e];
        for (int64_t e = 0; e < E; ++e) dl[e] = s[e] * (ds[e] - dot);
      }
    }
  }
}

template void router_fwd<float>(int64_t*, float*, float*, const float*, const float*, int64_t,
                                const RouterParams&);
template void router_fwd<double>(int64_t*, double*, double*, const double*, const double*, int64_t,
                                 const RouterParams&);
template void router_bwd<float>(float*, const float*, const float*, const float*, const int64_t*,
                                int64_t, const RouterParams&);
template void router_bwd<double>(double*, const double*, const double*, const double*,
                                 const int64_t*, int64_t, const RouterParams&);

}  // namespace frugal::cpu
