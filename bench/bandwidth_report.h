// Shared by the bandwidth benchmarks (bench_moe_ops_cuda, bench_fp8_ops_cuda): random device
// inputs and a table of timed ops with the GB/s of the bytes each must move at least, as a
// percentage of the first row (a device-to-device copy: the ceiling). CUDA builds only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/cuda_timer.h"

namespace frugal::bench {

// Random bytes of a float distribution (N(0, stddev) as fp32, or its bf16 halves when the buffer
// holds bf16), uploaded in blocks.
inline void fill_normal(void* device, int64_t floats, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  const int64_t block = std::min<int64_t>(floats, int64_t{1} << 20);
  std::vector<float> host(static_cast<size_t>(block));
  for (float& v : host) v = dist(gen);
  for (int64_t offset = 0; offset < floats; offset += block) {
    const int64_t n = std::min(block, floats - offset);
    FRUGAL_CUDA_CHECK(cudaMemcpy(static_cast<float*>(device) + offset, host.data(),
                                 static_cast<size_t>(n) * sizeof(float), cudaMemcpyHostToDevice));
  }
}

// N(0, stddev) values rounded to bf16, uploaded in blocks (activations as the model makes them).
inline void fill_normal_bf16(__nv_bfloat16* device, int64_t count, uint64_t seed,
                             float stddev = 1.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  const int64_t block = std::min<int64_t>(count, int64_t{1} << 20);
  std::vector<__nv_bfloat16> host(static_cast<size_t>(block));
  for (int64_t offset = 0; offset < count; offset += block) {
    const int64_t n = std::min(block, count - offset);
    for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(i)] = __float2bfloat16(dist(gen));
    FRUGAL_CUDA_CHECK(cudaMemcpy(device + offset, host.data(),
                                 static_cast<size_t>(n) * sizeof(__nv_bfloat16),
                                 cudaMemcpyHostToDevice));
  }
}

// Writes `json` to argv[1] when the bench was given a results path.
inline void write_json_argument(int argc, char** argv, const nlohmann::json& json) {
  if (argc < 2) return;
  std::ofstream out(argv[1]);
  out << json.dump(2) << "\n";
  std::printf("wrote %s\n", argv[1]);
}

class BandwidthReport {
 public:
  // Prints the header and times the copy ceiling (a device-to-device copy of 256 MiB).
  BandwidthReport(cuda::CudaTimer& timer, cudaStream_t stream, int reps) : reps_(reps) {
    std::printf("%-34s %-5s %-24s %10s %10s %9s\n", "op", "type", "shape", "us", "GB/s",
                "of copy");
    const int64_t bytes = int64_t{256} << 20;
    cuda::DeviceBuffer<uint8_t> a(static_cast<size_t>(bytes)), b(static_cast<size_t>(bytes));
    FRUGAL_CUDA_CHECK(cudaMemset(a.data(), 1, static_cast<size_t>(bytes)));
    add("device copy (ceiling)", "-", "256 MiB", timer.median_us([&] {
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), static_cast<size_t>(bytes),
                                        cudaMemcpyDeviceToDevice, stream));
    }, reps), 2.0 * static_cast<double>(bytes));
  }

  int reps() const { return reps_; }

  void add(const std::string& op, const std::string& dtype, const std::string& shape, double us,
           double bytes) {
    rows_.push_back({op, dtype, shape, us, bytes});
    const double gbps = bytes > 0 ? bytes / (us * 1e-6) / 1e9 : 0.0;
    if (copy_gbps_ == 0) copy_gbps_ = gbps;  // the first row is the copy ceiling
    std::printf("%-34s %-5s %-24s %10.1f %10.0f %8.1f%%\n", op.c_str(), dtype.c_str(),
                shape.c_str(), us, gbps, bytes > 0 ? 100.0 * gbps / copy_gbps_ : 0.0);
  }

  // {"device": ..., "reps": ..., "ops": [...]} merged with `extra` (the bench's sizes).
  nlohmann::json json(const std::string& device, nlohmann::json extra) const {
    nlohmann::json ops = nlohmann::json::array();
    for (const Row& r : rows_) {
      const double gbps = r.bytes > 0 ? r.bytes / (r.us * 1e-6) / 1e9 : 0.0;
      ops.push_back({{"op", r.op}, {"dtype", r.dtype}, {"shape", r.shape}, {"us", r.us},
                     {"bytes", r.bytes}, {"gbps", gbps},
                     {"percent_of_copy", r.bytes > 0 ? 100.0 * gbps / copy_gbps_ : 0.0}});
    }
    extra["device"] = device;
    extra["reps"] = reps_;
    extra["ops"] = ops;
    return extra;
  }

 private:
  struct Row {
    std::string op, dtype, shape;
    double us, bytes;
  };
  std::vector<Row> rows_;
  double copy_gbps_ = 0;
  int reps_;
};

}  // namespace frugal::bench
