// CPU emulation of the block-scaled FP8 GEMM (see gemm_fp8.h): dequantize, then a double-precision
// dot product per output. Rows of C are independent, so the OpenMP split does not change results.
#include <vector>

#include "kernels/gemm/gemm_fp8.h"
#include "kernels/quant/quant.h"

namespace frugal::cpu {

void gemm_fp8_nt_emulated(int64_t m, int64_t n, int64_t k, const uint8_t* a, const float* a_scales,
                          const uint8_t* b, const float* b_scales, bool b_block_scaled, float beta,
                          float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  std::vector<float> a_values(static_cast<size_t>(m * k)), b_values(static_cast<size_t>(n * k));
  if (k > 0) {
    dequantize_act_1x128(a_values.data(), a, a_scales, m, k);  // [M,K]
    if (b_block_scaled)
      dequantize_weight_128x128(b_values.data(), b, b_scales, n, k);  // [N,K]
    else
      dequantize_act_1x128(b_values.data(), b, b_scales, n, k);  // [N,K]
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    const float* a_row = a_values.data() + i * k;
    for (int64_t j = 0; j < n; ++j) {
      const float* b_row = b_values.data() + j * k;
      double sum = 0.0;
      for (int64_t t = 0; t < k; ++t) sum += static_cast<double>(a_row[t]) * b_row[t];
      float& out = c[i * ldc + j];
      out = static_cast<float>(beta == 0.0f ? sum : static_cast<double>(beta) * out + sum);
    }
  }
}

}  // namespace frugal::cpu
