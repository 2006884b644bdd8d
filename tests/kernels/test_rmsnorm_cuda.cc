// CUDA RMSNorm against the CPU reference (kernels/rmsnorm), for every instantiated type pair
// (x, y) = (f32, f32), (f32, bf16), (bf16, bf16), on fresh random inputs, outputs poisoned first:
//   rmsnorm_fwd        y vs the double CPU reference on the same (bf16-rounded) x: <= 1e-5 of
//                      max |y| for an fp32 y, <= 1e-2 for a bf16 y; rstd <= 1e-5
//   rmsnorm_fwd_quant  codes and scales bit-identical to cpu::quantize_act_1x128 of the kernel's own
//                      fp32 y (x * rstd_gpu * w in fp32, the kernel's arithmetic); its y output equal
//                      to rmsnorm_fwd's bit for bit; also with y = null; with and without
//                      power-of-two scales
//   rmsnorm_bwd_input  dx vs the double CPU reference (given the same fp32 rstd), measured against
//                      the magnitude of its terms |rstd*dy*w| (dx cancels almost completely for tiny d)
//   rmsnorm_bwd_weight dw (accumulated onto a random start) vs the double reference, and the same
//                      bits on a second run
// The residual fusions, T = f32 and bf16 (branch, y, dy, dx_t in T; x, h, skip, dx fp32):
//   residual_rmsnorm_fwd  h bit-identical to x + branch added in fp32 on the host (the
//                         residual_add kernel's one add), y and rstd bit-identical to rmsnorm_fwd
//                         of that h; y and h vs the double CPU reference (cpu::residual_rmsnorm_fwd)
//   rmsnorm_bwd_input_add dx bit-identical to the unfused GPU sequence rmsnorm_bwd_input then
//                         axpby(dx, skip, 1, 1), dx_t to cast<float, T> of it, also with dx_t =
//                         null; dx vs the double CPU reference (cpu::rmsnorm_bwd_input_add)
//   each also with only the fused-in arrays (branch, h, skip, dx_t) one element off alignment
//   (the fused kernel's element path against the unfused kernels' vector path).
// Shapes cover one-chunk rows, rows that are not a multiple of 8 or 128, rows longer than one
// register pass (d > 8192, the streaming path) and device pointers one element off alignment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "core/error.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/quant/quant.h"
#include "kernels/rmsnorm/rmsnorm.h"

namespace frugal {
namespace {

using testing::DeviceArray;

struct RowShape {
  int64_t rows, cols;
  bool misaligned;
};

const RowShape kShapes[] = {{1, 1, false},     {3, 7, false},      {5, 128, false},
                            {17, 129, false},  {1, 100, false},    {64, 1024, false},
                            {33, 1030, false}, {9, 5000, false},   {2, 8192, false},
                            {130, 7168, false}, {12, 1024, true},  {3, 10000, false},
                            {4, 16384, false}, {5, 16384, true},   {300, 4096, false}};

std::vector<double> widen(const std::vector<float>& values) {
  return std::vector<double>(values.begin(), values.end());
}
std::vector<float> narrow(const std::vector<double>& values) {
  return std::vector<float>(values.begin(), values.end());
}

template <class TX, class TY>
void check_rmsnorm(cudaStream_t stream, const RowShape& shape) {
  const int64_t n = shape.rows, d = shape.cols;
  const double eps = 1e-6;
  const bool mis = shape.misaligned;
  const std::string text = testing::shape_text(n, d, mis) + " " + testing::type_name<TX>() + "," +
                           testing::type_name<TY>();
  const uint64_t seed = testing::case_seed("rmsnorm " + text, 0);
  // The inputs as the kernel sees them: x in TX, dy in TY.
  const std::vector<float> x = testing::representable<TX>(testing::random_normal(n * d, seed + 1, 0.0f, 2.0f));
  const std::vector<float> w = testing::random_normal(d, seed + 2, 1.0f, 0.2f);
  const std::vector<float> dy = testing::representable<TY>(testing::random_normal(n * d, seed + 3));
  const std::vector<float> dw_start = testing::random_normal(d, seed + 4, 0.0f, 0.1f);

  // CPU references in double.
  const std::vector<double> x64 = widen(x), w64 = widen(w), dy64 = widen(dy);
  std::vector<double> y64(n * d), rstd64(n);
  cpu::rmsnorm_fwd(y64.data(), rstd64.data(), x64.data(), w64.data(), n, d, eps);
  // The backward ops get the fp32 rstd, on both sides.
  const std::vector<float> rstd_in = narrow(rstd64);
  const std::vector<double> rstd_in64 = widen(rstd_in);
  std::vector<double> dx64(n * d), dw64(d, 0.0);
  cpu::rmsnorm_bwd_input(dx64.data(), dy64.data(), x64.data(), w64.data(), rstd_in64.data(), n, d);
  cpu::rmsnorm_bwd_weight(dw64.data(), dy64.data(), x64.data(), rstd_in64.data(), n, d);
  std::vector<float> dw_expected(d);
  for (int64_t j = 0; j < d; ++j) dw_expected[j] = static_cast<float>(dw_start[j] + dw64[j]);

  DeviceArray<TX> x_d(n * d, mis), dx_d(n * d, mis);
  DeviceArray<TY> y_d(n * d, mis), y_quant_d(n * d, mis), dy_d(n * d, mis);
  DeviceArray<float> w_d(d, mis), rstd_d(n, mis), rstd_quant_d(n, mis), rstd_in_d(n, mis),
      dw_d(d, mis), workspace_d(cuda::rmsnorm_bwd_weight_workspace_floats(n, d), mis);
  x_d.upload(testing::host_values<TX>(x));
  w_d.upload(w);
  dy_d.upload(testing::host_values<TY>(dy));
  rstd_in_d.upload(rstd_in);
  y_d.poison();
  rstd_d.poison();
  dx_d.poison();
  workspace_d.poison();  // pass 2 reads every partial sum: one left unwritten would give NaN

  cuda::rmsnorm_fwd<TX, TY>(y_d.get(), rstd_d.get(), x_d.get(), w_d.get(), n, d, eps, stream);
  cuda::rmsnorm_bwd_input<TX, TY>(dx_d.get(), dy_d.get(), x_d.get(), w_d.get(), rstd_in_d.get(), n,
                                  d, stream);
  // bwd_weight accumulates: run it twice from the same start and require the same bits.
  std::vector<float> first_dw;
  for (int run = 0; run < 2; ++run) {
    dw_d.upload(dw_start);
    cuda::rmsnorm_bwd_weight<TX, TY>(dw_d.get(), dy_d.get(), x_d.get(), rstd_in_d.get(), n, d,
                                     workspace_d.get(), stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> dw_gpu = dw_d.download();
    if (run == 0) {
      first_dw = dw_gpu;
      testing::expect_close("rmsnorm_bwd_weight", text, dw_gpu, dw_expected, testing::kFp32Tolerance);
    } else {
      testing::expect_identical_bits("rmsnorm_bwd_weight rerun", text, dw_gpu, first_dw);
    }
  }
  const std::vector<float> y_gpu = testing::to_float(y_d.download());
  const std::vector<float> rstd_gpu = rstd_d.download();
  testing::expect_close("rmsnorm_fwd y", text, y_gpu, narrow(y64), testing::tolerance_for<TY>());
  testing::expect_close("rmsnorm_fwd rstd", text, rstd_gpu, narrow(rstd64), testing::kFp32Tolerance);
  // dx = rstd * (dy*w - xhat * mean(dy*w*xhat)) cancels almost completely when d is tiny (d = 1:
  // xhat^2 = x^2/(x^2+eps)), so its error is measured against the terms, max |rstd*dy*w|.
  double term_scale = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j)
      term_scale = std::max(term_scale, std::fabs(rstd_in64[i] * dy64[i * d + j] * w64[j]));
  testing::expect_close("rmsnorm_bwd_input", text, testing::to_float(dx_d.download()), narrow(dx64),
                        testing::tolerance_for<TX>(), term_scale);

  // Fused quantization: the reference quantizes the kernel's own fp32 y, x * rstd * w in fp32.
  std::vector<float> y32(n * d);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) y32[i * d + j] = x[i * d + j] * rstd_gpu[i] * w[j];
  const int64_t tiles = fp8_block_count(d);
  for (bool power_of_two : {false, true}) {
    for (bool with_y : {true, false}) {
      std::vector<uint8_t> q(n * d);
      std::vector<float> scales(tiles * n);
      cpu::quantize_act_1x128(q.data(), scales.data(), y32.data(), n, d, power_of_two);
      DeviceArray<uint8_t> q_d(n * d, mis);
      DeviceArray<float> scales_d(tiles * n, mis);
      q_d.poison();
      scales_d.poison();
      y_quant_d.poison();
      rstd_quant_d.poison();
      cuda::rmsnorm_fwd_quant<TX, TY>(q_d.get(), scales_d.get(), with_y ? y_quant_d.get() : nullptr,
                                      rstd_quant_d.get(), x_d.get(), w_d.get(), n, d, eps,
                                      power_of_two, stream);
      FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
      const std::string op = std::string("rmsnorm_fwd_quant") + (power_of_two ? " pow2" : "") +
                             (with_y ? "" : " y=null");
      testing::expect_quant_identical(op, text, y32, q_d.download(), q, scales_d.download(), scales);
      testing::expect_identical_bits(op + " rstd", text, rstd_quant_d.download(), rstd_gpu);
      if (with_y)
        testing::expect_identical_bits(op + " y", text, testing::to_float(y_quant_d.download()),
                                       y_gpu);
    }
  }
}

// The fused residual paths against the unfused kernels (bit for bit) and the CPU reference.
// fused_misaligned: the arrays only the fused kernels read or write (branch, h, skip, dx_t) are one
// element off alignment, the others follow shape.misaligned.
template <class T>
void check_residual_rmsnorm(cudaStream_t stream, const RowShape& shape, bool fused_misaligned) {
  const int64_t n = shape.rows, d = shape.cols;
  const double eps = 1e-6;
  const bool mis = shape.misaligned, fmis = mis || fused_misaligned;
  const std::string text = testing::shape_text(n, d, mis) + (fused_misaligned ? " fused-mis " : " ") +
                           testing::type_name<T>();
  const uint64_t seed = testing::case_seed("residual rmsnorm " + text, 0);
  const std::vector<float> x = testing::random_normal(n * d, seed + 1, 0.0f, 2.0f);
  const std::vector<float> branch =
      testing::representable<T>(testing::random_normal(n * d, seed + 2, 0.0f, 1.5f));
  const std::vector<float> w = testing::random_normal(d, seed + 3, 1.0f, 0.2f);
  const std::vector<float> dy = testing::representable<T>(testing::random_normal(n * d, seed + 4));
  const std::vector<float> skip = testing::random_normal(n * d, seed + 5, 0.0f, 0.5f);
  // h as the residual_add kernel computes it: one fp32 add (IEEE on both sides).
  std::vector<float> h(n * d);
  for (int64_t i = 0; i < n * d; ++i) h[i] = x[i] + branch[i];

  DeviceArray<float> x_d(n * d, mis), h_d(n * d, fmis), h_ref_d(n * d, mis), w_d(d, mis),
      rstd_d(n, mis), rstd_ref_d(n, mis), skip_d(n * d, fmis), dx_d(n * d, mis),
      dx_ref_d(n * d, mis);
  DeviceArray<T> branch_d(n * d, fmis), y_d(n * d, mis), y_ref_d(n * d, mis), dy_d(n * d, mis),
      dx_t_d(n * d, fmis), dx_t_ref_d(n * d, mis);
  x_d.upload(x);
  h_ref_d.upload(h);
  w_d.upload(w);
  branch_d.upload(testing::host_values<T>(branch));
  dy_d.upload(testing::host_values<T>(dy));
  skip_d.upload(skip);
  for (auto* a : {&h_d, &rstd_d, &rstd_ref_d, &dx_d, &dx_ref_d}) a->poison();
  for (auto* a : {&y_d, &y_ref_d, &dx_t_d, &dx_t_ref_d}) a->poison();

  // Forward: fused against rmsnorm_fwd of the host's h.
  cuda::residual_rmsnorm_fwd<T>(h_d.get(), y_d.get(), rstd_d.get(), x_d.get(), branch_d.get(),
                                w_d.get(), n, d, eps, stream);
  cuda::rmsnorm_fwd<float, T>(y_ref_d.get(), rstd_ref_d.get(), h_ref_d.get(), w_d.get(), n, d, eps,
                              stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> rstd_gpu = rstd_d.download();
  testing::expect_identical_bits("residual_rmsnorm_fwd h", text, h_d.download(), h);
  testing::expect_identical_bits("residual_rmsnorm_fwd rstd", text, rstd_gpu, rstd_ref_d.download());
  const std::vector<float> y_gpu = testing::to_float(y_d.download());
  testing::expect_identical_bits("residual_rmsnorm_fwd y", text, y_gpu,
                                 testing::to_float(y_ref_d.download()));
  std::vector<double> h64(n * d), y64(n * d), rstd64(n);
  const std::vector<double> x64 = widen(x), branch64 = widen(branch), w64 = widen(w);
  cpu::residual_rmsnorm_fwd(h64.data(), y64.data(), rstd64.data(), x64.data(), branch64.data(),
                            w64.data(), n, d, eps);
  testing::expect_close("residual_rmsnorm_fwd h cpu", text, h, narrow(h64), testing::kFp32Tolerance);
  testing::expect_close("residual_rmsnorm_fwd y cpu", text, y_gpu, narrow(y64),
                        testing::tolerance_for<T>());

  // Backward at the fused forward's h and rstd: fused against rmsnorm_bwd_input, axpby, cast.
  cuda::rmsnorm_bwd_input<float, T>(dx_ref_d.get(), dy_d.get(), h_ref_d.get(), w_d.get(),
                                    rstd_d.get(), n, d, stream);
  cuda::axpby<float>(dx_ref_d.get(), skip_d.get(), 1.0f, 1.0f, n * d, stream);
  cuda::cast<float, T>(dx_t_ref_d.get(), dx_ref_d.get(), n * d, stream);
  cuda::rmsnorm_bwd_input_add<T>(dx_d.get(), dx_t_d.get(), dy_d.get(), h_d.get(), w_d.get(),
                                 rstd_d.get(), skip_d.get(), n, d, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> dx_gpu = dx_d.download(), dx_ref = dx_ref_d.download();
  testing::expect_identical_bits("rmsnorm_bwd_input_add dx", text, dx_gpu, dx_ref);
  testing::expect_identical_bits("rmsnorm_bwd_input_add dx_t", text,
                                 testing::to_float(dx_t_d.download()),
                                 testing::to_float(dx_t_ref_d.download()));
  // Without the T copy: the same dx, dx_t left as it was.
  dx_d.poison();
  dx_t_d.poison();
  cuda::rmsnorm_bwd_input_add<T>(dx_d.get(), nullptr, dy_d.get(), h_d.get(), w_d.get(),
                                 rstd_d.get(), skip_d.get(), n, d, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  testing::expect_identical_bits("rmsnorm_bwd_input_add dx_t=null", text, dx_d.download(), dx_ref);
  const std::vector<T> dx_t_after = dx_t_d.download();
  int64_t touched = 0;
  for (const T& value : dx_t_after) {
    uint16_t bits[sizeof(T) / 2];
    std::memcpy(bits, &value, sizeof(T));
    for (uint16_t b : bits) touched += b != 0xFFFF;
  }
  EXPECT_EQ(touched, 0) << "rmsnorm_bwd_input_add wrote dx_t although it was null, " << text;
  // The double reference, given the same fp32 h and rstd.
  const std::vector<double> rstd_in64 = widen(rstd_gpu), dy64 = widen(dy), skip64 = widen(skip),
                            h_in64 = widen(h);
  std::vector<double> dx64(n * d);
  cpu::rmsnorm_bwd_input_add(dx64.data(), dy64.data(), h_in64.data(), w64.data(), rstd_in64.data(),
                             skip64.data(), n, d);
  double term_scale = 0;  // as in check_rmsnorm: the terms' magnitude (and the skip's)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j)
      term_scale = std::max({term_scale, std::fabs(rstd_in64[i] * dy64[i * d + j] * w64[j]),
                             std::fabs(skip64[i * d + j])});
  testing::expect_close("rmsnorm_bwd_input_add dx cpu", text, dx_gpu, narrow(dx64),
                        testing::kFp32Tolerance, term_scale);
}

class RmsnormCuda : public testing::CudaTest {};

TEST_F(RmsnormCuda, ResidualFusionFp32MatchesUnfusedBits) {
  for (const RowShape& shape : kShapes)
    for (bool fused_misaligned : {false, true})
      if (!(shape.misaligned && fused_misaligned))
        check_residual_rmsnorm<float>(stream_, shape, fused_misaligned);
}

TEST_F(RmsnormCuda, ResidualFusionBf16MatchesUnfusedBits) {
  for (const RowShape& shape : kShapes)
    for (bool fused_misaligned : {false, true})
      if (!(shape.misaligned && fused_misaligned))
        check_residual_rmsnorm<__nv_bfloat16>(stream_, shape, fused_misaligned);
}

TEST_F(RmsnormCuda, ResidualFusionRejectsAliasing) {
  DeviceArray<float> a(64), b(64), w(16), rstd(4);
  DeviceArray<__nv_bfloat16> t(64);
  // h = x: the fused forward reads x while writing h.
  EXPECT_THROW(cuda::residual_rmsnorm_fwd<__nv_bfloat16>(a.get(), t.get(), rstd.get(), a.get(),
                                                         t.get(), w.get(), 4, 16, 1e-6, stream_),
               Error);
  // dx = skip.
  EXPECT_THROW(cuda::rmsnorm_bwd_input_add<__nv_bfloat16>(a.get(), nullptr, t.get(), b.get(),
                                                          w.get(), rstd.get(), a.get(), 4, 16,
                                                          stream_),
               Error);
  EXPECT_THROW(cuda::rmsnorm_bwd_input_add<float>(a.get(), nullptr, b.get(), b.get(), w.get(),
                                                  rstd.get(), nullptr, 4, 16, stream_),
               Error);
  // No rows: nothing launched, nothing read.
  cuda::residual_rmsnorm_fwd<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 16,
                                    1e-6, stream_);
  cuda::rmsnorm_bwd_input_add<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                     0, 16, stream_);
  sync();
}

TEST_F(RmsnormCuda, Fp32MatchesCpu) {
  for (const RowShape& shape : kShapes) check_rmsnorm<float, float>(stream_, shape);
}

TEST_F(RmsnormCuda, Fp32InputBf16OutputMatchesCpu) {
  for (const RowShape& shape : kShapes) check_rmsnorm<float, __nv_bfloat16>(stream_, shape);
}

TEST_F(RmsnormCuda, Bf16MatchesCpu) {
  for (const RowShape& shape : kShapes) check_rmsnorm<__nv_bfloat16, __nv_bfloat16>(stream_, shape);
}

TEST_F(RmsnormCuda, LaunchersRejectBadArguments) {
  EXPECT_THROW((cuda::rmsnorm_fwd<float, float>(nullptr, nullptr, nullptr, nullptr, -1, 4, 1e-6,
                                                stream_)),
               Error);
  EXPECT_THROW((cuda::rmsnorm_fwd<float, float>(nullptr, nullptr, nullptr, nullptr, 4, 0, 1e-6,
                                                stream_)),
               Error);
  EXPECT_THROW((cuda::rmsnorm_fwd_quant<float, __nv_bfloat16>(nullptr, nullptr, nullptr, nullptr,
                                                              nullptr, nullptr, 4, 128, 1e-6, false,
                                                              stream_)),
               Error);
  EXPECT_THROW((cuda::rmsnorm_bwd_input<__nv_bfloat16, __nv_bfloat16>(nullptr, nullptr, nullptr,
                                                                      nullptr, nullptr, 4, -2,
                                                                      stream_)),
               Error);
  EXPECT_THROW((cuda::rmsnorm_bwd_weight<float, float>(nullptr, nullptr, nullptr, nullptr, 4, 4,
                                                       nullptr, stream_)),
               Error);
  // No rows: nothing launched, nothing read.
  cuda::rmsnorm_fwd<float, float>(nullptr, nullptr, nullptr, nullptr, 0, 16, 1e-6, stream_);
  cuda::rmsnorm_bwd_weight<float, float>(nullptr, nullptr, nullptr, nullptr, 0, 16, nullptr,
                                         stream_);
  EXPECT_EQ(cuda::rmsnorm_bwd_weight_workspace_floats(0, 16), 0);
  sync();
}

}  // namespace
}  // namespace frugal
