// Throughput of the CUDA flash attention (kernels/attention/flash_attention_cuda.h), bf16, causal,
// at MLA's training dims (qk 192, v 128), 16 heads, 32768 tokens per call (batch = 32768 / seq),
// seq 1024, 2048, 4096. Forward and backward timed apart with cudaEvents after warm-up runs; the
// median of the timed runs is reported. Each shape runs twice in the same process: with the
// backend preference "own" (frugal's kernels) and "cudnn" (cuDNN's fused engine through its graph
// API, kernels/attention/cudnn_attention.h); the "kernels" column names what actually ran
// (forward/backward), so a cuDNN row that fell back to frugal's kernels says so.
// FLOPs (the convention of FlashAttention and of tools/bench_sdpa_torch.py, which runs the same
// shapes through PyTorch's cuDNN attention for a side-by-side): forward = 2 * batch * heads *
// seq^2 / 2 * (qk + v) for the causal half; backward = 2.5 x forward.
//   build/bench_attention_cuda [out.json] [--reps N] [--fp32]
// --fp32 also times the fp32 (SIMT) kernels at seq 1024, for reference.
// In a build without the CUDA backend the program only says so (bench/ is globbed into every build).
#ifdef FRUGAL_HAVE_CUDA
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/cuda_check.h"
#include "core/cuda_timer.h"
#include "core/dtype.h"
#include "kernels/attention/cudnn_attention.h"
#include "kernels/attention/flash_attention_cuda.h"

using namespace frugal;

namespace {

constexpr int64_t kTokens = 32768, kHeads = 16, kQkDim = 192, kVDim = 128;

template <class T>
std::vector<T> random_values(int64_t count, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<T> values(count);
  for (T& value : values) {
    const float x = dist(gen);
    if constexpr (std::is_same_v<T, float>) {
      value = x;
    } else {
      __nv_bfloat16_raw raw;
      raw.x = float_to_bf16_bits(x);
      value = T(raw);
    }
  }
  return values;
}

template <class F>
double median_ms(F&& run, int warmup, int reps, cudaStream_t stream) {
  return cuda::CudaTimer(stream).median_us(run, reps, warmup) / 1000.0;
}

struct Result {
  std::string impl, dtype, fwd_kernels, bwd_kernels;
  int64_t batch, seq;
  double fwd_ms, bwd_ms, fwd_tflops, bwd_tflops;
};

template <class T>
Result measure(cuda::AttentionBackend backend, const char* dtype, int64_t seq, int reps,
               cudaStream_t stream) {
  cuda::set_attention_backend(backend);
  const int64_t batch = kTokens / seq;
  const int64_t qk_count = batch * seq * kHeads * kQkDim, v_count = batch * seq * kHeads * kVDim;
  cuda::DeviceBuffer<T> q(qk_count), k(qk_count), v(v_count), out(v_count), dout(v_count);
  cuda::DeviceBuffer<T> dq(qk_count), dk(qk_count), dv(v_count);
  cuda::DeviceBuffer<float> lse(batch * kHeads * seq);
  q.upload(random_values<T>(qk_count, 1));
  k.upload(random_values<T>(qk_count, 2));
  v.upload(random_values<T>(v_count, 3));
  dout.upload(random_values<T>(v_count, 4));
  cuda::DeviceBuffer<uint8_t> workspace(
      cuda::flash_attention_bwd_workspace_bytes<T>(batch, seq, kHeads, kQkDim, kVDim));
  const float scale = 1.0f / std::sqrt(static_cast<float>(kQkDim));

  auto forward = [&] {
    cuda::flash_attention_fwd<T>(out.data(), lse.data(), q.data(), k.data(), v.data(), batch, seq,
                                 kHeads, kQkDim, kVDim, scale, stream);
  };
  auto backward = [&] {
    cuda::flash_attention_bwd<T>(dq.data(), dk.data(), dv.data(), dout.data(), out.data(),
                                 lse.data(), q.data(), k.data(), v.data(), batch, seq, kHeads,
                                 kQkDim, kVDim, scale, workspace.data(), stream);
  };
  Result result{backend == cuda::AttentionBackend::own ? "frugal" : "cudnn", dtype, "", "", batch,
                seq, 0, 0, 0, 0};
  result.fwd_ms = median_ms(forward, 3, reps, stream);
  result.bwd_ms = median_ms(backward, 3, reps, stream);
  result.fwd_kernels = cuda::flash_attention_backend(false);
  result.bwd_kernels = cuda::flash_attention_backend(true);
  const double fwd_flops = 2.0 * batch * kHeads * (static_cast<double>(seq) * seq / 2) *
                           (kQkDim + kVDim);
  result.fwd_tflops = fwd_flops / (result.fwd_ms * 1e-3) / 1e12;
  result.bwd_tflops = 2.5 * fwd_flops / (result.bwd_ms * 1e-3) / 1e12;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  int reps = 20;
  bool fp32 = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (arg == "--fp32") fp32 = true;
    else json_path = arg;
  }
  try {
    cudaDeviceProp prop{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t stream;
    FRUGAL_CUDA_CHECK(cudaStreamCreate(&stream));
    std::vector<Result> results;
    for (int64_t seq : {1024, 2048, 4096})
      for (auto backend : {cuda::AttentionBackend::own, cuda::AttentionBackend::cudnn})
        results.push_back(measure<__nv_bfloat16>(backend, "bf16", seq, reps, stream));
    if (fp32)
      results.push_back(
          measure<float>(cuda::AttentionBackend::own, "fp32", 1024, std::min(reps, 5), stream));
    FRUGAL_CUDA_CHECK(cudaStreamDestroy(stream));

    std::printf("flash attention, causal, heads %lld, qk %lld, v %lld, %s\n",
                static_cast<long long>(kHeads), static_cast<long long>(kQkDim),
                static_cast<long long>(kVDim), prop.name);
    const long long cudnn_version = static_cast<long long>(cuda::cudnn_attention_version());
    std::printf("cuDNN %lld%s\n", cudnn_version, cudnn_version == 0 ? " (not in this build)" : "");
    std::printf("%-7s %-11s %-6s %6s %6s %10s %12s %10s %12s\n", "impl", "kernels", "dtype",
                "batch", "seq", "fwd ms", "fwd TFLOP/s", "bwd ms", "bwd TFLOP/s");
    nlohmann::json json = nlohmann::json::array();
    for (const Result& r : results) {
      const std::string kernels = r.fwd_kernels + "/" + r.bwd_kernels;
      std::printf("%-7s %-11s %-6s %6lld %6lld %10.3f %12.1f %10.3f %12.1f\n", r.impl.c_str(),
                  kernels.c_str(), r.dtype.c_str(), static_cast<long long>(r.batch),
                  static_cast<long long>(r.seq), r.fwd_ms, r.fwd_tflops, r.bwd_ms, r.bwd_tflops);
      json.push_back({{"impl", r.impl}, {"fwd_kernels", r.fwd_kernels},
                      {"bwd_kernels", r.bwd_kernels}, {"dtype", r.dtype}, {"batch", r.batch},
                      {"seq", r.seq}, {"heads", kHeads}, {"qk_dim", kQkDim}, {"v_dim", kVDim},
                      {"fwd_ms", r.fwd_ms}, {"bwd_ms", r.bwd_ms}, {"fwd_tflops", r.fwd_tflops},
                      {"bwd_tflops", r.bwd_tflops}, {"device", prop.name},
                      {"cudnn_version", cudnn_version}});
    }
    if (!json_path.empty()) {
      std::ofstream(json_path) << json.dump(2) << "\n";
      std::printf("wrote %s\n", json_path.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}

#else  // !FRUGAL_HAVE_CUDA

#include <cstdio>

int main() {
  std::fprintf(stderr, "bench_attention_cuda: built without the CUDA backend\n");
  return 1;
}

#endif
