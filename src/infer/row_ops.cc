// Row-invariant linear layer and RMSNorm (see row_ops.h).
#include "infer/row_ops.h"

#include <algorithm>
#include <vector>

#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal::infer {

namespace {

// y[q] = dot(x[q], w) for q < R, with exactly dot()'s arithmetic per row (same lanes, same
// order, same final combination), so the result equals R separate dot calls bit for bit; the
// weight row is loaded once for all R rows.
// The tail and lane combination of dot() for one row, from its two accumulators.
inline float finish_row(Float4 lo, Float4 hi, const float* x, const float* w, int64_t i, int64_t n) {
  float s[8];
  __builtin_memcpy(s, &lo, sizeof lo);
  __builtin_memcpy(s + 4, &hi, sizeof hi);
  for (int j = 0; i + j < n; ++j) s[j] += x[i + j] * w[i + j];
  return combine_lanes(s);
}

// Named accumulators (not arrays) keep all of them in registers.
template <int R>
void dot_rows(float* y, int64_t y_stride, const float* x, int64_t x_stride, const float* w, int64_t n) {
  static_assert(R >= 1 && R <= 4);
  const float* x0 = x;
  const float* x1 = x + (R > 1 ? x_stride : 0);
  const float* x2 = x + (R > 2 ? 2 * x_stride : 0);
  const float* x3 = x + (R > 3 ? 3 * x_stride : 0);
  const Float4 zero = {0, 0, 0, 0};
  Float4 l0 = zero, h0 = zero, l1 = zero, h1 = zero, l2 = zero, h2 = zero, l3 = zero, h3 = zero;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const Float4 wl = load_float4(w + i), wh = load_float4(w + i + 4);
    l0 += load_float4(x0 + i) * wl;
    h0 += load_float4(x0 + i + 4) * wh;
    if constexpr (R > 1) {
      l1 += load_float4(x1 + i) * wl;
      h1 += load_float4(x1 + i + 4) * wh;
    }
    if constexpr (R > 2) {
      l2 += load_float4(x2 + i) * wl;
      h2 += load_float4(x2 + i + 4) * wh;
    }
    if constexpr (R > 3) {
      l3 += load_float4(x3 + i) * wl;
      h3 += load_float4(x3 + i + 4) * wh;
    }
  }
  y[0] = finish_row(l0, h0, x0, w, i, n);
  if constexpr (R > 1) y[y_stride] = finish_row(l1, h1, x1, w, i, n);
  if constexpr (R > 2) y[2 * y_stride] = finish_row(l2, h2, x2, w, i, n);
  if constexpr (R > 3) y[3 * y_stride] = finish_row(l3, h3, x3, w, i, n);
}

}  // namespace

void linear_rows(float* y, const float* x, const float* w, int64_t rows, int64_t out, int64_t in) {
  // Blocks of output columns per thread, and of rows inside, so a weight row is read from memory
  // once for up to 4 rows. The blocking changes the order of calls, never a row's arithmetic.
  constexpr int64_t kColumns = 16, kRows = 32;
  const int64_t column_blocks = (out + kColumns - 1) / kColumns;
#pragma omp parallel for schedule(static) if (rows * out * in > (1 << 15))
  for (int64_t cb = 0; cb < column_blocks; ++cb) {
    const int64_t o_end = std::min(out, (cb + 1) * kColumns);
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const int64_t r_end = std::min(rows, r0 + kRows);
      for (int64_t o = cb * kColumns; o < o_end; ++o) {
        const float* wo = w + o * in;
        int64_t r = r0;
        for (; r + 4 <= r_end; r += 4) dot_rows<4>(y + r * out + o, out, x + r * in, in, wo, in);
        switch (r_end - r) {
          case 3: dot_rows<3>(y + r * out + o, out, x + r * in, in, wo, in); break;
          case 2: dot_rows<2>(y + r * out + o, out, x + r * in, in, wo, in); break;
          case 1: dot_rows<1>(y + r * out + o, out, x + r * in, in, wo, in); break;
          default: break;
        }
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
