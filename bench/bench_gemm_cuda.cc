// GEMM throughput on the GPU: TFLOP/s of the Linear layers' three GEMMs (Fprop y = x W^T, Dgrad
// dx = dy W, Wgrad dW += dy^T x) in BF16 and block-scaled FP8, through frugal's cuBLASLt wrappers
// (gemm_cuda.h, with their plan cache) and, next to them, the same GEMM as a plain cuBLASLt call
// written here (own descriptors, the heuristic's first algorithm, no alignment hints). Shapes:
//   DeepSeek-V3 (spec §1.7) at M = 4096 tokens: q_a+kv_a, q_b, kv_b, o_proj, dense gate/up and
//     down, expert gate+up and down; the output head in BF16 only (it stays BF16 in the recipe).
//   bench-1b (configs/bench-1b.toml) at M = 8 x 4096 tokens: every Linear of the model.
//   bench-1b's routed experts as grouped GEMMs: 64 experts x 3072 rows (32768 tokens x 6 / 64),
//     gate/up [384,1024] and down [1024,384]; frugal's grouped call, a plain loop of direct calls,
//     and one dense GEMM over all 196608 rows (frugal) as the ceiling.
// BF16: inputs BF16, Fprop/Dgrad write BF16, Wgrad accumulates into FP32 (beta 1). FP8: E4M3 codes
// with 1x128 tile scales (activations, gradients, and Wgrad's transposed operands) and 128x128
// block scales (weights), FP32 accumulation, BF16 out (Wgrad: FP32, beta 1). Inputs are random;
// their values do not matter for timing.
// Timing: cudaEvent around `inner` back-to-back calls (inner chosen so one sample takes >= 2 ms),
// 3 warm-up calls, median of 15 samples. FLOPs = 2 M N K.
//   build/bench_gemm_cuda [results.json]
#ifdef FRUGAL_HAVE_CUDA

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/cuda_timer.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/quant/quant.h"

using namespace frugal;
using cuda::DataType;
using cuda::DeviceBuffer;

namespace {

constexpr int kWarmup = 3;
constexpr int kSamples = 15;
constexpr double kMinSampleSeconds = 2e-3;
constexpr size_t kWorkspaceBytes = size_t{64} << 20;  // the same as BlasHandle's default
constexpr int64_t kPatternElements = int64_t{1} << 22;

// ---- Device data
// ---------------------------------------------------------------------------------

struct Patterns {
  std::vector<uint16_t> bf16;
  std::vector<float> f32;
  std::vector<uint8_t> e4m3;
  std::vector<float> scales;
  Patterns() : bf16(kPatternElements), f32(kPatternElements), e4m3(kPatternElements), scales(4096) {
    std::mt19937 gen(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t i = 0; i < kPatternElements; ++i) {
      const float v = normal(gen);
      bf16[i] = float_to_bf16_bits(v);
      f32[i] = v * 0.01f;
      e4m3[i] = float_to_e4m3_bits(v * 100.0f);
    }
    std::uniform_real_distribution<float> uniform(0.5f, 2.0f);
    for (float& s : scales) s = uniform(gen) / 448.0f;
  }
};

const Patterns& patterns() {
  static const Patterns p;
  return p;
}

DeviceBuffer<uint16_t> bf16_buffer(int64_t count) {
  DeviceBuffer<uint16_t> b(static_cast<size_t>(count));
  b.fill_repeating(patterns().bf16);
  return b;
}
DeviceBuffer<float> f32_buffer(int64_t count) {
  DeviceBuffer<float> b(static_cast<size_t>(count));
  b.fill_repeating(patterns().f32);
  return b;
}

// E4M3 codes [rows, cols] with 1x128 tile scales or 128x128 block scales (block scales allocated
// with K blocks padded to 4, so that the direct cuBLASLt call can read its layout in bounds).
struct Fp8Matrix {
  DeviceBuffer<uint8_t> codes;
  DeviceBuffer<float> scales;
  Fp8Matrix(int64_t rows, int64_t cols, bool blocks, int64_t matrices = 1)
      : codes(static_cast<size_t>(matrices * rows * cols)),
        scales(static_cast<size_t>(blocks ? matrices * fp8_block_count(rows) *
                                                ((fp8_block_count(cols) + 3) / 4 * 4)
                                          : matrices * fp8_block_count(cols) * rows)) {
    codes.fill_repeating(patterns().e4m3);
    scales.fill_repeating(patterns().scales);
  }
};

// ---- A plain cuBLASLt call, written out here ----------------------------------------------------

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("bench_gemm_cuda: ") + what +
                " failed: " + cublasLtGetStatusName(status));
}

// Column-major D[m,n] = op(A) op(B) + beta D with the heuristic's first algorithm.
class DirectGemm {
 public:
  struct Spec {
    cudaDataType_t ab_type, c_type;
    cublasOperation_t transa, transb;
    int64_t m, n, k, lda, ldb, ldc;
    int a_scale_mode = -1, b_scale_mode = -1;
  };
  DirectGemm(cublasLtHandle_t handle, void* workspace, const Spec& spec)
      : handle_(handle), workspace_(workspace) {
    check(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
    check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &spec.transa,
                                         sizeof spec.transa),
          "TRANSA");
    check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &spec.transb,
                                         sizeof spec.transb),
          "TRANSB");
    if (spec.a_scale_mode >= 0) {
      const int32_t mode = spec.a_scale_mode;
      check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode,
                                           sizeof mode),
            "A_SCALE_MODE");
    }
    if (spec.b_scale_mode >= 0) {
      const int32_t mode = spec.b_scale_mode;
      check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode,
                                           sizeof mode),
            "B_SCALE_MODE");
    }
    const bool ta = spec.transa == CUBLAS_OP_T, tb = spec.transb == CUBLAS_OP_T;
    check(cublasLtMatrixLayoutCreate(&a_, spec.ab_type, ta ? spec.k : spec.m, ta ? spec.m : spec.k,
                                     spec.lda),
          "layout A");
    check(cublasLtMatrixLayoutCreate(&b_, spec.ab_type, tb ? spec.n : spec.k, tb ? spec.k : spec.n,
                                     spec.ldb),
          "layout B");
    check(cublasLtMatrixLayoutCreate(&c_, spec.c_type, spec.m, spec.n, spec.ldc), "layout C");
  }
  ~DirectGemm() {
    cublasLtMatrixLayoutDestroy(a_);
    cublasLtMatrixLayoutDestroy(b_);
    cublasLtMatrixLayoutDestroy(c_);
    cublasLtMatmulDescDestroy(desc_);
  }
  DirectGemm(const DirectGemm&) = delete;
  DirectGemm& operator=(const DirectGemm&) = delete;

  void run(const void* a, const void* b, void* c, float beta, cudaStream_t stream,
           const float* a_scales = nullptr, const float* b_scales = nullptr) {
    if (a_scales != nullptr)
      check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scales,
                                           sizeof a_scales),
            "A_SCALE_POINTER");
    if (b_scales != nullptr)
      check(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scales,
                                           sizeof b_scales),
            "B_SCALE_POINTER");
    // The heuristic runs once, after the scale pointers are set: block scaling needs them.
    if (!have_algo_) {
      choose_algo();
      have_algo_ = true;
    }
    const float alpha = 1.0f;
    check(cublasLtMatmul(handle_, desc_, &alpha, a, a_, b, b_, &beta, c, c_, c, c_, &algo_,
                         workspace_, kWorkspaceBytes, stream),
          "Matmul");
  }

 private:
  void choose_algo() {
    cublasLtMatmulPreference_t preference = nullptr;
    check(cublasLtMatmulPreferenceCreate(&preference), "PreferenceCreate");
    const uint64_t bytes = kWorkspaceBytes;
    check(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                               &bytes, sizeof bytes),
          "MAX_WORKSPACE_BYTES");
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    check(cublasLtMatmulAlgoGetHeuristic(handle_, desc_, a_, b_, c_, c_, preference, 1, &result,
                                         &returned),
          "AlgoGetHeuristic");
    cublasLtMatmulPreferenceDestroy(preference);
    if (returned == 0) throw Error("bench_gemm_cuda: cuBLASLt heuristic returned no algorithm");
    algo_ = result.algo;
  }

  bool have_algo_ = false;
  cublasLtHandle_t handle_;
  void* workspace_;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

// Row-major C[M,N] = op(A) op(B) in cuBLASLt's column-major terms (operands swapped).
DirectGemm::Spec bf16_spec(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           cudaDataType_t c_type) {
  return {CUDA_R_16BF,
          c_type,
          trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
          trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
          n,
          m,
          k,
          trans_b ? k : n,
          trans_a ? m : k,
          n};
}
// Row-major C[M,N] = A[M,K] B[N,K]^T with E4M3 operands: cuBLASLt's A = B (TRANSA=T), B = A.
DirectGemm::Spec fp8_spec(int64_t m, int64_t n, int64_t k, bool b_blocks, cudaDataType_t c_type) {
  return {CUDA_R_8F_E4M3,
          c_type,
          CUBLAS_OP_T,
          CUBLAS_OP_N,
          n,
          m,
          k,
          k,
          k,
          n,
          b_blocks ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                   : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
          CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F};
}

// ---- The benchmark -----------------------------------------------------------------------------

struct Bench {
  cudaStream_t stream = nullptr;
  cuda::BlasHandle blas;
  cublasLtHandle_t direct_handle = nullptr;
  DeviceBuffer<uint8_t> direct_workspace{kWorkspaceBytes};
  nlohmann::json rows = nlohmann::json::array();

  // Median seconds of one call (samples of back-to-back calls lasting >= kMinSampleSeconds).
  static double median_seconds(const std::function<void()>& op, cudaStream_t on) {
    return cuda::CudaTimer(on).median_us_batched(op, kSamples, kMinSampleSeconds * 1e6, kWarmup) *
           1e-6;
  }

  Bench() {
    FRUGAL_CUDA_CHECK(cudaStreamCreate(&stream));
    check(cublasLtCreate(&direct_handle), "cublasLtCreate");
  }
  ~Bench() {
    cublasLtDestroy(direct_handle);
    cudaStreamDestroy(stream);
  }

  // Times `ours` and `direct` (either may be empty) and `dense` (grouped rows: frugal's single
  // GEMM over all rows), prints a table row, records JSON.
  void record(const std::string& group, const std::string& layer, const std::string& pass,
              const std::string& precision, int64_t m, int64_t n, int64_t k,
              const std::function<void()>& ours, const std::function<void()>& direct,
              const std::function<void()>& dense = {}) {
    const double flops = 2.0 * m * n * k;
    const double ours_s = median_seconds(ours, stream);
    const double direct_s = direct ? median_seconds(direct, stream) : 0.0;
    const double dense_s = dense ? median_seconds(dense, stream) : 0.0;
    auto tf = [&](double s) { return s > 0 ? flops / s / 1e12 : 0.0; };
    char dims[64];
    std::snprintf(dims, sizeof dims, "%lldx%lldx%lld", static_cast<long long>(m),
                  static_cast<long long>(n), static_cast<long long>(k));
    std::printf("%-14s | %-16s | %-5s | %-4s | %-20s | %8.1f | %8.1f | %5.2f", group.c_str(),
                layer.c_str(), pass.c_str(), precision.c_str(), dims, tf(ours_s), tf(direct_s),
                direct_s > 0 ? direct_s / ours_s : 0.0);
    if (dense) std::printf(" | dense %8.1f", tf(dense_s));
    std::printf("\n");
    std::fflush(stdout);
    nlohmann::json row = {{"group", group},
                          {"layer", layer},
                          {"pass", pass},
                          {"precision", precision},
                          {"m", m},
                          {"n", n},
                          {"k", k},
                          {"ours_ms", ours_s * 1e3},
                          {"ours_tflops", tf(ours_s)}};
    if (direct) {
      row["direct_ms"] = direct_s * 1e3;
      row["direct_tflops"] = tf(direct_s);
    }
    if (dense) {
      row["dense_ms"] = dense_s * 1e3;
      row["dense_tflops"] = tf(dense_s);
    }
    rows.push_back(row);
  }

  // One Linear layer y[M,N] = x[M,K] W[N,K]^T: Fprop, Dgrad, Wgrad in BF16 (and FP8 if asked).
  void linear(const std::string& group, const std::string& layer, int64_t M, int64_t N, int64_t K,
              bool fp8) {
    {
      auto x = bf16_buffer(M * K), w = bf16_buffer(N * K), dy = bf16_buffer(M * N);
      DeviceBuffer<uint16_t> y(M * N), dx(M * K);
      auto dw = f32_buffer(N * K);
      DirectGemm fprop(direct_handle, direct_workspace.data(),
                       bf16_spec(false, true, M, N, K, CUDA_R_16BF));
      DirectGemm dgrad(direct_handle, direct_workspace.data(),
                       bf16_spec(false, false, M, K, N, CUDA_R_16BF));
      DirectGemm wgrad(direct_handle, direct_workspace.data(),
                       bf16_spec(true, false, N, K, M, CUDA_R_32F));
      record(
          group, layer, "Fprop", "BF16", M, N, K,
          [&] {
            cuda::gemm(blas, false, true, M, N, K, 1.0f, x.data(), K, w.data(), K, DataType::BF16,
                       0.0f, y.data(), N, DataType::BF16, stream);
          },
          [&] { fprop.run(w.data(), x.data(), y.data(), 0.0f, stream); });
      record(
          group, layer, "Dgrad", "BF16", M, K, N,
          [&] {
            cuda::gemm(blas, false, false, M, K, N, 1.0f, dy.data(), N, w.data(), K, DataType::BF16,
                       0.0f, dx.data(), K, DataType::BF16, stream);
          },
          [&] { dgrad.run(w.data(), dy.data(), dx.data(), 0.0f, stream); });
      record(
          group, layer, "Wgrad", "BF16", N, K, M,
          [&] {
            cuda::gemm(blas, true, false, N, K, M, 1.0f, dy.data(), N, x.data(), K, DataType::BF16,
                       1.0f, dw.data(), K, DataType::F32, stream);
          },
          [&] { wgrad.run(x.data(), dy.data(), dw.data(), 1.0f, stream); });
    }
    if (!fp8) return;
    Fp8Matrix x(M, K, false), w(N, K, true), wT(K, N, true), dy(M, N, false), dyT(N, M, false),
        xT(K, M, false);
    DeviceBuffer<uint16_t> y(M * N), dx(M * K);
    auto dw = f32_buffer(N * K);
    // The plain calls are made without the library's alignment hints; where cuBLASLt's heuristic
    // refuses one, its column stays empty (reported once per layer) instead of ending the run.
    auto make_direct = [&](const char* pass, const DirectGemm::Spec& spec) {
      try {
        return std::make_unique<DirectGemm>(direct_handle, direct_workspace.data(), spec);
      } catch (const Error& e) {
        std::printf("  (%s %s FP8: no plain cuBLASLt column: %s)\n", layer.c_str(), pass, e.what());
        return std::unique_ptr<DirectGemm>();
      }
    };
    auto fprop = make_direct("Fprop", fp8_spec(M, N, K, true, CUDA_R_16BF));
    auto dgrad = make_direct("Dgrad", fp8_spec(M, K, N, true, CUDA_R_16BF));
    auto wgrad = make_direct("Wgrad", fp8_spec(N, K, M, false, CUDA_R_32F));
    record(
        group, layer, "Fprop", "FP8", M, N, K,
        [&] {
          cuda::gemm_fp8_nt(blas, M, N, K, x.codes.data(), x.scales.data(), w.codes.data(),
                            w.scales.data(), cuda::Fp8Scaling::Block128x128, 0.0f, y.data(), N,
                            DataType::BF16, stream);
        },
        !fprop ? std::function<void()>() : [&] {
          fprop->run(w.codes.data(), x.codes.data(), y.data(), 0.0f, stream, w.scales.data(),
                    x.scales.data());
        });
    record(
        group, layer, "Dgrad", "FP8", M, K, N,
        [&] {
          cuda::gemm_fp8_nt(blas, M, K, N, dy.codes.data(), dy.scales.data(), wT.codes.data(),
                            wT.scales.data(), cuda::Fp8Scaling::Block128x128, 0.0f, dx.data(), K,
                            DataType::BF16, stream);
        },
        !dgrad ? std::function<void()>() : [&] {
          dgrad->run(wT.codes.data(), dy.codes.data(), dx.data(), 0.0f, stream, wT.scales.data(),
                    dy.scales.data());
        });
    record(
        group, layer, "Wgrad", "FP8", N, K, M,
        [&] {
          cuda::gemm_fp8_nt(blas, N, K, M, dyT.codes.data(), dyT.scales.data(), xT.codes.data(),
                            xT.scales.data(), cuda::Fp8Scaling::Tile1x128, 1.0f, dw.data(), K,
                            DataType::F32, stream);
        },
        !wgrad ? std::function<void()>() : [&] {
          wgrad->run(xT.codes.data(), dyT.codes.data(), dw.data(), 1.0f, stream, xT.scales.data(),
                    dyT.scales.data());
        });
  }

  // Routed experts: `experts` groups of `rows` rows each, weights [N,K] per expert.
  void experts(const std::string& group, const std::string& layer, int64_t experts, int64_t rows,
               int64_t N, int64_t K) {
    const int64_t total = experts * rows;
    std::vector<int64_t> offsets(experts + 1);
    for (int64_t g = 0; g <= experts; ++g) offsets[g] = g * rows;
    {
      auto x = bf16_buffer(total * K), w = bf16_buffer(experts * N * K),
           dy = bf16_buffer(total * N);
      DeviceBuffer<uint16_t> y(total * N), dx(total * K);
      auto dw = f32_buffer(experts * N * K);
      DirectGemm fprop(direct_handle, direct_workspace.data(),
                       bf16_spec(false, true, rows, N, K, CUDA_R_16BF));
      DirectGemm dgrad(direct_handle, direct_workspace.data(),
                       bf16_spec(false, false, rows, K, N, CUDA_R_16BF));
      DirectGemm wgrad(direct_handle, direct_workspace.data(),
                       bf16_spec(true, false, N, K, rows, CUDA_R_32F));
      record(
          group, layer, "Fprop", "BF16", total, N, K,
          [&] {
            cuda::grouped_gemm_nt(blas, experts, offsets.data(), N, K, x.data(), w.data(),
                                  DataType::BF16, y.data(), DataType::BF16, stream);
          },
          [&] {
            for (int64_t g = 0; g < experts; ++g)
              fprop.run(w.data() + g * N * K, x.data() + g * rows * K, y.data() + g * rows * N,
                        0.0f, stream);
          },
          [&] {
            cuda::gemm(blas, false, true, total, N, K, 1.0f, x.data(), K, w.data(), K,
                       DataType::BF16, 0.0f, y.data(), N, DataType::BF16, stream);
          });
      record(
          group, layer, "Dgrad", "BF16", total, K, N,
          [&] {
            cuda::grouped_gemm_nn(blas, experts, offsets.data(), N, K, dy.data(), w.data(),
                                  DataType::BF16, dx.data(), DataType::BF16, stream);
          },
          [&] {
            for (int64_t g = 0; g < experts; ++g)
              dgrad.run(w.data() + g * N * K, dy.data() + g * rows * N, dx.data() + g * rows * K,
                        0.0f, stream);
          },
          [&] {
            cuda::gemm(blas, false, false, total, K, N, 1.0f, dy.data(), N, w.data(), K,
                       DataType::BF16, 0.0f, dx.data(), K, DataType::BF16, stream);
          });
      record(
          group, layer, "Wgrad", "BF16", N, K, total,
          [&] {
            cuda::grouped_gemm_tn(blas, experts, offsets.data(), N, K, dy.data(), x.data(),
                                  DataType::BF16, dw.data(), DataType::F32, true, stream);
          },
          [&] {
            for (int64_t g = 0; g < experts; ++g)
              wgrad.run(x.data() + g * rows * K, dy.data() + g * rows * N, dw.data() + g * N * K,
                        1.0f, stream);
          },
          [&] {
            cuda::gemm(blas, true, false, N, K, total, 1.0f, dy.data(), N, x.data(), K,
                       DataType::BF16, 1.0f, dw.data(), K, DataType::F32, stream);
          });
    }
    const int64_t k_blocks = fp8_block_count(K), n_blocks = fp8_block_count(N);
    const int64_t padded_k_blocks = (k_blocks + 3) / 4 * 4;
    const int64_t padded_n_blocks = (n_blocks + 3) / 4 * 4;
    Fp8Matrix x(total, K, false), dy(total, N, false), dyT(N, total, false), xT(K, total, false);
    Fp8Matrix w(N, K, true, experts), wT(K, N, true, experts);
    DeviceBuffer<uint16_t> y(total * N), dx(total * K);
    auto dw = f32_buffer(experts * N * K);
    DirectGemm fprop(direct_handle, direct_workspace.data(),
                     fp8_spec(rows, N, K, true, CUDA_R_16BF));
    DirectGemm dgrad(direct_handle, direct_workspace.data(),
                     fp8_spec(rows, K, N, true, CUDA_R_16BF));
    DirectGemm wgrad(direct_handle, direct_workspace.data(),
                     fp8_spec(N, K, rows, false, CUDA_R_32F));
    // The grouped FP8 calls cover Fprop and (with W^T) Dgrad: grouped_gemm_fp8_nt.
    record(
        group, layer, "Fprop", "FP8", total, N, K,
        [&] {
          cuda::grouped_gemm_fp8_nt(blas, experts, offsets.data(), N, K, x.codes.data(),
                                    x.scales.data(), w.codes.data(), w.scales.data(), y.data(),
                                    DataType::BF16, stream);
        },
        [&] {
          for (int64_t g = 0; g < experts; ++g)
            fprop.run(w.codes.data() + g * N * K, x.codes.data() + g * rows * K,
                      y.data() + g * rows * N, 0.0f, stream,
                      w.scales.data() + g * fp8_block_count(N) * padded_k_blocks,
                      x.scales.data() + g * rows * k_blocks);
        },
        [&] {
          cuda::gemm_fp8_nt(blas, total, N, K, x.codes.data(), x.scales.data(), w.codes.data(),
                            w.scales.data(), cuda::Fp8Scaling::Block128x128, 0.0f, y.data(), N,
                            DataType::BF16, stream);
        });
    record(
        group, layer, "Dgrad", "FP8", total, K, N,
        [&] {
          cuda::grouped_gemm_fp8_nt(blas, experts, offsets.data(), K, N, dy.codes.data(),
                                    dy.scales.data(), wT.codes.data(), wT.scales.data(), dx.data(),
                                    DataType::BF16, stream);
        },
        [&] {
          for (int64_t g = 0; g < experts; ++g)
            dgrad.run(wT.codes.data() + g * N * K, dy.codes.data() + g * rows * N,
                      dx.data() + g * rows * K, 0.0f, stream,
                      wT.scales.data() + g * fp8_block_count(K) * padded_n_blocks,
                      dy.scales.data() + g * rows * n_blocks);
        },
        [&] {
          cuda::gemm_fp8_nt(blas, total, K, N, dy.codes.data(), dy.scales.data(), wT.codes.data(),
                            wT.scales.data(), cuda::Fp8Scaling::Block128x128, 0.0f, dx.data(), K,
                            DataType::BF16, stream);
        });
    record(
        group, layer, "Wgrad", "FP8", N, K, total,
        [&] {
          cuda::grouped_gemm_fp8_wgrad(blas, experts, offsets.data(), N, K, dyT.codes.data(),
                                       dyT.scales.data(), xT.codes.data(), xT.scales.data(),
                                       dw.data(), true, stream);
        },
        [&] {
          for (int64_t g = 0; g < experts; ++g)
            wgrad.run(xT.codes.data() + g * rows * K, dyT.codes.data() + g * rows * N,
                      dw.data() + g * N * K, 1.0f, stream, xT.scales.data() + g * (rows / 128) * K,
                      dyT.scales.data() + g * (rows / 128) * N);
        },
        [&] {
          cuda::gemm_fp8_nt(blas, N, K, total, dyT.codes.data(), dyT.scales.data(), xT.codes.data(),
                            xT.scales.data(), cuda::Fp8Scaling::Tile1x128, 1.0f, dw.data(), K,
                            DataType::F32, stream);
        });
  }
};

struct LinearShape {
  const char* name;
  int64_t n, k;
  bool fp8;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    cudaDeviceProp prop{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, cuBLASLt %zu\n", prop.name, cublasLtGetVersion());
    std::printf("%-14s | %-16s | %-5s | %-4s | %-20s | %8s | %8s | %5s\n", "group", "layer", "pass",
                "prec", "GEMM MxNxK", "ours TF", "cuBLASLt", "ratio");
    Bench bench;

    const int64_t v3_tokens = 4096;
    const LinearShape v3[] = {
        {"q_a+kv_a", 2112, 7168, true},       {"q_b", 24576, 1536, true},
        {"kv_b", 32768, 512, true},           {"o_proj", 7168, 16384, true},
        {"dense gate/up", 18432, 7168, true}, {"dense down", 7168, 18432, true},
        {"expert gate+up", 4096, 7168, true}, {"expert down", 7168, 2048, true},
        {"head", 129280, 7168, false}};
    for (const LinearShape& s : v3) bench.linear("V3 M=4096", s.name, v3_tokens, s.n, s.k, s.fp8);

    const int64_t tokens = 8 * 4096;
    const LinearShape b1[] = {{"q_a", 512, 1024, true},         {"kv_a", 320, 1024, true},
                              {"q_b", 3072, 512, true},         {"kv_b", 4096, 256, true},
                              {"o_proj", 1024, 2048, true},     {"dense gate/up", 2816, 1024, true},
                              {"dense down", 1024, 2816, true}, {"shared gate/up", 384, 1024, true},
                              {"shared down", 1024, 384, true}, {"head", 32768, 1024, false}};
    for (const LinearShape& s : b1) bench.linear("1b M=32768", s.name, tokens, s.n, s.k, s.fp8);

    const int64_t experts = 64, rows = tokens * 6 / experts;
    bench.experts("1b experts", "gate/up x64", experts, rows, 384, 1024);
    bench.experts("1b experts", "down x64", experts, rows, 1024, 384);

    if (argc > 1) {
      nlohmann::json out = {{"device", prop.name},
                            {"cublaslt_version", cublasLtGetVersion()},
                            {"warmup", kWarmup},
                            {"samples", kSamples},
                            {"rows", bench.rows}};
      std::ofstream(argv[1]) << out.dump(2) << "\n";
      std::printf("wrote %s\n", argv[1]);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gemm_cuda: %s\n", e.what());
    return 1;
  }
}

#else  // no CUDA backend in this build

#include <cstdio>

int main() {
  std::fprintf(stderr,
               "bench_gemm_cuda: this build has no CUDA backend (configure with "
               "-DFRUGAL_CUDA=ON on a machine with nvcc)\n");
  return 1;
}

#endif
