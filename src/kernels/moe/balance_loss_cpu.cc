// CPU reference of the sequence-wise balance loss (see balance_loss.h). One sequence per loop
// iteration; the batch mean is summed serially, so the result does not depend on thread count.
#include <vector>

#include "kernels/moe/balance_loss.h"

namespace frugal::cpu {
namespace {

// f_i of one sequence: E / (K T) times the tokens routed to expert i.   [E]
void routed_fraction(std::vector<double>& f, const int64_t* topk_idx, int64_t seq,
                     int64_t n_experts, int64_t top_k) {
  f.assign(n_experts, 0.0);
  for (int64_t a = 0; a < seq * top_k; ++a) f[topk_idx[a]] += 1.0;
  const double norm = static_cast<double>(n_experts) / static_cast<double>(top_k * seq);
  for (double& v : f) v *= norm;
}

}  // namespace

template <class T>
double seq_balance_loss_fwd(const T* scores, const int64_t* topk_idx, int64_t batch, int64_t seq,
                            int64_t n_experts, int64_t top_k, double alpha) {
  std::vector<double> per_sequence(batch);
#pragma omp parallel
  {
    std::vector<double> f, p;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      routed_fraction(f, topk_idx + b * seq * top_k, seq, n_experts, top_k);
      p.assign(n_experts, 0.0);  // P_i * T
      for (int64_t t = 0; t < seq; ++t) {
        const T* s = scores + (b * seq + t) * n_experts;
        double sum = 0;
        for (int64_t i = 0; i < n_experts; ++i) sum += s[i];
        for (int64_t i = 0; i < n_experts; ++i) p[i] += s[i] / sum;
      }
      double loss = 0;
      for (int64_t i = 0; i < n_experts; ++i) loss += f[i] * p[i] / static_cast<double>(seq);
      per_sequence[b] = loss;
    }
  }
  double total = 0;
  for (double v : per_sequence) total += v;
  return batch > 0 ? alpha * total / static_cast<double>(batch) : 0.0;
}

template <class T>
void seq_balance_loss_bwd(T* dscores, const T* scores, const int64_t* topk_idx, int64_t batch,
                          int64_t seq, int64_t n_experts, int64_t top_k, double alpha, double dloss,
                          bool accumulate) {
  const double coef = dloss * alpha / static_cast<double>(batch) / static_cast<double>(seq);
#pragma omp parallel
  {
    std::vector<double> f;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      routed_fraction(f, topk_idx + b * seq * top_k, seq, n_experts, top_k);
      for (int64_t t = 0; t < seq; ++t) {
        const int64_t row = (b * seq + t) * n_experts;
        const T* s = scores + row;
        double sum = 0;
        for (int64_t i = 0; i < n_experts; ++i) sum += s[i];
        double dot = 0;  // sum_i g_i s'_i
        for (int64_t i = 0; i < n_experts; ++i) dot += coef * f[i] * s[i] / sum;
        for (int64_t j = 0; j < n_experts; ++j) {
          T grad = static_cast<T>((coef * f[j] - dot) / sum);
          dscores[row + j] = accumulate ? dscores[row + j] + grad : grad;
        }
      }
    }
  }
}

template double seq_balance_loss_fwd<float>(const float*, const int64_t*, int64_t, int64_t, int64_t,
                                            int64_t, double);
template double seq_balance_loss_fwd<double>(const double*, const int64_t*, int64_t, int64_t,
                                             int64_t, int64_t, double);
template void seq_balance_loss_bwd<float>(float*, const float*, const int64_t*, int64_t, int64_t,
                                          int64_t, int64_t, double, double, bool);
template void seq_balance_loss_bwd<double>(double*, const double*, const int64_t*, int64_t, int64_t,
                                           int64_t, int64_t, double, double, bool);

}  // namespace frugal::cpu
