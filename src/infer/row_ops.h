// Row-invariant CPU primitives for inference: every output row is a function of its own input
// row only, computed in one fixed order whatever else is in the batch.
//
// Why: the engine batches different requests together, prefill rows with decode rows, and the
// main model's verification of a speculative draft with its plain decoding. When a row's result
// did not depend on its neighbours (as BLAS GEMMs do not promise: kernels and blockings change
// with M), a token's logits would change by a rounding error with the batch, and greedy decoding
// could pick a different token on a near tie. With these primitives a request produces the same
// bits alone, batched, prefilled at once or fed one token at a time, with or without
// speculation.
//
//   dot(a, b, n)                      8 interleaved partial sums over i = 0, 8, 16, ..., then the
//                                     tail, combined as ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7))
//   linear_rows(y, x, w, rows, out, in)   y[r, o] = dot(x[r, :], w[o, :])   (y = x W^T, W [out, in])
// OpenMP splits the output columns between threads; up to 4 rows share each load of a weight row
// but keep their own partial sums, so every y[r, o] equals the dot call bit for bit.
#pragma once

#include <cstdint>

namespace frugal::infer {

// Four float lanes (GCC/Clang vector extension); lane-wise IEEE operations, like scalar code.
typedef float Float4 __attribute__((vector_size(16)));

inline Float4 load_float4(const float* p) {
  Float4 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// The lane sums s[0..8) of dot(): s[j] = sum over i = j, j+8, j+16, ... of a[i] * b[i] (in order),
// then the tail n - n%8 .. n-1 added to lanes 0, 1, ...
inline float combine_lanes(const float* s) {
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

inline float dot(const float* a, const float* b, int64_t n) {
  Float4 lo = {0, 0, 0, 0}, hi = lo;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    lo += load_float4(a + i) * load_float4(b + i);
    hi += load_float4(a + i + 4) * load_float4(b + i + 4);
  }
  float s[8];
  __builtin_memcpy(s, &lo, sizeof lo);
  __builtin_memcpy(s + 4, &hi, sizeof hi);
  for (int j = 0; i + j < n; ++j) s[j] += a[i + j] * b[i + j];
  return combine_lanes(s);
}

// y [rows, out] = x [rows, in] · w [out, in]^T
void linear_rows(float* y, const float* x, const float* w, int64_t rows, int64_t out, int64_t in);

// y [rows, d] = x * rsqrt(mean(x^2) + eps) * weight, row by row (cpu::rmsnorm_fwd's arithmetic).
void rmsnorm_rows(float* y, const float* x, const float* weight, int64_t rows, int64_t d, double eps);

}  // namespace frugal::infer
