// The Hopper grouped BF16 GEMMs (kernels/gemm/grouped_gemm_sm90.h) against per-group CPU
// references (cpu::gemm_strided in fp32 on the bf16-rounded inputs) and against the cuBLASLt
// grouped calls (gemm_cuda.h, host offsets), on fresh random inputs:
//   nt (Fprop) and nn (Dgrad): bf16 outputs, max |gpu - ref| / max |ref| <= 1e-2; output rows at
//     or past offsets[groups] are poisoned (0xFF) and must keep their bytes.
//   tn (Wgrad): fp32 dW, <= 1e-3; accumulate off (dW poisoned first: every element written, an
//     empty group gives zeros) and on (random dW: empty groups keep their values exactly).
// Input rows at or past offsets[groups] hold NaN: no result may depend on them.
// Group layouts: empty groups, 1-row groups, groups that are not a multiple of the 128-row tile,
// a last group ending exactly at max_rows and one ending before it, 64 groups of random sizes,
// all groups empty; widths that select both column tiles (128 and 256); enough tiles that each
// CTA of the persistent grid runs several (the deferred nt / nn epilogue).
// Every case also runs twice (same bits) and is compared to the cuBLASLt grouped path.
#include "kernels/gemm/grouped_gemm_sm90.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "kernels/gemm/gemm.h"
#include "kernels/gemm/gemm_cuda.h"
#include "cuda_test_util.h"
#include "grouped_gemm_test_util.h"

namespace frugal {
namespace {

using cuda::DataType;
using testing::as_bf16;
using testing::case_seed;
using testing::DeviceArray;
using testing::random_normal;

constexpr double kBf16OutTolerance = 1e-2;
constexpr double kF32OutTolerance = 1e-3;
constexpr uint16_t kBf16NaN = 0xFFFF;

class GroupedGemmSm90Test : public testing::CudaTest {
 protected:
  void SetUp() override {
    testing::CudaTest::SetUp();
    ASSERT_TRUE(cuda::grouped_gemm_sm90_supported(128, 128))
        << "grouped_gemm_sm90 needs an sm_90 device";
  }
  cuda::BlasHandle blas_;
};

using Case = testing::GroupedCase;
using testing::offsets_of;
using testing::shape_of;

// Bf16 bits of random values, rows at or past `used_rows` set to NaN; `rounded` gets the values.
std::vector<uint16_t> activation(int64_t rows, int64_t cols, int64_t used_rows, uint64_t seed,
                                 std::vector<float>& rounded) {
  rounded = testing::round_bf16(random_normal(rows * cols, seed));
  std::vector<uint16_t> bits = testing::to_bf16_bits(rounded);
  for (int64_t i = used_rows * cols; i < rows * cols; ++i) bits[i] = kBf16NaN;
  return bits;
}

// Expects the rows [used_rows, max_rows) of a bf16 output to keep the poison.
void expect_tail_untouched(const std::string& op, const std::string& shape,
                           const std::vector<uint16_t>& out, int64_t used_rows, int64_t cols) {
  std::vector<uint16_t> tail(out.begin() + used_rows * cols, out.end());
  std::vector<uint16_t> poison(tail.size(), kBf16NaN);
  testing::expect_equal(op + " tail", shape, tail, poison);
}

void run_case(cudaStream_t stream, cuda::BlasHandle& blas, const Case& c) {
  auto sync = [&] { FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream)); };
  const int64_t groups = static_cast<int64_t>(c.rows.size());
  const std::vector<int64_t> offsets = offsets_of(c.rows);
  const int64_t used = offsets.back();
  ASSERT_LE(used, c.max_rows);
  const int64_t n = c.n, k = c.k, max_rows = c.max_rows;
  const std::string shape = shape_of(c);
  const std::string label = c.name + " " + shape;

  std::vector<float> x_f, dy_f;
  DeviceArray<uint16_t> x(max_rows * k), dy(max_rows * n), w(groups * n * k);
  x.upload(activation(max_rows, k, used, case_seed(label, 1), x_f));
  dy.upload(activation(max_rows, n, used, case_seed(label, 2), dy_f));
  const std::vector<float> w_f =
      testing::round_bf16(random_normal(groups * n * k, case_seed(label, 3), 0.0f, 0.05f));
  w.upload(testing::to_bf16_bits(w_f));
  DeviceArray<int64_t> device_offsets(groups + 1);
  device_offsets.upload(offsets);

  // CPU references, group by group.
  std::vector<float> y_ref(used * n), dx_ref(used * k), dw_ref(groups * n * k, 0.0f);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t r0 = offsets[g], rows = c.rows[g];
    if (rows == 0) continue;
    cpu::gemm_strided<float>(false, true, rows, n, k, 1.0f, &x_f[r0 * k], k, &w_f[g * n * k], k,
                             0.0f, &y_ref[r0 * n], n);
    cpu::gemm_strided<float>(false, false, rows, k, n, 1.0f, &dy_f[r0 * n], n, &w_f[g * n * k], k,
                             0.0f, &dx_ref[r0 * k], k);
    cpu::gemm_strided<float>(true, false, n, k, rows, 1.0f, &dy_f[r0 * n], n, &x_f[r0 * k], k,
                             0.0f, &dw_ref[g * n * k], k);
  }

  // The cuBLASLt grouped path on the same inputs (host offsets).
  DeviceArray<uint16_t> y_blas(max_rows * n), dx_blas(max_rows * k);
  DeviceArray<float> dw_blas(groups * n * k);
  dw_blas.poison();
  cuda::grouped_gemm_nt(blas, groups, offsets.data(), n, k, x.get(), w.get(), DataType::BF16,
                        y_blas.get(), DataType::BF16, stream);
  cuda::grouped_gemm_nn(blas, groups, offsets.data(), n, k, dy.get(), w.get(), DataType::BF16,
                        dx_blas.get(), DataType::BF16, stream);
  cuda::grouped_gemm_tn(blas, groups, offsets.data(), n, k, dy.get(), x.get(), DataType::BF16,
                        dw_blas.get(), DataType::F32, false, stream);
  sync();
  auto head = [](const std::vector<uint16_t>& bits, int64_t count) {
    return testing::from_bf16_bits(std::vector<uint16_t>(bits.begin(), bits.begin() + count));
  };

  // A bf16-output op (cols columns): two runs into poisoned buffers; the first against the CPU
  // reference (rows past `used` untouched) and the cuBLASLt grouped output, the second bitwise
  // equal to the first.
  auto check_bf16_runs = [&](const std::string& op, int64_t cols, const std::vector<float>& ref,
                             DeviceArray<uint16_t>& blas_out, auto launch) {
    DeviceArray<uint16_t> out_d(max_rows * cols);
    std::vector<uint16_t> first;
    for (int run = 0; run < 2; ++run) {
      out_d.poison();
      launch(as_bf16(out_d.get()));
      sync();
      std::vector<uint16_t> out = out_d.download();
      if (run == 0) {
        testing::expect_close(op + " " + c.name, shape, head(out, used * cols), ref,
                              kBf16OutTolerance);
        expect_tail_untouched(op + " " + c.name, shape, out, used, cols);
        testing::expect_close(op + " vs cublas " + c.name, shape, head(out, used * cols),
                              head(blas_out.download(), used * cols), kBf16OutTolerance);
        first = out;
      } else {
        testing::expect_same_bits(op + " " + c.name, shape, first, out);
      }
    }
  };
  // ---- nt (Fprop)
  check_bf16_runs("grouped_sm90 nt", n, y_ref, y_blas, [&](__nv_bfloat16* y) {
    cuda::grouped_gemm_sm90_nt(groups, device_offsets.get(), max_rows, n, k, as_bf16(x.get()),
                               as_bf16(w.get()), y, stream);
  });
  // ---- nn (Dgrad)
  check_bf16_runs("grouped_sm90 nn", k, dx_ref, dx_blas, [&](__nv_bfloat16* dx) {
    cuda::grouped_gemm_sm90_nn(groups, device_offsets.get(), max_rows, n, k, as_bf16(dy.get()),
                               as_bf16(w.get()), dx, stream);
  });
  // ---- tn (Wgrad), overwrite then accumulate
  testing::check_wgrad_runs("grouped_sm90 tn", c, dw_ref, dw_blas.download(), groups > 0,
                            kF32OutTolerance, kF32OutTolerance, case_seed(label, 4),
                            [&](float* dw, bool accumulate) {
                              cuda::grouped_gemm_sm90_tn(groups, device_offsets.get(), max_rows,
                                                         n, k, as_bf16(dy.get()), as_bf16(x.get()),
                                                         dw, accumulate, stream);
                              sync();
                            });
}

}  // namespace

TEST_F(GroupedGemmSm90Test, MixedGroupsEndingBeforeMaxRows) {
  // Empty groups, 1 row, tile multiples and not, last group ending 37 rows before max_rows.
  const std::vector<int64_t> rows = {0, 1, 127, 128, 129, 300, 0, 64, 513};
  int64_t used = 0;
  for (int64_t r : rows) used += r;
  run_case(stream_, blas_, {"mixed", rows, used + 37, 256, 384});
}

TEST_F(GroupedGemmSm90Test, LastGroupEndsAtMaxRows) {
  run_case(stream_, blas_, {"exact end", {200, 0, 333, 95}, 628, 384, 256});
}

TEST_F(GroupedGemmSm90Test, ManyRandomGroups) {
  std::mt19937_64 gen(case_seed("many groups"));
  std::uniform_int_distribution<int64_t> size(0, 140);
  std::vector<int64_t> rows(64);
  int64_t used = 0;
  for (int64_t& r : rows) {
    r = gen() % 4 == 0 ? 0 : size(gen);
    used += r;
  }
  run_case(stream_, blas_, {"many", rows, used + 5, 128, 128});
}

TEST_F(GroupedGemmSm90Test, AllGroupsEmpty) {
  run_case(stream_, blas_, {"all empty", {0, 0, 0}, 50, 128, 256});
}

TEST_F(GroupedGemmSm90Test, ExpertSizedGroups) {
  // bench-1b's gate/up weight [768, 1024] with a few experts of uneven sizes.
  run_case(stream_, blas_, {"experts", {1000, 777, 0, 1281}, 3100, 768, 1024});
}

// Several tiles per CTA (the cases above have fewer tiles than an H200 has SMs, so every CTA
// runs at most one): nt and nn defer a tile's stores until the CTA's next tile has started, so
// consecutive tiles of a CTA in different groups, ending mid-tile, must still store only their
// own rows. 144 row tiles: n 384 gives nt 3 x 128-wide column tiles (432 tiles) and nn 2 x 256
// (288); n 512 / k 384 the other way round.
TEST_F(GroupedGemmSm90Test, SeveralTilesPerCta) {
  const std::vector<int64_t> rows = {5900, 1, 0, 4433, 129, 6100, 77, 0, 1280};
  run_case(stream_, blas_, {"tiles per cta", rows, 17920 + 100, 384, 512});
  run_case(stream_, blas_, {"tiles per cta", rows, 17920 + 100, 512, 384});
}

TEST_F(GroupedGemmSm90Test, RefusesUnsupportedShapes) {
  DeviceArray<int64_t> offsets(2);
  offsets.upload({0, 0});
  DeviceArray<uint16_t> a(256 * 256), b(256 * 256), out(256 * 256);
  EXPECT_FALSE(cuda::grouped_gemm_sm90_supported(96, 128));
  EXPECT_THROW(cuda::grouped_gemm_sm90_nt(1, offsets.get(), 0, 96, 128, as_bf16(a.get()),
                                          as_bf16(b.get()), as_bf16(out.get()), stream_),
               Error);
  EXPECT_THROW(cuda::grouped_gemm_sm90_nt(257, offsets.get(), 0, 128, 128, as_bf16(a.get()),
                                          as_bf16(b.get()), as_bf16(out.get()), stream_),
               Error);
  std::printf("CHECK | grouped_sm90 argument checks  | n=96, groups=257      | refused | ok\n");
}

}  // namespace frugal
