// MoE router after its GEMM (spec §2.1): scoring, expert selection and routing weights.
//
// Inputs: logits [tokens, E] = x · W_gᵀ (computed by the caller in T, fp32/fp64: the gate keeps
// higher precision), bias [E] = e_score_correction_bias (may be null = 0; read by noaux_tc only).
// Per token:
//   1. s = sigmoid(logits) or softmax(logits) over the E experts          scores [tokens, E]
//   2. selection score c:
//        noaux_tc:              c = s + bias; group score = sum of the group's top-2 of c
//        group_limited_greedy:  c = s;        group score = max of the group's c (DeepSeek-V2)
//        greedy:                c = s;        no groups
//      keep the topk_group best groups; experts of the other groups get c = masked_group_fill
//      (-inf by default as in DeepSeek's code; 0.0 reproduces Hugging Face transformers, which
//      differs when some kept c are negative: a masked expert at 0 then beats them)
//   3. top_k experts by c                                                  topk_idx [tokens, K]
//   4. w_k = s[idx_k] (UNBIASED); if norm_topk_prob: w /= (sum_k w + 1e-20); w *= routed_scaling
//                                                                          topk_weight [tokens, K]
// Ties (between groups or experts) go to the lower index, so routing is deterministic. topk_idx
// lists the chosen experts by decreasing c.
//
// Backward (the selection is piecewise constant, so only s carries gradient):
//   from dweights [tokens, K] and optionally dscores [tokens, E] (an extra gradient w.r.t. the raw
//   scores s, e.g. from the sequence-wise balance loss) to dlogits [tokens, E] (assigned), exact
//   through normalisation, scaling and sigmoid/softmax.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

namespace frugal::cpu {

enum class ScoringFunc { Sigmoid, Softmax };
enum class TopkMethod { Greedy, GroupLimitedGreedy, NoauxTc };

struct RouterParams {
  int64_t n_experts = 0;   // E (n_routed_experts)
  int64_t top_k = 1;       // K (num_experts_per_tok)
  int64_t n_group = 1;     // expert groups (E % n_group == 0); ignored by greedy
  int64_t topk_group = 1;  // groups kept per token; ignored by greedy
  ScoringFunc scoring_func = ScoringFunc::Sigmoid;
  TopkMethod topk_method = TopkMethod::NoauxTc;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  double masked_group_fill = -std::numeric_limits<double>::infinity();
};

// Parses the Hugging Face config strings ("sigmoid"/"softmax"; "noaux_tc"/"group_limited_greedy"/
// "greedy"); throws frugal::Error naming `key` and the accepted values otherwise.
ScoringFunc parse_scoring_func(const std::string& name, const std::string& key);
TopkMethod parse_topk_method(const std::string& name, const std::string& key);

// Throws frugal::Error when the sizes cannot route (E % n_group, topk_group > n_group, top_k more
// than the kept groups hold, noaux_tc groups smaller than 2, ...). Messages name the config key
// with `key_prefix` in front ("model." gives "model.n_group: ...").
void validate_router(const RouterParams& params, const std::string& key_prefix = "");

// scores [tokens, E] (s, saved for backward), topk_idx [tokens, K], topk_weight [tokens, K].
template <class T>
void router_fwd(int64_t* topk_idx, T* topk_weight, T* scores, const T* logits, const T* bias,
                int64_t tokens, const RouterParams& params);

// dlogits [tokens, E] (assigned) from dweights [tokens, K] and dscores [tokens, E] (may be null),
// given the forward's scores and topk_idx.
template <class T>
void router_bwd(T* dlogits, const T* dweights, const T* dscores, const T* scores,
                const int64_t* topk_idx, int64_t tokens, const RouterParams& params);

}  // namespace frugal::cpu
