// Row-invariant linear layer and RMSNorm (see row_ops.h).
#include "infer/row_ops.h"

#include <algorithm>
#include <vector>

#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal::infer {

void linear_rows(float* y, const float* x, const float* w, int64_t rows, int64_t out, int64_t in) {
  // Blocks of output columns per thread, and of rows inside, so a weight row is read from cache
  // for several input rows. The blocking changes the order of calls, never a call's arithmetic.
  constexpr int64_t kColumns = 16, kRows = 32;
  const int64_t column_blocks = (out + kColumns - 1) / kColumns;
#pragma omp parallel for schedule(static) if (rows * out * in > (1 << 15))
  for (int64_t cb = 0; cb < column_blocks; ++cb) {
    const int64_t o_end = std::min(out, (cb + 1) * kColumns);
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int64_t r_end = std::min(rows, r0 + kRows);
      for (int64_t o = cb * kColumns; o < o_end; ++o) {
        const float* wo = w + o * in;
        for (int64_t r = r0; r < r_end; ++r) y[r * out + o] = dot(x + r * in, wo, in);
      }
    }
  }
}

void rmsnorm_rows(float* y, const float* x, const float* weight, int64_t rows, int64_t d,
                  double eps) {
  std::vector<float> rstd(static_cast<size_t>(rows));
  cpu::rmsnorm_fwd(y, rstd.data(), x, weight, rows, d, eps);  // per row, fixed order
}

}  // namespace frugal::infer
