// CUDA SwiGLU against the CPU reference (kernels/swiglu), fp32 and bf16, fresh random inputs,
// outputs poisoned first:
//   2-D swiglu_fwd / swiglu_bwd over [rows, cols] with g, u at row stride ld_in: separate g and u
//     arrays (ld_in >= cols) and the fused gate|up layout (u = g + cols, ld_in = 2*cols); results vs
//     the double CPU reference on the same (bf16-rounded) inputs, <= 1e-5 of max |out| for fp32,
//     <= 1e-2 for bf16; the gaps between rows of dg / du (ld_in > cols) must stay untouched
//   swiglu_fwd_quant: codes and scales bit-identical to cpu::quantize_act_1x128 of the fp32 h that
//     swiglu_fwd<float> computes from the same (widened) inputs, with and without pow2 scales
//   the flat fp32 forms over n elements, including misaligned pointers
// g spans the sigmoid's saturated tails too (|g| up to ~30).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "core/error.h"
#include "kernels/quant/quant.h"
#include "kernels/swiglu/swiglu.h"

namespace frugal {
namespace {

using testing::DeviceArray;

struct SwigluShape {
  int64_t rows, cols, ld_in;
  bool fused;  // g and u interleaved per row in one [rows, 2*cols] array
  bool misaligned;
};

const SwigluShape kShapes[] = {
    {1, 1, 1, false, false},       {3, 7, 7, false, false},        {5, 100, 256, false, false},
    {4, 129, 258, true, false},    {64, 1024, 2048, true, false},  {33, 1030, 1030, false, false},
    {7, 2048, 4096, true, false},  {130, 1536, 1536, false, false}, {9, 256, 512, true, true},
    {6, 640, 648, false, true}};

std::string swiglu_text(const SwigluShape& s, const char* type) {
  return testing::shape_text(s.rows, s.cols, s.misaligned) + " ld" + std::to_string(s.ld_in) +
         (s.fused ? " fused " : " ") + type;
}

// Copies a [rows, cols] block at row stride ld out of `strided`.
std::vector<float> compact(const std::vector<float>& strided, int64_t offset, int64_t rows,
                           int64_t cols, int64_t ld) {
  std::vector<float> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = strided[offset + r * ld + c];
  return out;
}

template <class T>
void check_swiglu(cudaStream_t stream, const SwigluShape& s) {
  const int64_t rows = s.rows, cols = s.cols, ld = s.ld_in;
  const std::string text = swiglu_text(s, testing::type_name<T>());
  const uint64_t seed = testing::case_seed("swiglu " + text, 0);
  // One input buffer for g (and u when fused), another for u when separate; both [rows, ld].
  const int64_t in_count = rows * ld;
  const int64_t u_offset = s.fused ? cols : 0;
  std::vector<float> g_buffer =
      testing::representable<T>(testing::random_normal(in_count, seed + 1, 0.0f, 6.0f));
  std::vector<float> u_buffer;
  if (s.fused) {  // the u half of each fused row: N(0, 1)
    const std::vector<float> u_values =
        testing::representable<T>(testing::random_normal(rows * cols, seed + 2));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) g_buffer[r * ld + cols + c] = u_values[r * cols + c];
  } else {
    u_buffer = testing::representable<T>(testing::random_normal(in_count, seed + 2));
  }
  const std::vector<float>& g_host = g_buffer;
  const std::vector<float>& u_host = s.fused ? g_buffer : u_buffer;
  const std::vector<float> g = compact(g_host, 0, rows, cols, ld);
  const std::vector<float> u = compact(u_host, u_offset, rows, cols, ld);
  const std::vector<float> dh =
      testing::representable<T>(testing::random_normal(rows * cols, seed + 4));

  // Double references.
  const int64_t count = rows * cols;
  std::vector<double> g64(g.begin(), g.end()), u64(u.begin(), u.end()), dh64(dh.begin(), dh.end());
  std::vector<double> h64(count), dg64(count), du64(count);
  cpu::swiglu_fwd(h64.data(), g64.data(), u64.data(), count);
  cpu::swiglu_bwd(dg64.data(), du64.data(), dh64.data(), g64.data(), u64.data(), count);
  auto narrow = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };

  const bool mis = s.misaligned;
  DeviceArray<T> g_d(in_count, mis), u_d(s.fused ? 1 : in_count, mis), h_d(count, mis),
      dh_d(count, mis), dg_d(in_count, mis), du_d(s.fused ? 1 : in_count, mis);
  g_d.upload(testing::host_values<T>(g_host));
  if (!s.fused) u_d.upload(testing::host_values<T>(u_host));
  dh_d.upload(testing::host_values<T>(dh));
  h_d.poison();
  dg_d.poison();
  du_d.poison();
  const T* g_ptr = g_d.get();
  const T* u_ptr = s.fused ? g_d.get() + cols : u_d.get();
  T* dg_ptr = dg_d.get();
  T* du_ptr = s.fused ? dg_d.get() + cols : du_d.get();
  cuda::swiglu_fwd<T>(h_d.get(), g_ptr, u_ptr, rows, cols, ld, stream);
  cuda::swiglu_bwd<T>(dg_ptr, du_ptr, dh_d.get(), g_ptr, u_ptr, rows, cols, ld, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const double tolerance = testing::tolerance_for<T>();
  testing::expect_close("swiglu_fwd", text, testing::to_float(h_d.download()), narrow(h64), tolerance);
  const std::vector<float> dg_buffer = testing::to_float(dg_d.download());
  const std::vector<float> du_buffer = s.fused ? dg_buffer : testing::to_float(du_d.download());
  testing::expect_close("swiglu_bwd dg", text, compact(dg_buffer, 0, rows, cols, ld), narrow(dg64),
                        tolerance);
  testing::expect_close("swiglu_bwd du", text, compact(du_buffer, u_offset, rows, cols, ld),
                        narrow(du64), tolerance);
  if (!s.fused && ld > cols) {
    int64_t touched = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = cols; c < ld; ++c)
        touched += !std::isnan(dg_buffer[r * ld + c]) + !std::isnan(du_buffer[r * ld + c]);
    EXPECT_EQ(touched, 0) << "swiglu_bwd " << text << ": wrote between rows (past cols)";
  }

  // Fused quantization against the fp32 h of swiglu_fwd<float> on the same values.
  DeviceArray<float> g32_d(in_count, mis), u32_d(s.fused ? 1 : in_count, mis), h32_d(count, mis);
  g32_d.upload(g_host);
  if (!s.fused) u32_d.upload(u_host);
  h32_d.poison();
  const float* u32_ptr = s.fused ? g32_d.get() + cols : u32_d.get();
  cuda::swiglu_fwd<float>(h32_d.get(), g32_d.get(), u32_ptr, rows, cols, ld, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<float> h32 = h32_d.download();
  const int64_t tiles = fp8_block_count(cols);
  for (bool power_of_two : {false, true}) {
    std::vector<uint8_t> q(count);
    std::vector<float> scales(tiles * rows);
    cpu::quantize_act_1x128(q.data(), scales.data(), h32.data(), rows, cols, power_of_two);
    DeviceArray<uint8_t> q_d(count, mis);
    DeviceArray<float> scales_d(tiles * rows, mis);
    q_d.poison();
    scales_d.poison();
    cuda::swiglu_fwd_quant<T>(q_d.get(), scales_d.get(), g_ptr, u_ptr, rows, cols, ld, power_of_two,
                              stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    testing::expect_quant_identical(power_of_two ? "swiglu_fwd_quant pow2" : "swiglu_fwd_quant", text,
                                    h32, q_d.download(), q, scales_d.download(), scales);
  }
}

class SwigluCuda : public testing::CudaTest {};

TEST_F(SwigluCuda, Fp32MatchesCpu) {
  for (const SwigluShape& shape : kShapes) check_swiglu<float>(stream_, shape);
}

TEST_F(SwigluCuda, Bf16MatchesCpu) {
  for (const SwigluShape& shape : kShapes) check_swiglu<__nv_bfloat16>(stream_, shape);
}

void check_flat(cudaStream_t stream, int64_t n, bool misaligned) {
  const std::string text = std::to_string(n) + (misaligned ? " +1el" : "") + " flat";
  const uint64_t seed = testing::case_seed("swiglu flat " + text, 0);
  const std::vector<float> g = testing::random_normal(n, seed + 1, 0.0f, 6.0f);
  const std::vector<float> u = testing::random_normal(n, seed + 2);
  const std::vector<float> dh = testing::random_normal(n, seed + 3);
  std::vector<float> h(n), dg(n), du(n);
  cpu::swiglu_fwd(h.data(), g.data(), u.data(), n);
  cpu::swiglu_bwd(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
  DeviceArray<float> g_d(n, misaligned), u_d(n, misaligned), dh_d(n, misaligned),
      h_d(n, misaligned), dg_d(n, misaligned), du_d(n, misaligned);
  g_d.upload(g);
  u_d.upload(u);
  dh_d.upload(dh);
  h_d.poison();
  dg_d.poison();
  du_d.poison();
  cuda::swiglu_fwd(h_d.get(), g_d.get(), u_d.get(), n, stream);
  cuda::swiglu_bwd(dg_d.get(), du_d.get(), dh_d.get(), g_d.get(), u_d.get(), n, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  testing::expect_close("swiglu_fwd flat", text, h_d.download(), h, testing::kFp32Tolerance);
  testing::expect_close("swiglu_bwd flat dg", text, dg_d.download(), dg, testing::kFp32Tolerance);
  testing::expect_close("swiglu_bwd flat du", text, du_d.download(), du, testing::kFp32Tolerance);
}

TEST_F(SwigluCuda, FlatFp32MatchesCpu) {
  for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{7}, int64_t{1000}, int64_t{4097},
                    (int64_t{1} << 20) + 3})
    check_flat(stream_, n, false);
  check_flat(stream_, 1027, true);
  check_flat(stream_, 4096, true);
}

TEST_F(SwigluCuda, LaunchersRejectBadArguments) {
  EXPECT_THROW(cuda::swiglu_fwd(nullptr, nullptr, nullptr, -3, stream_), Error);
  EXPECT_THROW(cuda::swiglu_fwd<float>(nullptr, nullptr, nullptr, 4, 8, 4, stream_), Error);  // ld < cols
  EXPECT_THROW(cuda::swiglu_bwd<__nv_bfloat16>(nullptr, nullptr, nullptr, nullptr, nullptr, -1, 8, 8,
                                               stream_),
               Error);
  EXPECT_THROW(cuda::swiglu_fwd_quant<float>(nullptr, nullptr, nullptr, nullptr, 4, 128, 256, false,
                                             stream_),
               Error);  // null pointers
  // Empty shapes launch nothing and succeed.
  cuda::swiglu_fwd(nullptr, nullptr, nullptr, 0, stream_);
  cuda::swiglu_fwd<__nv_bfloat16>(nullptr, nullptr, nullptr, 0, 128, 256, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
