// Shared by the CUDA optimizer tests (test_adamw_cuda.cc, test_adamw_multi_cuda.cc): the host
// emulation of one AdamW step with BF16 moments.
#pragma once

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "kernels/adamw/adamw_cuda.h"

namespace frugal::testing {

// The CPU AdamW formula in double with the moments stored as bf16 (one rounding from double).
inline void emulate_bf16_step(std::vector<float>& w, std::vector<float>& m,
                              std::vector<float>& v, const std::vector<float>& grad, float clip,
                              const cuda::AdamWStep& s) {
  const double beta1 = s.beta1, beta2 = s.beta2, eps = s.eps, lr = s.lr;
  const double decay = lr * static_cast<double>(s.weight_decay);
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(s.step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(s.step));
  for (size_t i = 0; i < w.size(); ++i) {
    const double g = static_cast<double>(grad[i]) * static_cast<double>(clip);
    m[i] = bf16_bits_to_float(double_to_bf16_bits(beta1 * m[i] + (1.0 - beta1) * g));
    v[i] = bf16_bits_to_float(double_to_bf16_bits(beta2 * v[i] + (1.0 - beta2) * g * g));
    const double m_hat = m[i] / bias_correction1, v_hat = v[i] / bias_correction2;
    const double p = w[i];
    w[i] = static_cast<float>(p - decay * p - lr * m_hat / (std::sqrt(v_hat) + eps));
  }
}

}  // namespace frugal::testing
