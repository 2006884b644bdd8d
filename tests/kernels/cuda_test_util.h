// Shared helpers of the CUDA-vs-CPU kernel tests (tests/kernels/test_*_cuda.cc):
//   - seeds: FRUGAL_TEST_SEED=<n> changes every random input; case_seed gives each (op, shape,
//     input) its own stream of numbers
//   - DeviceArray<T>: device elements, optionally one element past a 16-byte boundary (so the
//     launchers take their element-by-element paths), with upload / download / poison (0xFF bytes:
//     NaN as fp32 and bf16, the never-written E4M3 code 0xFF)
//   - bf16 host conversions through core/dtype.h (round to nearest even), as __nv_bfloat16 values
//     or as uint16_t bit patterns (to_bf16_bits / from_bf16_bits, as_bf16 for device pointers)
//   - checks that print one line "CHECK | op | shape | metric | ok/FAIL" (the format
//     scripts/gpu_round.sh summarizes) and, on failure, the first offending index with both values:
//       expect_close:     max_i |gpu_i - cpu_i| / scale <= tolerance (scale: max_i |cpu_i| unless
//                         given), and no non-finite GPU value where the CPU's is finite
//       expect_identical_bits / expect_quant_identical: bit for bit (FP8 codes and scales)
//       expect_equal:     integer arrays (or bit patterns) exactly
//       expect_same_bits: two runs of an op give the same bits
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/dtype.h"

namespace frugal::testing {

constexpr double kFp32Tolerance = 1e-5;
constexpr double kBf16Tolerance = 1e-2;

inline uint64_t base_seed() {
  const char* text = std::getenv("FRUGAL_TEST_SEED");
  return text != nullptr ? std::strtoull(text, nullptr, 10) : 20240917;
}

// A seed per (op, shape, input) so each case gets its own numbers.
inline uint64_t case_seed(const std::string& label, uint64_t salt = 0) {
  uint64_t h = 1469598103934665603ull ^ base_seed();
  for (char c : label) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h ^ (salt * 0x9E3779B97F4A7C15ull);
}

inline std::vector<float> random_normal(int64_t count, uint64_t seed, float mean = 0.0f,
                                        float stddev = 1.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> values(count);
  for (float& v : values) v = dist(gen);
  return values;
}

inline std::string shape_text(int64_t rows, int64_t cols, bool misaligned) {
  return std::to_string(rows) + "x" + std::to_string(cols) + (misaligned ? " +1el" : "");
}

// ---- bf16 on the host ----------------------------------------------------------------------------

inline __nv_bfloat16 bf16_from_bits(uint16_t bits) {
  __nv_bfloat16_raw raw;
  raw.x = bits;
  return __nv_bfloat16(raw);
}
inline uint16_t bits_of(__nv_bfloat16 value) { return static_cast<__nv_bfloat16_raw>(value).x; }
inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& values) {
  std::vector<__nv_bfloat16> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = bf16_from_bits(float_to_bf16_bits(values[i]));
  return out;
}
inline std::vector<float> to_float(const std::vector<__nv_bfloat16>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = bf16_bits_to_float(bits_of(values[i]));
  return out;
}
inline std::vector<float> to_float(const std::vector<float>& values) { return values; }
// The values a bf16 store then load gives.
inline std::vector<float> round_bf16(const std::vector<float>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = round_to_bf16(values[i]);
  return out;
}

// The same as bit patterns: device buffers of uint16_t are passed to the ops as __nv_bfloat16.
inline std::vector<uint16_t> to_bf16_bits(const std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) bits[i] = float_to_bf16_bits(values[i]);
  return bits;
}
inline std::vector<float> from_bf16_bits(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = bf16_bits_to_float(bits[i]);
  return out;
}
inline __nv_bfloat16* as_bf16(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
inline const __nv_bfloat16* as_bf16(const uint16_t* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}
inline std::vector<double> to_double(const std::vector<float>& values) {
  return std::vector<double>(values.begin(), values.end());
}

// Host values of element type T from fp32 (bf16: rounded) and the fp32 values T holds.
template <class T>
std::vector<T> host_values(const std::vector<float>& values);
template <>
inline std::vector<float> host_values<float>(const std::vector<float>& values) {
  return values;
}
template <>
inline std::vector<__nv_bfloat16> host_values<__nv_bfloat16>(const std::vector<float>& values) {
  return to_bf16(values);
}
template <class T>
std::vector<float> representable(const std::vector<float>& values) {
  return std::is_same_v<T, float> ? values : round_bf16(values);
}
template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}
template <class T>
double tolerance_for() {
  return std::is_same_v<T, float> ? kFp32Tolerance : kBf16Tolerance;
}

// ---- device arrays ---------------------------------------------------------------------------------

// `count` device elements; `misaligned` starts them one element past the allocation (4 bytes for
// fp32, 2 for bf16, 1 for codes), off every vector boundary.
template <class T>
class DeviceArray {
 public:
  DeviceArray(int64_t count, bool misaligned = false)
      : count_(count), offset_(misaligned ? 1 : 0), buffer_(static_cast<size_t>(count + 1)) {}
  T* get() { return buffer_.data() + offset_; }
  int64_t size() const { return count_; }
  void upload(const std::vector<T>& host) {
    ASSERT_EQ(static_cast<int64_t>(host.size()), count_);
    if (count_ > 0)
      FRUGAL_CUDA_CHECK(cudaMemcpy(get(), host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() {
    std::vector<T> host(count_);
    if (count_ > 0)
      FRUGAL_CUDA_CHECK(cudaMemcpy(host.data(), get(), count_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  void poison() {
    if (count_ > 0) FRUGAL_CUDA_CHECK(cudaMemset(get(), 0xFF, count_ * sizeof(T)));
  }

 private:
  int64_t count_;
  int64_t offset_;
  cuda::DeviceBuffer<T> buffer_;
};

// ---- checks ----------------------------------------------------------------------------------------

// `scale`: the magnitude errors are measured against (0: max |cpu|). An output that is a difference
// of much larger terms passes the terms' magnitude, since rounding of the terms is all either side
// can resolve.
// G, R: float or double (the GPU's values and the reference's).
template <class G, class R>
bool expect_close(const std::string& op, const std::string& shape, const std::vector<G>& gpu,
                  const std::vector<R>& cpu, double tolerance, double scale = 0) {
  EXPECT_EQ(gpu.size(), cpu.size()) << op << " " << shape;
  if (gpu.size() != cpu.size()) return false;
  if (scale == 0)
    for (R c : cpu) scale = std::max(scale, std::fabs(static_cast<double>(c)));
  if (scale == 0) scale = 1;
  double max_error = 0;
  int64_t not_finite = 0, bad = 0, first_bad = -1;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double g = static_cast<double>(gpu[i]), c = static_cast<double>(cpu[i]);
    const bool unwritten = !std::isfinite(g) && std::isfinite(c);
    const double error = unwritten ? INFINITY : std::fabs(g - c) / scale;
    if (unwritten) ++not_finite;
    else max_error = std::max(max_error, error);
    if (unwritten || error > tolerance) {
      if (first_bad < 0) first_bad = static_cast<int64_t>(i);
      ++bad;
    }
  }
  const bool ok = bad == 0;
  std::printf("CHECK | %-28s | %-22s | max rel err %9.2e | %s\n", op.c_str(), shape.c_str(),
              max_error, ok ? "ok" : "FAIL");
  if (!ok)
    std::printf("  %s %s: %lld of %zu elements off (%lld not finite); first at %lld: gpu %.9g cpu "
                "%.9g (scale %.3g, tolerance %.1e)\n",
                op.c_str(), shape.c_str(), static_cast<long long>(bad), cpu.size(),
                static_cast<long long>(not_finite), static_cast<long long>(first_bad),
                static_cast<double>(gpu[first_bad]), static_cast<double>(cpu[first_bad]), scale,
                tolerance);
  EXPECT_TRUE(ok) << op << " " << shape << ": max rel err " << max_error << ", " << bad
                  << " bad elements, first at " << first_bad;
  return ok;
}
// fp32 on both sides (also for braced lists).
inline bool expect_close(const std::string& op, const std::string& shape,
                         const std::vector<float>& gpu, const std::vector<float>& cpu,
                         double tolerance, double scale = 0) {
  return expect_close<float, float>(op, shape, gpu, cpu, tolerance, scale);
}

// Same bits (floats compared as their bit patterns).
inline bool expect_identical_bits(const std::string& op, const std::string& shape,
                                  const std::vector<float>& gpu, const std::vector<float>& cpu) {
  EXPECT_EQ(gpu.size(), cpu.size()) << op << " " << shape;
  if (gpu.size() != cpu.size()) return false;
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (std::bit_cast<uint32_t>(gpu[i]) != std::bit_cast<uint32_t>(cpu[i]) && differ++ == 0)
      first = static_cast<int64_t>(i);
  const bool ok = differ == 0;
  std::printf("CHECK | %-28s | %-22s | %lld/%zu values differ | %s\n", op.c_str(),
              shape.c_str(), static_cast<long long>(differ), cpu.size(), ok ? "ok" : "FAIL");
  if (!ok)
    std::printf("  %s %s: first difference at %lld: gpu %.9g cpu %.9g\n", op.c_str(), shape.c_str(),
                static_cast<long long>(first), gpu[first], cpu[first]);
  EXPECT_TRUE(ok) << op << " " << shape << ": " << differ << " values differ, first at " << first;
  return ok;
}

// Codes and scales must match bit for bit; prints the first few differences. `x` (may be empty)
// is the quantizer's input in the codes' layout, shown next to differing codes.
inline bool expect_quant_identical(const std::string& op, const std::string& text,
                                   const std::vector<float>& x, const std::vector<uint8_t>& gpu_q,
                                   const std::vector<uint8_t>& cpu_q,
                                   const std::vector<float>& gpu_scales,
                                   const std::vector<float>& cpu_scales) {
  EXPECT_EQ(gpu_q.size(), cpu_q.size()) << op << " " << text;
  EXPECT_EQ(gpu_scales.size(), cpu_scales.size()) << op << " " << text;
  if (gpu_q.size() != cpu_q.size() || gpu_scales.size() != cpu_scales.size()) return false;
  int64_t code_mismatches = 0, unwritten_codes = 0, scale_mismatches = 0;
  for (size_t i = 0; i < cpu_q.size(); ++i) {
    if (gpu_q[i] == 0xFF && cpu_q[i] != 0xFF) ++unwritten_codes;
    if (gpu_q[i] != cpu_q[i] && ++code_mismatches <= 5)
      std::printf("  %s %s: code %zu x %.9g cpu 0x%02X gpu 0x%02X\n", op.c_str(), text.c_str(), i,
                  i < x.size() ? x[i] : NAN, cpu_q[i], gpu_q[i]);
  }
  for (size_t i = 0; i < cpu_scales.size(); ++i) {
    if (std::bit_cast<uint32_t>(gpu_scales[i]) != std::bit_cast<uint32_t>(cpu_scales[i]) &&
        ++scale_mismatches <= 5)
      std::printf("  %s %s: scale %zu cpu %.9g gpu %.9g\n", op.c_str(), text.c_str(), i,
                  cpu_scales[i], gpu_scales[i]);
  }
  const bool ok = code_mismatches == 0 && scale_mismatches == 0;
  std::printf("CHECK | %-28s | %-22s | %lld/%zu codes, %lld/%zu scales differ | %s\n", op.c_str(),
              text.c_str(), static_cast<long long>(code_mismatches), cpu_q.size(),
              static_cast<long long>(scale_mismatches), cpu_scales.size(), ok ? "ok" : "FAIL");
  EXPECT_EQ(unwritten_codes, 0) << op << " " << text << ": codes left unwritten";
  EXPECT_EQ(code_mismatches, 0) << op << " " << text;
  EXPECT_EQ(scale_mismatches, 0) << op << " " << text;
  return ok;
}

// Exact equality of integer arrays (or bit patterns), with the first mismatches printed.
template <class A, class B>
bool expect_equal(const std::string& op, const std::string& shape, const std::vector<A>& gpu,
                  const std::vector<B>& cpu) {
  EXPECT_EQ(gpu.size(), cpu.size()) << op << " " << shape;
  if (gpu.size() != cpu.size()) return false;
  int64_t mismatches = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (static_cast<int64_t>(gpu[i]) == static_cast<int64_t>(cpu[i])) continue;
    if (++mismatches <= 5)
      std::printf("  %s %s: element %zu gpu %lld expected %lld\n", op.c_str(), shape.c_str(), i,
                  static_cast<long long>(gpu[i]), static_cast<long long>(cpu[i]));
  }
  std::printf("CHECK | %-28s | %-22s | %lld/%zu differ | %s\n", op.c_str(), shape.c_str(),
              static_cast<long long>(mismatches), cpu.size(), mismatches == 0 ? "ok" : "FAIL");
  EXPECT_EQ(mismatches, 0) << op << " " << shape;
  return mismatches == 0;
}

template <class T>
std::vector<uint64_t> bit_patterns(const std::vector<T>& values) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  std::vector<uint64_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    uint64_t b = 0;
    std::memcpy(&b, &values[i], sizeof(T));
    bits[i] = b;
  }
  return bits;
}

// Two runs of an op must give the same bits.
template <class T>
void expect_same_bits(const std::string& op, const std::string& shape, const std::vector<T>& first,
                      const std::vector<T>& second) {
  const bool same = bit_patterns(first) == bit_patterns(second);
  std::printf("CHECK | %-28s | %-22s | %s | %s\n", (op + " rerun").c_str(), shape.c_str(),
              same ? "same bits" : "bits differ", same ? "ok" : "FAIL");
  EXPECT_TRUE(same) << op << " " << shape << ": two runs differ";
}

// A test fixture with its own stream; skips nothing: no device is a failure.
class CudaTest : public ::testing::Test {
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

}  // namespace frugal::testing
