// Grouped BF16 GEMM throughput of an MoE layer's experts: frugal's Hopper kernels
// (grouped_gemm_sm90.h: one launch, device-side offsets) next to the cuBLASLt grouped calls
// (gemm_cuda.h: one cuBLASLt GEMM per expert, host offsets) and one dense cuda::gemm over all the
// rows (the ceiling: same FLOPs, one weight). Passes: Fprop y = x W_g^T, Dgrad dx = dy W_g,
// Wgrad dW_g += dy_g^T x_g (fp32, accumulate). Shapes:
//   bench-1b: 64 experts x 3072 rows, gate/up W [768, 1024], down W [1024, 384]
//   V3-like:  32 experts x 2048 rows, gate/up W [4096, 7168], down W [7168, 2048]
// with equal groups, and (bench-1b) uneven groups of the same total (sizes 0.25x to 1.75x).
// Timing: cudaEvent around back-to-back calls (>= 2 ms per sample), 3 warm-up calls, median of
// 15 samples. FLOPs = 2 rows N K. TFLOP/s columns: sm90 | cuBLASLt grouped | dense.
// FP8 rows (bench-1b shapes, groups of multiples of 128 rows as the FP8 permutation pads them):
// grouped_gemm_fp8_sm90.h's kernels against the cuBLASLt grouped FP8 calls (no dense column) on
// finite random E4M3 codes and scales: Fprop and Dgrad (BF16 out), Wgrad (FP32 dW, accumulate).
//   build/bench_grouped_gemm_cuda [results.json] [--no-v3]
#ifdef FRUGAL_HAVE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/cuda_timer.h"
#include "core/dtype.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/gemm/grouped_gemm_fp8_sm90.h"
#include "kernels/gemm/grouped_gemm_sm90.h"

using namespace frugal;
using cuda::DataType;
using cuda::DeviceBuffer;

namespace {

constexpr int kWarmup = 3;
constexpr int kSamples = 15;
constexpr double kMinSampleSeconds = 2e-3;
constexpr int64_t kPatternElements = int64_t{1} << 22;

// `count` elements of `pattern` repeated.
template <class T>
DeviceBuffer<T> repeated(const std::vector<T>& pattern, int64_t count) {
  DeviceBuffer<T> b(static_cast<size_t>(count));
  b.fill_repeating(pattern);
  return b;
}

DeviceBuffer<uint16_t> bf16_buffer(int64_t count) {
  static const std::vector<uint16_t> pattern = [] {
    std::mt19937 gen(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<uint16_t> p(kPatternElements);
    for (uint16_t& v : p) v = float_to_bf16_bits(normal(gen));
    return p;
  }();
  return repeated(pattern, count);
}

// Finite E4M3 codes (exponent field below 15: no NaN) and scales in [2^-8, 2^-6).
DeviceBuffer<uint8_t> fp8_codes(int64_t count) {
  static const std::vector<uint8_t> pattern = [] {
    std::mt19937 gen(13);
    std::vector<uint8_t> p(kPatternElements);
    for (uint8_t& v : p) v = static_cast<uint8_t>((gen() % 0x70) | (gen() & 0x80));
    return p;
  }();
  return repeated(pattern, count);
}
DeviceBuffer<float> fp8_scales(int64_t count) {
  static const std::vector<float> pattern = [] {
    std::mt19937 gen(17);
    std::uniform_real_distribution<float> u(1.0f / 256, 1.0f / 64);
    std::vector<float> p(1 << 16);
    for (float& v : p) v = u(gen);
    return p;
  }();
  return repeated(pattern, std::max<int64_t>(count, 1));
}

__nv_bfloat16* bf(uint16_t* p) { return reinterpret_cast<__nv_bfloat16*>(p); }

struct Bench {
  cudaStream_t stream = nullptr;
  cuda::BlasHandle blas;
  nlohmann::json rows = nlohmann::json::array();

  // Median seconds of one call (samples of back-to-back calls lasting >= kMinSampleSeconds).
  static double median_seconds(const std::function<void()>& op, cudaStream_t on) {
    return cuda::CudaTimer(on).median_us_batched(op, kSamples, kMinSampleSeconds * 1e6, kWarmup) *
           1e-6;
  }

  Bench() { FRUGAL_CUDA_CHECK(cudaStreamCreate(&stream)); }
  ~Bench() { cudaStreamDestroy(stream); }

  void record(const std::string& shape, const std::string& pass, int64_t m, int64_t n, int64_t k,
              const std::function<void()>& ours, const std::function<void()>& cublas,
              const std::function<void()>& dense) {
    const double flops = 2.0 * m * n * k;
    const double ours_s = median_seconds(ours, stream);
    const double cublas_s = median_seconds(cublas, stream);
    const double dense_s = median_seconds(dense, stream);
    auto tf = [&](double s) { return flops / s / 1e12; };
    std::printf("%-26s | %-5s | %6lldx%5lldx%5lld | %8.1f | %8.1f | %8.1f | %5.2f\n", shape.c_str(),
                pass.c_str(), static_cast<long long>(m), static_cast<long long>(n),
                static_cast<long long>(k), tf(ours_s), tf(cublas_s), tf(dense_s),
                cublas_s / ours_s);
    std::fflush(stdout);
    rows.push_back({{"shape", shape},          {"pass", pass},
                    {"m", m},                  {"n", n},
                    {"k", k},                  {"sm90_ms", ours_s * 1e3},
                    {"sm90_tflops", tf(ours_s)}, {"cublaslt_grouped_tflops", tf(cublas_s)},
                    {"dense_tflops", tf(dense_s)}});
  }

  // FP8 rows: two columns (sm90, cuBLASLt grouped), no dense one.
  void record_fp8(const std::string& shape, const std::string& pass, int64_t m, int64_t n,
                  int64_t k, const std::function<void()>& ours,
                  const std::function<void()>& cublas) {
    const double flops = 2.0 * m * n * k;
    const double ours_s = median_seconds(ours, stream);
    const double cublas_s = median_seconds(cublas, stream);
    auto tf = [&](double s) { return flops / s / 1e12; };
    std::printf("%-26s | %-5s | %6lldx%5lldx%5lld | %8.1f | %8.1f | %8s | %5.2f\n", shape.c_str(),
                pass.c_str(), static_cast<long long>(m), static_cast<long long>(n),
                static_cast<long long>(k), tf(ours_s), tf(cublas_s), "-", cublas_s / ours_s);
    std::fflush(stdout);
    rows.push_back({{"shape", shape},          {"pass", pass},
                    {"dtype", "fp8"},          {"m", m},
                    {"n", n},                  {"k", k},
                    {"sm90_ms", ours_s * 1e3}, {"sm90_tflops", tf(ours_s)},
                    {"cublaslt_grouped_tflops", tf(cublas_s)}});
  }

  // FP8 expert Linear W_g [N, K] over groups of `sizes` rows (multiples of 128).
  void experts_fp8(const std::string& shape, const std::vector<int64_t>& sizes, int64_t N,
                   int64_t K) {
    const int64_t groups = static_cast<int64_t>(sizes.size());
    std::vector<int64_t> offsets(groups + 1, 0);
    for (int64_t g = 0; g < groups; ++g) offsets[g + 1] = offsets[g] + sizes[g];
    const int64_t M = offsets.back();
    DeviceBuffer<int64_t> device_offsets(static_cast<size_t>(groups + 1));
    FRUGAL_CUDA_CHECK(cudaMemcpy(device_offsets.data(), offsets.data(),
                                 sizeof(int64_t) * (groups + 1), cudaMemcpyHostToDevice));
    // Fprop: x [M, K] · W_g [N, K]^T; Dgrad: dy [M, N] · (W_g^T [K, N])^T; Wgrad: dyT_g, xT_g.
    auto x = fp8_codes(M * K), dy = fp8_codes(M * N), dyT = fp8_codes(M * N);
    auto xT = fp8_codes(M * K), w = fp8_codes(groups * N * K), wT = fp8_codes(groups * N * K);
    auto x_s = fp8_scales(M * (K / 128)), dy_s = fp8_scales(M * (N / 128));
    auto w_s = fp8_scales(groups * (N / 128) * (K / 128));
    auto wT_s = fp8_scales(groups * (N / 128) * (K / 128));
    auto dyT_s = fp8_scales(M / 128 * N), xT_s = fp8_scales(M / 128 * K);
    DeviceBuffer<uint16_t> y(M * N), dx(M * K);
    DeviceBuffer<float> dw(static_cast<size_t>(groups * N * K));
    FRUGAL_CUDA_CHECK(cudaMemset(dw.data(), 0, dw.size() * sizeof(float)));
    const int64_t* host = offsets.data();
    record_fp8(
        shape, "Fprop", M, N, K,
        [&] {
          cuda::grouped_gemm_fp8_sm90_nt(groups, device_offsets.data(), M, N, K, x.data(),
                                         x_s.data(), w.data(), w_s.data(), bf(y.data()), stream);
        },
        [&] {
          cuda::grouped_gemm_fp8_nt(blas, groups, host, N, K, x.data(), x_s.data(), w.data(),
                                    w_s.data(), y.data(), DataType::BF16, stream);
        });
    record_fp8(
        shape, "Dgrad", M, K, N,
        [&] {
          cuda::grouped_gemm_fp8_sm90_nt(groups, device_offsets.data(), M, K, N, dy.data(),
                                         dy_s.data(), wT.data(), wT_s.data(), bf(dx.data()),
                                         stream);
        },
        [&] {
          cuda::grouped_gemm_fp8_nt(blas, groups, host, K, N, dy.data(), dy_s.data(), wT.data(),
                                    wT_s.data(), dx.data(), DataType::BF16, stream);
        });
    record_fp8(
        shape, "Wgrad", N, K, M,
        [&] {
          cuda::grouped_gemm_fp8_sm90_wgrad(groups, device_offsets.data(), M, N, K, dyT.data(),
                                            dyT_s.data(), xT.data(), xT_s.data(), dw.data(), true,
                                            stream);
        },
        [&] {
          cuda::grouped_gemm_fp8_wgrad(blas, groups, host, N, K, dyT.data(), dyT_s.data(),
                                       xT.data(), xT_s.data(), dw.data(), true, stream);
        });
  }

  // One expert Linear W_g [N, K] over groups of `sizes` rows.
  void experts(const std::string& shape, const std::vector<int64_t>& sizes, int64_t N, int64_t K) {
    const int64_t groups = static_cast<int64_t>(sizes.size());
    std::vector<int64_t> offsets(groups + 1, 0);
    for (int64_t g = 0; g < groups; ++g) offsets[g + 1] = offsets[g] + sizes[g];
    const int64_t M = offsets.back();
    DeviceBuffer<int64_t> device_offsets(static_cast<size_t>(groups + 1));
    FRUGAL_CUDA_CHECK(cudaMemcpy(device_offsets.data(), offsets.data(),
                                 sizeof(int64_t) * (groups + 1), cudaMemcpyHostToDevice));
    auto x = bf16_buffer(M * K), w = bf16_buffer(groups * N * K), dy = bf16_buffer(M * N);
    DeviceBuffer<uint16_t> y(M * N), dx(M * K);
    DeviceBuffer<float> dw(static_cast<size_t>(groups * N * K));
    FRUGAL_CUDA_CHECK(cudaMemset(dw.data(), 0, dw.size() * sizeof(float)));
    const int64_t* host = offsets.data();
    record(
        shape, "Fprop", M, N, K,
        [&] {
          cuda::grouped_gemm_sm90_nt(groups, device_offsets.data(), M, N, K, bf(x.data()),
                                     bf(w.data()), bf(y.data()), stream);
        },
        [&] {
          cuda::grouped_gemm_nt(blas, groups, host, N, K, x.data(), w.data(), DataType::BF16,
                                y.data(), DataType::BF16, stream);
        },
        [&] {
          cuda::gemm(blas, false, true, M, N, K, 1.0f, x.data(), K, w.data(), K, DataType::BF16,
                     0.0f, y.data(), N, DataType::BF16, stream);
        });
    record(
        shape, "Dgrad", M, K, N,
        [&] {
          cuda::grouped_gemm_sm90_nn(groups, device_offsets.data(), M, N, K, bf(dy.data()),
                                     bf(w.data()), bf(dx.data()), stream);
        },
        [&] {
          cuda::grouped_gemm_nn(blas, groups, host, N, K, dy.data(), w.data(), DataType::BF16,
                                dx.data(), DataType::BF16, stream);
        },
        [&] {
          cuda::gemm(blas, false, false, M, K, N, 1.0f, dy.data(), N, w.data(), K,
                     DataType::BF16, 0.0f, dx.data(), K, DataType::BF16, stream);
        });
    record(
        shape, "Wgrad", N, K, M,
        [&] {
          cuda::grouped_gemm_sm90_tn(groups, device_offsets.data(), M, N, K, bf(dy.data()),
                                     bf(x.data()), dw.data(), true, stream);
        },
        [&] {
          cuda::grouped_gemm_tn(blas, groups, host, N, K, dy.data(), x.data(), DataType::BF16,
                                dw.data(), DataType::F32, true, stream);
        },
        [&] {
          cuda::gemm(blas, true, false, N, K, M, 1.0f, dy.data(), N, x.data(), K, DataType::BF16,
                     1.0f, dw.data(), K, DataType::F32, stream);
        });
  }
};

std::vector<int64_t> equal_sizes(int64_t groups, int64_t rows) {
  return std::vector<int64_t>(static_cast<size_t>(groups), rows);
}

// Sizes from 0.25x to 1.75x of `rows`, same total, in a shuffled order.
std::vector<int64_t> uneven_sizes(int64_t groups, int64_t rows) {
  std::vector<int64_t> sizes(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) sizes[g] = rows / 4 + (rows * 3 / 2) * g / (groups - 1);
  std::mt19937 gen(11);
  std::shuffle(sizes.begin(), sizes.end(), gen);
  return sizes;
}

// uneven_sizes rounded down to multiples of 128 (the FP8 groups).
std::vector<int64_t> uneven_sizes_128(int64_t groups, int64_t rows) {
  std::vector<int64_t> sizes = uneven_sizes(groups, rows);
  for (int64_t& s : sizes) s = s / 128 * 128;
  return sizes;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    cudaDeviceProp prop{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s\n", prop.name);
    if (!cuda::grouped_gemm_sm90_supported(128, 128)) {
      std::printf("grouped_gemm_sm90 needs an sm_90 device\n");
      return 1;
    }
    std::printf("%-26s | %-5s | %-20s | %8s | %8s | %8s | %5s\n", "shape", "pass", "GEMM MxNxK",
                "sm90 TF", "cuBLASLt", "dense", "ratio");
    Bench bench;
    bench.experts("1b gate/up 64x3072", equal_sizes(64, 3072), 768, 1024);
    bench.experts("1b down 64x3072", equal_sizes(64, 3072), 1024, 384);
    bench.experts("1b gate/up 64 uneven", uneven_sizes(64, 3072), 768, 1024);
    bench.experts("1b down 64 uneven", uneven_sizes(64, 3072), 1024, 384);
    if (cuda::grouped_gemm_fp8_sm90_supported(768, 1024)) {
      bench.experts_fp8("fp8 1b gate/up 64x3072", equal_sizes(64, 3072), 768, 1024);
      bench.experts_fp8("fp8 1b down 64x3072", equal_sizes(64, 3072), 1024, 384);
      bench.experts_fp8("fp8 1b gate/up 64 uneven", uneven_sizes_128(64, 3072), 768, 1024);
      bench.experts_fp8("fp8 1b down 64 uneven", uneven_sizes_128(64, 3072), 1024, 384);
    }
    const bool v3 = !(argc > 2 && std::string(argv[2]) == "--no-v3");  // [results.json] [--no-v3]
    if (v3) {
      bench.experts("V3 gate/up 32x2048", equal_sizes(32, 2048), 4096, 7168);
      bench.experts("V3 down 32x2048", equal_sizes(32, 2048), 7168, 2048);
    }
    if (argc > 1) {
      nlohmann::json out = {{"device", prop.name},
                            {"warmup", kWarmup},
                            {"samples", kSamples},
                            {"rows", bench.rows}};
      std::ofstream(argv[1]) << out.dump(2) << "\n";
      std::printf("wrote %s\n", argv[1]);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_grouped_gemm_cuda: %s\n", e.what());
    return 1;
  }
}

#else

#include <cstdio>

int main() {
  std::fprintf(stderr,
               "bench_grouped_gemm_cuda: this build has no CUDA backend (configure with "
               "-DFRUGAL_CUDA=ON on a machine with nvcc)\n");
  return 1;
}

#endif
