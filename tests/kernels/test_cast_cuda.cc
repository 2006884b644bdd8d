// CUDA elementwise helpers (kernels/cast/cast_cuda.h) against host arithmetic, bit for bit, outputs
// poisoned first, sizes that are not a multiple of the 8-value chunk and misaligned pointers:
//   cast for all four float/bf16 pairs: fp32 -> bf16 equals frugal::float_to_bf16_bits (round to
//     nearest even, overflow to inf, subnormals kept), the other pairs are exact
//   axpby: y = a*y + b*x with a*y and b*x each rounded to fp32, then their sum (the kernel's
//     documented arithmetic), then rounded to T
//   copy_2d: the [rows, cols] block lands at the output stride, the gaps between output rows keep
//     their poison
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cast/cast_cuda.h"

namespace frugal {
namespace {

using testing::DeviceArray;

// Values over the whole fp32 range: N(0,1) * 2^U{-140..130} (fp32 subnormals, values that round to
// bf16 infinity), plus special values at the start.
std::vector<float> wide_values(int64_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-140, 130);
  std::vector<float> x(n);
  for (float& v : x) v = std::ldexp(normal(gen), exponent(gen));
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX,
                            std::ldexp(1.0f, -149), 1.0f + std::ldexp(1.0f, -8),  // a bf16 tie
                            1.0f + 3 * std::ldexp(1.0f, -8), 3.3961e38f};
  for (size_t i = 0; i < std::size(specials) && i < x.size(); ++i) x[i] = specials[i];
  return x;
}

template <class T, class U>
void check_cast(cudaStream_t stream, int64_t n, bool misaligned) {
  const std::string text = std::to_string(n) + (misaligned ? " +1el " : " ") +
                           testing::type_name<T>() + "->" + testing::type_name<U>();
  const std::vector<float> in = testing::representable<T>(wide_values(n, testing::case_seed("cast " + text, 0)));
  const std::vector<float> expected = testing::representable<U>(in);
  DeviceArray<T> in_d(n, misaligned);
  DeviceArray<U> out_d(n, misaligned);
  in_d.upload(testing::host_values<T>(in));
  out_d.poison();
  cuda::cast<T, U>(out_d.get(), in_d.get(), n, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  testing::expect_identical_bits("cast", text, testing::to_float(out_d.download()), expected);
}

class CastCuda : public testing::CudaTest {};

TEST_F(CastCuda, AllPairsMatchHostRounding) {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{1000}, int64_t{4099},
                    (int64_t{1} << 20) + 5})
    for (bool misaligned : {false, true}) {
      check_cast<float, float>(stream_, n, misaligned);
      check_cast<float, __nv_bfloat16>(stream_, n, misaligned);
      check_cast<__nv_bfloat16, float>(stream_, n, misaligned);
      check_cast<__nv_bfloat16, __nv_bfloat16>(stream_, n, misaligned);
    }
}

// a*y and b*x rounded to fp32 one by one (volatile: no fused multiply-add on any host).
float axpby_host(float a, float y, float b, float x) {
  volatile float ay = a * y;
  volatile float bx = b * x;
  return ay + bx;
}

template <class T>
void check_axpby(cudaStream_t stream, int64_t n, float a, float b, bool misaligned) {
  const std::string text = std::to_string(n) + (misaligned ? " +1el " : " ") + "a=" +
                           std::to_string(a) + " b=" + std::to_string(b) + " " +
                           testing::type_name<T>();
  const uint64_t seed = testing::case_seed("axpby " + text, 0);
  const std::vector<float> y = testing::representable<T>(testing::random_normal(n, seed + 1));
  const std::vector<float> x = testing::representable<T>(testing::random_normal(n, seed + 2, 0, 3));
  std::vector<float> expected(n);
  for (int64_t i = 0; i < n; ++i) expected[i] = axpby_host(a, y[i], b, x[i]);
  expected = testing::representable<T>(expected);
  DeviceArray<T> y_d(n, misaligned), x_d(n, misaligned);
  y_d.upload(testing::host_values<T>(y));
  x_d.upload(testing::host_values<T>(x));
  cuda::axpby<T>(y_d.get(), x_d.get(), a, b, n, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  testing::expect_identical_bits("axpby", text, testing::to_float(y_d.download()), expected);
}

TEST_F(CastCuda, AxpbyMatchesHostArithmetic) {
  const float coefficients[][2] = {{1.0f, 1.0f}, {0.5f, -2.0f}, {0.0f, 1.0f}, {1.0f, 0.0f},
                                   {0.9f, 0.1f}};
  for (int64_t n : {int64_t{1}, int64_t{9}, int64_t{4096}, (int64_t{1} << 20) + 3})
    for (const auto& c : coefficients) {
      check_axpby<float>(stream_, n, c[0], c[1], false);
      check_axpby<__nv_bfloat16>(stream_, n, c[0], c[1], false);
    }
  check_axpby<float>(stream_, 1001, 0.9f, 0.1f, true);
  check_axpby<__nv_bfloat16>(stream_, 1001, 0.9f, 0.1f, true);
}

struct CopyCase {
  int64_t rows, cols, ld_in, ld_out;
  bool misaligned;
};

template <class T>
void check_copy_2d(cudaStream_t stream, const CopyCase& c) {
  const std::string text = testing::shape_text(c.rows, c.cols, c.misaligned) + " ld_in " +
                           std::to_string(c.ld_in) + " ld_out " + std::to_string(c.ld_out) + " " +
                           testing::type_name<T>();
  const int64_t in_count = (c.rows - 1) * c.ld_in + c.cols;
  const int64_t out_count = (c.rows - 1) * c.ld_out + c.cols;
  const std::vector<float> in =
      testing::representable<T>(testing::random_normal(in_count, testing::case_seed("copy " + text, 0)));
  std::vector<float> expected(out_count, NAN);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t j = 0; j < c.cols; ++j) expected[r * c.ld_out + j] = in[r * c.ld_in + j];
  DeviceArray<T> in_d(in_count, c.misaligned), out_d(out_count, c.misaligned);
  in_d.upload(testing::host_values<T>(in));
  out_d.poison();
  cuda::copy_2d<T>(out_d.get(), c.ld_out, in_d.get(), c.ld_in, c.rows, c.cols, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> out = testing::to_float(out_d.download());
  // Gaps: still the poison (a NaN); the block: the input's values.
  int64_t gap_writes = 0, wrong = 0, first_wrong = -1;
  for (int64_t i = 0; i < out_count; ++i) {
    const bool in_block = i % c.ld_out < c.cols || c.rows == 1;
    if (!in_block) {
      gap_writes += !std::isnan(out[i]);
    } else if (std::bit_cast<uint32_t>(out[i]) != std::bit_cast<uint32_t>(expected[i]) &&
               wrong++ == 0) {
      first_wrong = i;
    }
  }
  const bool ok = gap_writes == 0 && wrong == 0;
  std::printf("CHECK | %-28s | %-22s | %lld/%lld values differ | %s\n", "copy_2d", text.c_str(),
              static_cast<long long>(wrong + gap_writes), static_cast<long long>(out_count),
              ok ? "ok" : "FAIL");
  EXPECT_EQ(gap_writes, 0) << "copy_2d " << text << ": wrote between output rows";
  EXPECT_EQ(wrong, 0) << "copy_2d " << text << ": first wrong value at " << first_wrong;
}

TEST_F(CastCuda, Copy2dMatchesHost) {
  const CopyCase cases[] = {{1, 1, 1, 1, false},        {3, 5, 7, 9, false},
                            {4, 64, 192, 128, false},   {5, 8, 8, 8, false},
                            {7, 24, 40, 32, false},     {3, 16, 16, 16, true},
                            {1, 1000, 1000, 1000, false}, {128, 128, 576, 128, false},
                            {2, 129, 300, 130, false},  {64, 512, 512, 1024, false}};
  for (const CopyCase& c : cases) {
    check_copy_2d<float>(stream_, c);
    check_copy_2d<__nv_bfloat16>(stream_, c);
  }
}

TEST_F(CastCuda, LaunchersRejectBadArguments) {
  EXPECT_THROW((cuda::cast<float, __nv_bfloat16>(nullptr, nullptr, -1, stream_)), Error);
  EXPECT_THROW((cuda::cast<float, float>(nullptr, nullptr, 5, stream_)), Error);
  EXPECT_THROW(cuda::axpby<float>(nullptr, nullptr, 1.0f, 1.0f, -2, stream_), Error);
  EXPECT_THROW(cuda::copy_2d<float>(nullptr, 4, nullptr, 4, -1, 4, stream_), Error);
  // A row stride below the row length would overlap rows.
  DeviceArray<float> buffer(64);
  EXPECT_THROW(cuda::copy_2d<float>(buffer.get(), 4, buffer.get(), 8, 4, 8, stream_), Error);
  cuda::cast<__nv_bfloat16, float>(nullptr, nullptr, 0, stream_);
  cuda::copy_2d<__nv_bfloat16>(nullptr, 1, nullptr, 1, 0, 5, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
