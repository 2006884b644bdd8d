// Helpers shared by the CUDA-vs-CPU kernel tests of the MoE, embedding, cross-entropy and RoPE
// ops: seeds, device arrays (optionally one element off a 16-byte boundary, poisoned with 0xFF),
// BF16 host conversions, and comparisons that print one line per check:
//   CHECK | op | shape | max rel err ... | ok/FAIL
// FRUGAL_TEST_SEED=<n> changes every random input.
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
#include <vector>

#include "core/cuda_check.h"
#include "core/dtype.h"

namespace frugal::cuda_test {

inline uint64_t base_seed() {
  const char* text = std::getenv("FRUGAL_TEST_SEED");
  return text != nullptr ? std::strtoull(text, nullptr, 10) : 20250611;
}

// A seed per (case label, salt), so each case and input gets its own numbers.
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

// BF16 on the host is its bit pattern; device buffers of uint16_t are passed as __nv_bfloat16.
inline std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> bits(x.size());
  for (size_t i = 0; i < x.size(); ++i) bits[i] = float_to_bf16_bits(x[i]);
  return bits;
}
inline std::vector<float> from_bf16(const std::vector<uint16_t>& bits) {
  std::vector<float> x(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) x[i] = bf16_bits_to_float(bits[i]);
  return x;
}
inline std::vector<float> round_bf16(std::vector<float> x) {
  for (float& v : x) v = round_to_bf16(v);
  return x;
}
inline std::vector<double> to_double(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

// `count` device elements; `misaligned` starts them one element past the allocation (off every
// 16-byte boundary for 2- and 4-byte types), so launchers take their scalar paths.
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
  // 0xFF bytes: NaN as fp32/bf16, -1 as int32/int64.
  void poison() {
    if (count_ > 0) FRUGAL_CUDA_CHECK(cudaMemset(get(), 0xFF, count_ * sizeof(T)));
  }

 private:
  int64_t count_;
  int64_t offset_;
  cuda::DeviceBuffer<T> buffer_;
};

inline __nv_bfloat16* as_bf16(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
inline const __nv_bfloat16* as_bf16(const uint16_t* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}

// Tolerances of the task: fp32 1e-5, bf16 1e-2, relative to the reference's magnitude.
constexpr double kFp32Tolerance = 1e-5;
constexpr double kBf16Tolerance = 1e-2;

// max_i |gpu_i - ref_i| / scale (scale 0: max |ref|); NaN/inf where the reference is finite counts
// as unwritten. Prints a CHECK line and the first differences; returns whether it passed.
template <class G, class R>
bool expect_close(const std::string& op, const std::string& shape, const std::vector<G>& gpu,
                  const std::vector<R>& ref, double tolerance, double scale = 0) {
  EXPECT_EQ(gpu.size(), ref.size()) << op << " " << shape;
  if (gpu.size() != ref.size()) return false;
  if (scale == 0)
    for (R r : ref) scale = std::max(scale, std::fabs(static_cast<double>(r)));
  if (scale == 0) scale = 1;
  double max_error = 0;
  int64_t worst = -1, not_finite = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = static_cast<double>(gpu[i]), r = static_cast<double>(ref[i]);
    if (!std::isfinite(g) && std::isfinite(r)) {
      if (++not_finite <= 3)
        std::printf("  %s %s: element %zu is %g on the GPU, %.9g expected\n", op.c_str(),
                    shape.c_str(), i, g, r);
      continue;
    }
    const double error = std::fabs(g - r) / scale;
    if (error > max_error) {
      max_error = error;
      worst = static_cast<int64_t>(i);
    }
  }
  const bool ok = not_finite == 0 && max_error <= tolerance;
  std::printf("CHECK | %-26s | %-30s | max rel err %9.2e | %s\n", op.c_str(), shape.c_str(),
              max_error, ok ? "ok" : "FAIL");
  if (!ok && worst >= 0)
    std::printf("  worst element %lld: gpu %.9g, reference %.9g (scale %.3g)\n",
                static_cast<long long>(worst), static_cast<double>(gpu[worst]),
                static_cast<double>(ref[worst]), scale);
  EXPECT_EQ(not_finite, 0) << op << " " << shape << ": outputs left unwritten or not finite";
  EXPECT_LE(max_error, tolerance) << op << " " << shape << " (worst element " << worst << ")";
  return ok;
}

// Exact equality of integer arrays (or bit patterns), with the first mismatches printed.
template <class A, class B>
bool expect_equal(const std::string& op, const std::string& shape, const std::vector<A>& gpu,
                  const std::vector<B>& ref) {
  EXPECT_EQ(gpu.size(), ref.size()) << op << " " << shape;
  if (gpu.size() != ref.size()) return false;
  int64_t mismatches = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (static_cast<int64_t>(gpu[i]) == static_cast<int64_t>(ref[i])) continue;
    if (++mismatches <= 5)
      std::printf("  %s %s: element %zu gpu %lld expected %lld\n", op.c_str(), shape.c_str(), i,
                  static_cast<long long>(gpu[i]), static_cast<long long>(ref[i]));
  }
  std::printf("CHECK | %-26s | %-30s | %lld/%zu differ | %s\n", op.c_str(), shape.c_str(),
              static_cast<long long>(mismatches), ref.size(), mismatches == 0 ? "ok" : "FAIL");
  EXPECT_EQ(mismatches, 0) << op << " " << shape;
  return mismatches == 0;
}

template <class T>
std::vector<uint64_t> bit_patterns(const std::vector<T>& values) {
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
  std::printf("CHECK | %-26s | %-30s | %s | %s\n", (op + " rerun").c_str(), shape.c_str(),
              same ? "same bits" : "bits differ", same ? "ok" : "FAIL");
  EXPECT_TRUE(same) << op << " " << shape << ": two runs differ";
}

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

}  // namespace frugal::cuda_test
