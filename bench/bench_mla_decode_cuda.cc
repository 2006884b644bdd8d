// Effective bandwidth of the CUDA absorbed-MLA decode attention (kernels/attention/
// mla_decode_cuda.h) over a paged bf16 latent cache (page size 64, shuffled pages): batch 1, 8,
// 64, 128 rows (one per sequence, all at the same context) at contexts 1024, 4096, 16384, for the
// bench-1b (16 heads, kv_lora 256), V2-Lite (16, 512) and V3 (128, 512) shapes, rope 64.
//   effective bandwidth = (cache entries read once + q + out bytes) / median time
// The same program measures the device's copy bandwidth (cudaMemcpyAsync device to device of
// 1 GiB, counted as bytes read + bytes written) and prints each result as "% of copy". Also
// printed: TFLOP/s of the two matrix products (rows * heads * context * 2 * (entry + kv_lora)).
//   build/bench_mla_decode_cuda [out.json] [--reps N]
// In a build without the CUDA backend the program only says so (bench/ is globbed into every build).
#ifdef FRUGAL_HAVE_CUDA
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/cuda_check.h"
#include "core/cuda_timer.h"
#include "core/dtype.h"
#include "kernels/attention/mla_decode_cuda.h"

using namespace frugal;

namespace {

constexpr int64_t kPageSize = 64, kMaxBatch = 128, kMaxContext = 16384;

struct ModelDims {
  const char* name;
  int64_t heads, kv_lora, rope;
};

struct Result {
  std::string model;
  int64_t batch, context, heads, kv_lora, rope;
  double us, gbps, percent_of_copy, tflops;
};

// Random bf16 values (the bandwidth does not depend on them, but NaN-free inputs keep the
// softmax on its ordinary path).
std::vector<uint16_t> random_bf16(int64_t count, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<uint16_t> bits(static_cast<size_t>(count));
  for (auto& b : bits) b = float_to_bf16_bits(dist(gen));
  return bits;
}

// Fill a device buffer with a repeated random block (device-to-device copies of the block).
void fill_random(uint16_t* device, int64_t count, cudaStream_t stream) {
  const int64_t block = std::min<int64_t>(count, int64_t{1} << 24);
  const std::vector<uint16_t> host = random_bf16(block, 7);
  FRUGAL_CUDA_CHECK(cudaMemcpy(device, host.data(), block * 2, cudaMemcpyHostToDevice));
  for (int64_t done = block; done < count; done += block)
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(device + done, device, std::min(block, count - done) * 2,
                                      cudaMemcpyDeviceToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// Read + write bytes per second of a large device-to-device copy, in GB/s.
double copy_bandwidth_gbps(cudaStream_t stream, int reps) {
  const size_t bytes = size_t{1} << 30;
  cuda::DeviceBuffer<uint8_t> from(bytes), to(bytes);
  from.fill_bytes(1);
  const double us = cuda::CudaTimer(stream).median_us(
      [&] {
        FRUGAL_CUDA_CHECK(
            cudaMemcpyAsync(to.data(), from.data(), bytes, cudaMemcpyDeviceToDevice, stream));
      },
      reps);
  return 2.0 * static_cast<double>(bytes) / (us * 1e-6) / 1e9;
}

std::vector<Result> measure(const ModelDims& dims, double copy_gbps, int reps,
                            cudaStream_t stream) {
  const int64_t entry = dims.kv_lora + dims.rope;
  const int64_t pool_pages = kMaxBatch * kMaxContext / kPageSize;
  cuda::DeviceBuffer<uint16_t> pool(static_cast<size_t>(pool_pages * kPageSize * entry));
  fill_random(pool.data(), static_cast<int64_t>(pool.size()), stream);
  cuda::DeviceBuffer<uint16_t> q(static_cast<size_t>(kMaxBatch * dims.heads * entry));
  q.upload(random_bf16(static_cast<int64_t>(q.size()), 11));
  cuda::DeviceBuffer<uint16_t> out(static_cast<size_t>(kMaxBatch * dims.heads * dims.kv_lora));
  std::vector<int32_t> order(static_cast<size_t>(pool_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(5));

  std::vector<Result> results;
  for (int64_t batch : {1, 8, 64, 128})
    for (int64_t context : {1024, 4096, 16384}) {
      MlaDecodeShape shape;
      shape.rows = batch;
      shape.heads = dims.heads;
      shape.kv_lora = dims.kv_lora;
      shape.rope = dims.rope;
      shape.layers = 1;
      shape.layer = 0;
      shape.page_size = kPageSize;
      shape.max_pages = context / kPageSize;
      shape.softmax_scale = 0.1352338f;
      const std::vector<int32_t> table(order.begin(), order.begin() + batch * shape.max_pages);
      std::vector<int32_t> sequences(static_cast<size_t>(batch));
      std::iota(sequences.begin(), sequences.end(), 0);
      const std::vector<int32_t> lengths(static_cast<size_t>(batch),
                                         static_cast<int32_t>(context));
      cuda::DeviceBuffer<int32_t> table_device{std::span<const int32_t>(table)};
      cuda::DeviceBuffer<int32_t> sequences_device{std::span<const int32_t>(sequences)};
      cuda::DeviceBuffer<int32_t> lengths_device{std::span<const int32_t>(lengths)};
      const size_t workspace_bytes = cuda::mla_decode_workspace_bytes(shape, context);
      cuda::DeviceBuffer<uint8_t> workspace(std::max<size_t>(workspace_bytes, 16));
      const double us = cuda::CudaTimer(stream).median_us(
          [&] {
            cuda::mla_decode_attention(
                reinterpret_cast<__nv_bfloat16*>(out.data()),
                reinterpret_cast<const __nv_bfloat16*>(q.data()),
                reinterpret_cast<const __nv_bfloat16*>(pool.data()), table_device.data(),
                sequences_device.data(), lengths_device.data(), shape, context, workspace.data(),
                workspace_bytes, stream);
          },
          reps);
      const double bytes = 2.0 * (static_cast<double>(batch) * context * entry +
                                  batch * dims.heads * (entry + dims.kv_lora));
      const double flops =
          2.0 * static_cast<double>(batch) * dims.heads * context * (entry + dims.kv_lora);
      const double gbps = bytes / (us * 1e-6) / 1e9;
      results.push_back({dims.name, batch, context, dims.heads, dims.kv_lora, dims.rope, us, gbps,
                         100.0 * gbps / copy_gbps, flops / (us * 1e-6) / 1e12});
    }
  return results;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else json_path = arg;
  }
  try {
    cudaDeviceProp prop{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    FRUGAL_CUDA_CHECK(cudaStreamCreate(&stream));
    const double copy_gbps = copy_bandwidth_gbps(stream, reps);
    std::vector<Result> results;
    for (const ModelDims& dims : {ModelDims{"bench-1b", 16, 256, 64},
                                  ModelDims{"V2-Lite", 16, 512, 64},
                                  ModelDims{"V3", 128, 512, 64}}) {
      const auto part = measure(dims, copy_gbps, reps, stream);
      results.insert(results.end(), part.begin(), part.end());
    }
    FRUGAL_CUDA_CHECK(cudaStreamDestroy(stream));

    std::printf("MLA decode attention, bf16 paged cache (page %lld), %s\n",
                static_cast<long long>(kPageSize), prop.name);
    std::printf("device copy bandwidth (read + write): %.0f GB/s\n", copy_gbps);
    std::printf("%-9s %6s %6s %8s %10s %10s %10s %10s\n", "model", "heads", "batch", "context",
                "us", "GB/s", "% of copy", "TFLOP/s");
    nlohmann::json json = nlohmann::json::array();
    for (const Result& r : results) {
      std::printf("%-9s %6lld %6lld %8lld %10.1f %10.0f %9.1f%% %10.1f\n", r.model.c_str(),
                  static_cast<long long>(r.heads), static_cast<long long>(r.batch),
                  static_cast<long long>(r.context), r.us, r.gbps, r.percent_of_copy, r.tflops);
      json.push_back({{"model", r.model}, {"heads", r.heads}, {"kv_lora", r.kv_lora},
                      {"rope", r.rope}, {"batch", r.batch}, {"context", r.context},
                      {"page_size", kPageSize}, {"us", r.us}, {"gbps", r.gbps},
                      {"copy_gbps", copy_gbps}, {"percent_of_copy", r.percent_of_copy},
                      {"tflops", r.tflops}, {"device", prop.name}});
    }
    if (!json_path.empty()) {
      std::ofstream(json_path) << json.dump(2) << "\n";
      std::printf("wrote %s\n", json_path.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mla_decode_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}

#else  // !FRUGAL_HAVE_CUDA

#include <cstdio>

int main() {
  std::fprintf(stderr, "bench_mla_decode_cuda: built without the CUDA backend\n");
  return 1;
}

#endif
