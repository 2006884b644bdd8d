// Complementary sequence-wise balance loss of DeepSeek-V3 (spec §2.3, report eq. 17-20), for one
// MoE layer over a batch of `batch` sequences of `seq` tokens (token t of sequence b is row
// b*seq + t of scores [batch*seq, E] and topk_idx [batch*seq, K]):
//   s'_{i,t} = s_{i,t} / sum_j s_{j,t}                (scores normalised over all E experts)
//   P_i      = (1/T) sum_t s'_{i,t}                   (T = seq)
//   f_i      = E / (K T) * count_t[i routed at t]     (the ACTUAL selection topk_idx, i.e. the
//                                                      biased choice of noaux_tc; the report writes
//                                                      TopK over the unbiased s)
//   loss     = alpha * mean_b sum_i f_i P_i
// f carries no gradient; the gradient flows through P into the scores:
//   g_{i,t}  = dloss * alpha / batch * f_i / T        (d loss / d s')
//   ds_{j,t} = (g_{j,t} - sum_i g_{i,t} s'_{i,t}) / sum_i s_{i,t}
#pragma once

#include <cstdint>

namespace frugal::cpu {

template <class T>
double seq_balance_loss_fwd(const T* scores, const int64_t* topk_idx, int64_t batch, int64_t seq,
                            int64_t n_experts, int64_t top_k, double alpha);

// dscores [batch*seq, E] (+)= d(dloss * loss)/d(scores).
template <class T>
void seq_balance_loss_bwd(T* dscores, const T* scores, const int64_t* topk_idx, int64_t batch,
                          int64_t seq, int64_t n_experts, int64_t top_k, double alpha, double dloss,
                          bool accumulate);

}  // namespace frugal::cpu
