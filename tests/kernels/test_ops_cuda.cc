// CUDA ops against their CPU references, in the spirit of ggml's test-backend-ops: every op on
// random inputs of several shapes (including sizes that are not multiples of the block, and device
// pointers off a 16-byte boundary so the scalar paths run), outputs poisoned before each run and
// checked to have been written.
//   fp32 ops (rmsnorm fwd / bwd_input / bwd_weight, swiglu fwd / bwd): the error of each output,
//     max_i |gpu_i - cpu_i| / max_i |cpu_i|, must be <= 1e-5 (the reductions run in a different
//     order on the GPU, so the bits differ).
//   FP8 quantizers (1x128 activations, 128x128 weights, with and without power-of-two scales):
//     codes and scales bit-identical to the CPU's.
// Each check prints one line "CHECK | op | shape | error | ok/FAIL". FRUGAL_TEST_SEED=<n> changes
// the random inputs.
//
// Timing mode: FRUGAL_CUDA_TIMING=1 makes OpsCuda.TimingBandwidth time each op at training sizes
// (32768 rows x 1024 and x 7168; cudaEvent, warm-up, median of FRUGAL_CUDA_TIMING_REPS = 20 runs)
// and print "TIMING | op | shape | us | GB/s | % of copy" against the bytes the op must move, with
// a device-to-device copy as the ceiling. Without the variable that test is skipped.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/quant/quant.h"
#include "kernels/rmsnorm/rmsnorm.h"
#include "kernels/swiglu/swiglu.h"

namespace frugal {
namespace {

constexpr double kFp32Tolerance = 1e-5;

uint64_t base_seed() {
  const char* text = std::getenv("FRUGAL_TEST_SEED");
  return text != nullptr ? std::strtoull(text, nullptr, 10) : 20240917;
}

// A seed per (op, shape, input) so each case gets its own numbers.
uint64_t case_seed(const std::string& label, uint64_t salt) {
  uint64_t h = 1469598103934665603ull ^ base_seed();
  for (char c : label) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h ^ (salt * 0x9E3779B97F4A7C15ull);
}

std::vector<float> random_normal(int64_t count, uint64_t seed, float mean = 0.0f,
                                 float stddev = 1.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> values(count);
  for (float& v : values) v = dist(gen);
  return values;
}

std::string shape_text(int64_t rows, int64_t cols, bool misaligned) {
  return std::to_string(rows) + "x" + std::to_string(cols) + (misaligned ? " +4B" : "");
}

// `count` device elements; `misaligned` starts them one element (float: 4 bytes, uint8: 1 byte)
// past the allocation, off every vector boundary, so launchers pick their scalar kernels.
template <class T>
class DeviceArray {
 public:
  DeviceArray(int64_t count, bool misaligned)
      : count_(count), offset_(misaligned ? 1 : 0), buffer_(static_cast<size_t>(count + 1)) {}
  T* get() { return buffer_.data() + offset_; }
  void upload(const std::vector<T>& host) {
    ASSERT_EQ(static_cast<int64_t>(host.size()), count_);
    FRUGAL_CUDA_CHECK(cudaMemcpy(get(), host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() {
    std::vector<T> host(count_);
    FRUGAL_CUDA_CHECK(cudaMemcpy(host.data(), get(), count_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // 0xFF bytes: NaN as fp32, and 0xFF as E4M3 is a NaN code the quantizers never write.
  void poison() { FRUGAL_CUDA_CHECK(cudaMemset(get(), 0xFF, count_ * sizeof(T))); }

 private:
  int64_t count_;
  int64_t offset_;
  cuda::DeviceBuffer<T> buffer_;
};

struct Fp32Comparison {
  double max_error = 0;       // max |gpu - cpu| / scale (default scale: max |cpu|)
  int64_t not_finite = 0;     // GPU values that are NaN/inf where the CPU's are finite (unwritten)
};

Fp32Comparison compare_fp32(const std::vector<float>& gpu, const std::vector<float>& cpu,
                            double scale = 0) {
  Fp32Comparison result;
  if (scale == 0)
    for (float c : cpu) scale = std::max(scale, std::fabs(double{c}));
  if (scale == 0) scale = 1;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (!std::isfinite(gpu[i]) && std::isfinite(cpu[i])) {
      ++result.not_finite;
      continue;
    }
    result.max_error = std::max(result.max_error, std::fabs(double{gpu[i]} - double{cpu[i]}) / scale);
  }
  return result;
}

// `scale`: the magnitude errors are measured against (0: max |cpu|). An output that is a
// difference of much larger terms passes the terms' magnitude, since fp32 rounding of the terms is
// all either side can resolve.
void expect_fp32_close(const char* op, const std::string& shape, const std::vector<float>& gpu,
                       const std::vector<float>& cpu, double scale = 0) {
  ASSERT_EQ(gpu.size(), cpu.size());
  const Fp32Comparison c = compare_fp32(gpu, cpu, scale);
  const bool ok = c.not_finite == 0 && c.max_error <= kFp32Tolerance;
  std::printf("CHECK | %-24s | %-16s | max rel err %9.2e | %s\n", op, shape.c_str(), c.max_error,
              ok ? "ok" : "FAIL");
  EXPECT_EQ(c.not_finite, 0) << op << " " << shape << ": outputs left unwritten or not finite";
  EXPECT_LE(c.max_error, kFp32Tolerance) << op << " " << shape;
}

class OpsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    int devices = 0;
    FRUGAL_CUDA_CHECK(cudaGetDeviceCount(&devices));
    ASSERT_GT(devices, 0) << "no CUDA device";
    FRUGAL_CUDA_CHECK(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    if (stream_ != nullptr) FRUGAL_CUDA_CHECK(cudaStreamDestroy(stream_));
  }
  void sync() { FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  cudaStream_t stream_ = nullptr;
};

// ---- RMSNorm ---------------------------------------------------------------------------------

struct RowShape {
  int64_t rows, cols;
  bool misaligned;
};

const RowShape kRmsnormShapes[] = {{1, 1, false},     {3, 7, false},     {5, 128, false},
                                   {17, 129, false},  {64, 1024, false}, {33, 1030, false},
                                   {9, 5000, false},  {257, 7168, false}, {12, 1024, true},
                                   {300, 4096, false}};

void check_rmsnorm(cudaStream_t stream, const RowShape& shape) {
  const int64_t n = shape.rows, d = shape.cols;
  const double eps = 1e-6;
  const std::string text = shape_text(n, d, shape.misaligned);
  const uint64_t seed = case_seed("rmsnorm " + text, 0);
  const std::vector<float> x = random_normal(n * d, seed + 1, 0.0f, 2.0f);
  const std::vector<float> w = random_normal(d, seed + 2, 1.0f, 0.2f);
  const std::vector<float> dy = random_normal(n * d, seed + 3);
  const std::vector<float> dw_start = random_normal(d, seed + 4, 0.0f, 0.1f);

  std::vector<float> y(n * d), rstd(n), dx(n * d), dw = dw_start;
  cpu::rmsnorm_fwd(y.data(), rstd.data(), x.data(), w.data(), n, d, eps);
  cpu::rmsnorm_bwd_input(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), n, d);
  cpu::rmsnorm_bwd_weight(dw.data(), dy.data(), x.data(), rstd.data(), n, d);

  const bool mis = shape.misaligned;
  DeviceArray<float> x_d(n * d, mis), w_d(d, mis), dy_d(n * d, mis), y_d(n * d, mis), rstd_d(n, mis),
      rstd_in_d(n, mis), dx_d(n * d, mis), dw_d(d, mis),
      workspace_d(cuda::rmsnorm_bwd_weight_workspace_floats(n, d), mis);
  x_d.upload(x);
  w_d.upload(w);
  dy_d.upload(dy);
  rstd_in_d.upload(rstd);  // the backward ops are checked on the CPU's rstd, each op on its own
  y_d.poison();
  rstd_d.poison();
  dx_d.poison();
  workspace_d.poison();  // pass 2 reads every partial sum: one left unwritten would give NaN

  cuda::rmsnorm_fwd(y_d.get(), rstd_d.get(), x_d.get(), w_d.get(), n, d, eps, stream);
  cuda::rmsnorm_bwd_input(dx_d.get(), dy_d.get(), x_d.get(), w_d.get(), rstd_in_d.get(), n, d,
                          stream);
  // bwd_weight accumulates: run it twice from the same start and require the same bits.
  std::vector<uint32_t> first_bits;
  for (int run = 0; run < 2; ++run) {
    dw_d.upload(dw_start);
    cuda::rmsnorm_bwd_weight(dw_d.get(), dy_d.get(), x_d.get(), rstd_in_d.get(), n, d,
                             workspace_d.get(), stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> dw_gpu = dw_d.download();
    std::vector<uint32_t> bits(d);
    for (int64_t j = 0; j < d; ++j) bits[j] = std::bit_cast<uint32_t>(dw_gpu[j]);
    if (run == 0) {
      first_bits = bits;
      expect_fp32_close("rmsnorm_bwd_weight", text, dw_gpu, dw);
    } else {
      EXPECT_EQ(bits, first_bits) << "rmsnorm_bwd_weight " << text << " differs between runs";
    }
  }
  expect_fp32_close("rmsnorm_fwd y", text, y_d.download(), y);
  expect_fp32_close("rmsnorm_fwd rstd", text, rstd_d.download(), rstd);
  // dx = rstd * (dy*w - xhat * mean(dy*w*xhat)) cancels almost completely when d is tiny (d = 1:
  // xhat^2 = x^2/(x^2+eps)), so its error is measured against the terms, max |rstd*dy*w|.
  double term_scale = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j)
      term_scale = std::max(term_scale, std::fabs(double{rstd[i]} * dy[i * d + j] * w[j]));
  expect_fp32_close("rmsnorm_bwd_input", text, dx_d.download(), dx, term_scale);
}

TEST_F(OpsCuda, RmsnormMatchesCpu) {
  for (const RowShape& shape : kRmsnormShapes) check_rmsnorm(stream_, shape);
}

// ---- SwiGLU ----------------------------------------------------------------------------------

void check_swiglu(cudaStream_t stream, int64_t n, bool misaligned) {
  const std::string text = std::to_string(n) + (misaligned ? " +4B" : "");
  const uint64_t seed = case_seed("swiglu " + text, 0);
  // g spans the sigmoid's saturated tails too (|g| up to ~30).
  const std::vector<float> g = random_normal(n, seed + 1, 0.0f, 6.0f);
  const std::vector<float> u = random_normal(n, seed + 2);
  const std::vector<float> dh = random_normal(n, seed + 3);
  std::vector<float> h(n), dg(n), du(n);
  cpu::swiglu_fwd(h.data(), g.data(), u.data(), n);
  cpu::swiglu_bwd(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);

  DeviceArray<float> g_d(n, misaligned), u_d(n, misaligned), dh_d(n, misaligned), h_d(n, misaligned),
      dg_d(n, misaligned), du_d(n, misaligned);
  g_d.upload(g);
  u_d.upload(u);
  dh_d.upload(dh);
  h_d.poison();
  dg_d.poison();
  du_d.poison();
  cuda::swiglu_fwd(h_d.get(), g_d.get(), u_d.get(), n, stream);
  cuda::swiglu_bwd(dg_d.get(), du_d.get(), dh_d.get(), g_d.get(), u_d.get(), n, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_fp32_close("swiglu_fwd", text, h_d.download(), h);
  expect_fp32_close("swiglu_bwd dg", text, dg_d.download(), dg);
  expect_fp32_close("swiglu_bwd du", text, du_d.download(), du);
}

TEST_F(OpsCuda, SwigluMatchesCpu) {
  for (int64_t n : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{7}, int64_t{1000}, int64_t{4097},
                    (int64_t{1} << 20) + 3})
    check_swiglu(stream_, n, false);
  check_swiglu(stream_, 1027, true);
  check_swiglu(stream_, 4096, true);
}

// ---- FP8 quantization --------------------------------------------------------------------------

enum class Pattern { kNormal, kWideRange, kTiny, kMidpoints };

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::kNormal: return "normal";
    case Pattern::kWideRange: return "wide";
    case Pattern::kTiny: return "tiny";
    case Pattern::kMidpoints: return "midpoints";
  }
  return "?";
}

// Quantizer inputs [rows, cols]:
//   normal     N(0, 1)
//   wide       N(0, 1) * 2^U{-20..20} per element: E4M3 subnormals and every rounding case
//   tiny       N(0, 1e-6), every third row zero: the 1e-4 amax clamp
//   midpoints  per row a power of two 2^k; column c % 128 == 0 holds +-448 * 2^k (so the scale is
//              exactly 2^k), every other column the exact midpoint between two adjacent E4M3 codes
//              times 2^k: x / scale is a tie, which must round to even on both sides
std::vector<float> quant_input(Pattern pattern, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-20, 20);
  std::uniform_int_distribution<int> code_pick(0, 125);  // midpoint of codes c, c+1 <= 0x7E
  std::vector<float> x(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int row_exponent = exponent(gen) / 2;
    for (int64_t c = 0; c < cols; ++c) {
      float& v = x[r * cols + c];
      const bool negative = (gen() & 1) != 0;
      switch (pattern) {
        case Pattern::kNormal: v = normal(gen); break;
        case Pattern::kWideRange: v = std::ldexp(normal(gen), exponent(gen)); break;
        case Pattern::kTiny: v = r % 3 == 2 ? 0.0f : 1e-6f * normal(gen); break;
        case Pattern::kMidpoints: {
          float magnitude = 448.0f;
          if (c % kFp8BlockSize != 0) {
            const int code = code_pick(gen);
            magnitude = 0.5f * (e4m3_bits_to_float(static_cast<uint8_t>(code)) +
                                e4m3_bits_to_float(static_cast<uint8_t>(code + 1)));
          }
          v = std::ldexp(negative ? -magnitude : magnitude, row_exponent);
          break;
        }
      }
    }
  }
  return x;
}

// Codes and scales must match bit for bit; prints the first few differences.
void expect_quant_identical(const char* op, const std::string& text, const std::vector<float>& x,
                            const std::vector<uint8_t>& gpu_q, const std::vector<uint8_t>& cpu_q,
                            const std::vector<float>& gpu_scales,
                            const std::vector<float>& cpu_scales) {
  int64_t code_mismatches = 0, unwritten_codes = 0, scale_mismatches = 0;
  for (size_t i = 0; i < cpu_q.size(); ++i) {
    if (gpu_q[i] == 0xFF) ++unwritten_codes;
    if (gpu_q[i] != cpu_q[i] && ++code_mismatches <= 5)
      std::printf("  %s %s: element %zu x %.9g cpu 0x%02X gpu 0x%02X\n", op, text.c_str(), i, x[i],
                  cpu_q[i], gpu_q[i]);
  }
  for (size_t i = 0; i < cpu_scales.size(); ++i) {
    if (std::bit_cast<uint32_t>(gpu_scales[i]) != std::bit_cast<uint32_t>(cpu_scales[i]) &&
        ++scale_mismatches <= 5)
      std::printf("  %s %s: scale %zu cpu %.9g gpu %.9g\n", op, text.c_str(), i, cpu_scales[i],
                  gpu_scales[i]);
  }
  const bool ok = code_mismatches == 0 && scale_mismatches == 0 && unwritten_codes == 0;
  std::printf("CHECK | %-24s | %-16s | %lld/%zu codes, %lld/%zu scales differ | %s\n", op,
              text.c_str(), static_cast<long long>(code_mismatches), cpu_q.size(),
              static_cast<long long>(scale_mismatches), cpu_scales.size(), ok ? "ok" : "FAIL");
  EXPECT_EQ(unwritten_codes, 0) << op << " " << text << ": codes left unwritten";
  EXPECT_EQ(code_mismatches, 0) << op << " " << text;
  EXPECT_EQ(scale_mismatches, 0) << op << " " << text;
}

struct QuantCase {
  int64_t rows, cols;
  bool misaligned;
};

const QuantCase kActShapes[] = {{1, 1, false},     {1, 128, false},  {3, 129, false},
                                {7, 300, false},   {64, 1024, false}, {33, 1001, false},
                                {256, 7168, false}, {5, 4096, true},  {9, 130, true}};
const QuantCase kWeightShapes[] = {{1, 1, false},      {128, 128, false},  {129, 130, false},
                                   {300, 260, false},  {1000, 1030, false}, {512, 7168, false},
                                   {257, 512, true},   {130, 131, true}};
const Pattern kPatterns[] = {Pattern::kNormal, Pattern::kWideRange, Pattern::kTiny,
                             Pattern::kMidpoints};

void check_quantize_act(cudaStream_t stream, const QuantCase& shape, Pattern pattern,
                        bool power_of_two) {
  const int64_t rows = shape.rows, cols = shape.cols, tiles = fp8_block_count(cols);
  const std::string text = shape_text(rows, cols, shape.misaligned) + " " + pattern_name(pattern);
  const std::vector<float> x =
      quant_input(pattern, rows, cols, case_seed("act " + text, power_of_two));
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(tiles * rows);
  cpu::quantize_act_1x128(q.data(), scales.data(), x.data(), rows, cols, power_of_two);

  DeviceArray<float> x_d(rows * cols, shape.misaligned), scales_d(tiles * rows, false);
  DeviceArray<uint8_t> q_d(rows * cols, shape.misaligned);
  x_d.upload(x);
  q_d.poison();
  scales_d.poison();
  cuda::quantize_act_1x128(q_d.get(), scales_d.get(), x_d.get(), rows, cols, power_of_two, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_quant_identical(power_of_two ? "quantize_act pow2" : "quantize_act", text, x, q_d.download(),
                         q, scales_d.download(), scales);
}

void check_quantize_weight(cudaStream_t stream, const QuantCase& shape, Pattern pattern,
                           bool power_of_two) {
  const int64_t rows = shape.rows, cols = shape.cols;
  const int64_t blocks = fp8_block_count(rows) * fp8_block_count(cols);
  const std::string text = shape_text(rows, cols, shape.misaligned) + " " + pattern_name(pattern);
  const std::vector<float> w =
      quant_input(pattern, rows, cols, case_seed("weight " + text, power_of_two));
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(blocks);
  cpu::quantize_weight_128x128(q.data(), scales.data(), w.data(), rows, cols, power_of_two);

  DeviceArray<float> w_d(rows * cols, shape.misaligned), scales_d(blocks, false);
  DeviceArray<uint8_t> q_d(rows * cols, shape.misaligned);
  w_d.upload(w);
  q_d.poison();
  scales_d.poison();
  cuda::quantize_weight_128x128(q_d.get(), scales_d.get(), w_d.get(), rows, cols, power_of_two,
                                stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_quant_identical(power_of_two ? "quantize_weight pow2" : "quantize_weight", text, w,
                         q_d.download(), q, scales_d.download(), scales);
}

TEST_F(OpsCuda, QuantizeActivation1x128IsBitIdentical) {
  for (bool power_of_two : {false, true})
    for (Pattern pattern : kPatterns)
      for (const QuantCase& shape : kActShapes)
        check_quantize_act(stream_, shape, pattern, power_of_two);
}

TEST_F(OpsCuda, QuantizeWeight128x128IsBitIdentical) {
  for (bool power_of_two : {false, true})
    for (Pattern pattern : kPatterns)
      for (const QuantCase& shape : kWeightShapes)
        check_quantize_weight(stream_, shape, pattern, power_of_two);
}

TEST_F(OpsCuda, LaunchersRejectBadArguments) {
  EXPECT_THROW(cuda::rmsnorm_fwd(nullptr, nullptr, nullptr, nullptr, -1, 4, 1e-6, stream_), Error);
  EXPECT_THROW(cuda::rmsnorm_fwd(nullptr, nullptr, nullptr, nullptr, 4, 0, 1e-6, stream_), Error);
  EXPECT_THROW(cuda::rmsnorm_bwd_weight(nullptr, nullptr, nullptr, nullptr, 4, 4, nullptr, stream_),
               Error);
  EXPECT_THROW(cuda::swiglu_fwd(nullptr, nullptr, nullptr, -3, stream_), Error);
  EXPECT_THROW(cuda::quantize_act_1x128(nullptr, nullptr, nullptr, -1, 128, false, stream_), Error);
  // Empty shapes launch nothing and succeed.
  cuda::swiglu_fwd(nullptr, nullptr, nullptr, 0, stream_);
  cuda::quantize_weight_128x128(nullptr, nullptr, nullptr, 0, 128, true, stream_);
  sync();
}

TEST_F(OpsCuda, CudaErrorsThrowWithTheirPlace) {
  float* pointer = nullptr;
  // Far more than any GPU has: cudaMalloc fails with cudaErrorMemoryAllocation.
  try {
    FRUGAL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&pointer), size_t{1} << 62));
    FAIL() << "an impossible allocation succeeded";
  } catch (const Error& error) {
    const std::string message = error.what();
    std::printf("CUDA error message: %s\n", message.c_str());
    EXPECT_NE(message.find("test_ops_cuda.cc:"), std::string::npos) << message;
    EXPECT_NE(message.find("cudaMalloc"), std::string::npos) << message;
    EXPECT_NE(message.find("(cudaError"), std::string::npos) << message;  // the error's name
  }
  // The throw reset the last-error slot: the failure does not resurface at the next check.
  FRUGAL_CUDA_CHECK(cudaGetLastError());
  cuda::DeviceBuffer<float> buffer(4);
  std::vector<float> too_many(5);
  EXPECT_THROW(buffer.upload(too_many), Error);
}

// ---- Timing mode -------------------------------------------------------------------------------

bool timing_enabled() {
  const char* text = std::getenv("FRUGAL_CUDA_TIMING");
  return text != nullptr && std::string(text) != "0" && std::string(text) != "";
}

int timing_reps() {
  const char* text = std::getenv("FRUGAL_CUDA_TIMING_REPS");
  const int reps = text != nullptr ? std::atoi(text) : 20;
  return reps > 0 ? reps : 20;
}

// Fills a device array with N(0, stddev) values: a 1M-value host block, copied over and over.
void fill_random(float* device, int64_t count, uint64_t seed, float mean = 0, float stddev = 1) {
  const int64_t block = std::min<int64_t>(count, int64_t{1} << 20);
  const std::vector<float> host = random_normal(block, seed, mean, stddev);
  for (int64_t offset = 0; offset < count; offset += block) {
    const int64_t n = std::min(block, count - offset);
    FRUGAL_CUDA_CHECK(
        cudaMemcpy(device + offset, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }
}

class Timer {
 public:
  explicit Timer(cudaStream_t stream) : stream_(stream) {
    FRUGAL_CUDA_CHECK(cudaEventCreate(&start_));
    FRUGAL_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~Timer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  // Median time of one launch in microseconds, after 3 warm-up launches.
  double median_us(const std::function<void()>& launch, int reps) {
    for (int i = 0; i < 3; ++i) launch();
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<double> times;
    for (int i = 0; i < reps; ++i) {
      FRUGAL_CUDA_CHECK(cudaEventRecord(start_, stream_));
      launch();
      FRUGAL_CUDA_CHECK(cudaEventRecord(stop_, stream_));
      FRUGAL_CUDA_CHECK(cudaEventSynchronize(stop_));
      float ms = 0;
      FRUGAL_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
      times.push_back(1000.0 * ms);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

 private:
  cudaStream_t stream_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

TEST_F(OpsCuda, TimingBandwidth) {
  if (!timing_enabled()) GTEST_SKIP() << "set FRUGAL_CUDA_TIMING=1 to time the CUDA ops";
  const int reps = timing_reps();
  cudaDeviceProp properties{};
  FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
  std::printf("timing on %s (%d SMs), median of %d runs after 3 warm-ups\n", properties.name,
              properties.multiProcessorCount, reps);
  Timer timer(stream_);
  const int64_t rows = 8 * 4096;
  for (int64_t dim : {int64_t{1024}, int64_t{7168}}) {
    const int64_t count = rows * dim;
    const std::string shape = shape_text(rows, dim, false);
    double copy_gbps = 0;
    auto report = [&](const char* op, const std::string& op_shape, double bytes, double us) {
      const double gbps = bytes / (us * 1e-6) / 1e9;
      if (copy_gbps == 0) copy_gbps = gbps;  // the first line is the copy ceiling
      std::printf("TIMING | %-20s | %-14s | %10.1f us | %7.0f GB/s | %5.1f%% of copy\n", op,
                  op_shape.c_str(), us, gbps, 100.0 * gbps / copy_gbps);
    };
    {
      cuda::DeviceBuffer<float> a(count), b(count);
      fill_random(a.data(), count, 1);
      const double us = timer.median_us(
          [&] {
            FRUGAL_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), count * sizeof(float),
                                              cudaMemcpyDeviceToDevice, stream_));
          },
          reps);
      report("copy d2d (ceiling)", shape, 2.0 * count * sizeof(float), us);
    }
    {
      cuda::DeviceBuffer<float> x(count), w(dim), y(count), rstd(rows), dy(count), dx(count),
          dw(dim), workspace(cuda::rmsnorm_bwd_weight_workspace_floats(rows, dim));
      fill_random(x.data(), count, 2);
      fill_random(w.data(), dim, 3, 1.0f, 0.2f);
      fill_random(dy.data(), count, 4);
      fill_random(dw.data(), dim, 5);
      const double f = sizeof(float);
      double us = timer.median_us(
          [&] { cuda::rmsnorm_fwd(y.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-6, stream_); },
          reps);
      report("rmsnorm_fwd", shape, f * (2.0 * count + dim + rows), us);
      us = timer.median_us(
          [&] {
            cuda::rmsnorm_bwd_input(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), rows,
                                    dim, stream_);
          },
          reps);
      report("rmsnorm_bwd_input", shape, f * (3.0 * count + dim + rows), us);
      us = timer.median_us(
          [&] {
            cuda::rmsnorm_bwd_weight(dw.data(), dy.data(), x.data(), rstd.data(), rows, dim,
                                     workspace.data(), stream_);
          },
          reps);
      report("rmsnorm_bwd_weight", shape, f * (2.0 * count + 2.0 * dim + rows), us);
    }
    {
      cuda::DeviceBuffer<float> g(count), u(count), h(count), dh(count), dg(count), du(count);
      fill_random(g.data(), count, 6, 0.0f, 3.0f);
      fill_random(u.data(), count, 7);
      fill_random(dh.data(), count, 8);
      const double f = sizeof(float);
      double us = timer.median_us(
          [&] { cuda::swiglu_fwd(h.data(), g.data(), u.data(), count, stream_); }, reps);
      report("swiglu_fwd", shape, f * 3.0 * count, us);
      us = timer.median_us(
          [&] { cuda::swiglu_bwd(dg.data(), du.data(), dh.data(), g.data(), u.data(), count, stream_); },
          reps);
      report("swiglu_bwd", shape, f * 5.0 * count, us);
    }
    {
      const int64_t tiles = fp8_block_count(dim);
      cuda::DeviceBuffer<float> x(count), scales(tiles * rows);
      cuda::DeviceBuffer<uint8_t> q(count);
      fill_random(x.data(), count, 9);
      for (bool power_of_two : {false, true}) {
        const double us = timer.median_us(
            [&] {
              cuda::quantize_act_1x128(q.data(), scales.data(), x.data(), rows, dim, power_of_two,
                                       stream_);
            },
            reps);
        report(power_of_two ? "quantize_act pow2" : "quantize_act", shape,
               5.0 * count + 4.0 * tiles * rows, us);
      }
    }
    {
      const int64_t n = 4 * dim, k = dim;  // a [4*dim, dim] weight (an FFN up projection)
      const int64_t blocks = fp8_block_count(n) * fp8_block_count(k);
      cuda::DeviceBuffer<float> w(n * k), scales(blocks);
      cuda::DeviceBuffer<uint8_t> q(n * k);
      fill_random(w.data(), n * k, 10, 0.0f, 0.02f);
      const double us = timer.median_us(
          [&] { cuda::quantize_weight_128x128(q.data(), scales.data(), w.data(), n, k, false, stream_); },
          reps);
      report("quantize_weight", shape_text(n, k, false), 5.0 * n * k + 4.0 * blocks, us);
    }
  }
}

}  // namespace
}  // namespace frugal
