// What the tests of the grouped Hopper GEMMs share (test_grouped_gemm_sm90_cuda.cc,
// test_grouped_gemm_fp8_sm90_cuda.cc): a case (group row counts, the buffer's row bound, the
// weight shape), its offsets and label, and the Wgrad checks both kernels face: two overwriting
// runs (against the CPU reference and cuBLASLt, then bit for bit against each other), then an
// accumulating run onto random values, where empty groups must keep their bits.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace frugal::testing {

struct GroupedCase {
  std::string name;
  std::vector<int64_t> rows;  // per group
  int64_t max_rows;
  int64_t n, k;  // the weight W_g [n, k]; Wgrad dW_g [n, k]
};

inline std::vector<int64_t> offsets_of(const std::vector<int64_t>& rows) {
  std::vector<int64_t> offsets(rows.size() + 1, 0);
  for (size_t g = 0; g < rows.size(); ++g) offsets[g + 1] = offsets[g] + rows[g];
  return offsets;
}

inline std::string shape_of(const GroupedCase& c) {
  return std::to_string(c.rows.size()) + "g " + std::to_string(c.max_rows) + "r n" +
         std::to_string(c.n) + " k" + std::to_string(c.k);
}

// `wgrad(dw, accumulate)` launches the kernel into device dW [groups, n, k] and waits for it.
// `op` names it in the CHECK lines ("grouped_sm90 tn"); dw_ref is the CPU reference, dw_blas the
// cuBLASLt result (compared within vs_cublas_tolerance when compare_with_cublas); `seed` draws the
// accumulation's starting values.
inline void check_wgrad_runs(const std::string& op, const GroupedCase& c,
                             const std::vector<float>& dw_ref, const std::vector<float>& dw_blas,
                             bool compare_with_cublas, double tolerance,
                             double vs_cublas_tolerance, uint64_t seed,
                             const std::function<void(float* dw, bool accumulate)>& wgrad) {
  const std::string shape = shape_of(c);
  const int64_t groups = static_cast<int64_t>(c.rows.size()), n = c.n, k = c.k;
  DeviceArray<float> dw(groups * n * k);
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    dw.poison();
    wgrad(dw.get(), false);
    const std::vector<float> out = dw.download();
    if (run == 0) {
      expect_close(op + " " + c.name, shape, out, dw_ref, tolerance);
      if (compare_with_cublas)
        expect_close(op + " vs cublas " + c.name, shape, out, dw_blas, vs_cublas_tolerance);
      first = out;
    } else {
      expect_same_bits(op + " " + c.name, shape, first, out);
    }
  }
  const std::vector<float> init = random_normal(groups * n * k, seed);
  std::vector<float> expected(init);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += dw_ref[i];
  dw.upload(init);
  wgrad(dw.get(), true);
  const std::vector<float> out = dw.download();
  expect_close(op + " acc " + c.name, shape, out, expected, tolerance);
  // Empty groups keep their values bit for bit.
  std::vector<float> kept, original;
  for (int64_t g = 0; g < groups; ++g)
    if (c.rows[g] == 0) {
      kept.insert(kept.end(), out.begin() + g * n * k, out.begin() + (g + 1) * n * k);
      original.insert(original.end(), init.begin() + g * n * k, init.begin() + (g + 1) * n * k);
    }
  if (!kept.empty()) expect_identical_bits(op + " acc empty " + c.name, shape, kept, original);
}

}  // namespace frugal::testing
