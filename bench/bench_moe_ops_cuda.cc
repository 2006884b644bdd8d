// Bandwidth of the MoE token shuffling, cross-entropy and embedding CUDA ops at bench-1b sizes:
// 32768 tokens, hidden 1024, 64 experts top-6, vocab 32768 (bf16 and fp32 activations). Each op
// is timed with CUDA events (median of 20 runs after 3 warm-ups) and its GB/s counts the bytes it
// must move at least; a device-to-device copy of 256 MiB gives the ceiling. Router and permutation
// build times are listed too (their byte counts are small). Prints a table; writes JSON to
// argv[1] when given.
//   build/bench_moe_ops_cuda [results.json]
#if defined(FRUGAL_HAVE_CUDA)

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bandwidth_report.h"
#include "core/cuda_check.h"
#include "core/cuda_timer.h"
#include "core/error.h"
#include "kernels/embedding/embedding_cuda.h"
#include "kernels/moe/moe_cuda.h"
#include "kernels/xent/xent_cuda.h"

using namespace frugal;
using bench::BandwidthReport;
using bench::fill_normal;

namespace {

constexpr int64_t kTokens = 32768, kHidden = 1024, kExperts = 64, kTopK = 6, kVocab = 32768;
constexpr int kReps = 20;


// Routing of the bench: logits -> router -> permutation, on the device (shared by both dtypes).
struct Routing {
  cuda::DeviceBuffer<float> logits, scores, weights;
  cuda::DeviceBuffer<int32_t> topk_idx, assignment_row, row_assignment;
  cuda::DeviceBuffer<int64_t> offsets, counts;
  cuda::DeviceBuffer<uint8_t> workspace;
  int64_t padded_rows = 0;
};

template <class T>
void time_row_ops(BandwidthReport& report, cuda::CudaTimer& timer, cudaStream_t stream, Routing& r, const char* dtype) {
  const int64_t n = kTokens * kTopK, s = sizeof(T), rows = r.padded_rows;
  const std::string shape = std::to_string(kTokens) + "x" + std::to_string(kHidden) + " K" +
                            std::to_string(kTopK);
  cuda::DeviceBuffer<T> x(kTokens * kHidden), xp(rows * kHidden), y(kTokens * kHidden),
      dxp(rows * kHidden);
  cuda::DeviceBuffer<float> dweights(n);
  fill_normal(x.data(), kTokens * kHidden * s / 4, 1);
  fill_normal(dxp.data(), rows * kHidden * s / 4, 2);
  const double token_bytes = double(kTokens * kHidden * s), row_bytes = double(n * kHidden * s);
  report.add("permute_rows", dtype, shape, timer.median_us([&] {
    cuda::permute_rows(xp.data(), x.data(), r.row_assignment.data(), rows, kTopK, kHidden, stream);
  }, kReps), 2 * row_bytes);
  report.add("unpermute_sum", dtype, shape, timer.median_us([&] {
    cuda::unpermute_sum(y.data(), dxp.data(), r.assignment_row.data(), kTokens, kTopK, kHidden,
                        false, stream);
  }, kReps), row_bytes + token_bytes);
  report.add("combine_fwd", dtype, shape, timer.median_us([&] {
    cuda::combine_fwd(y.data(), dxp.data(), r.weights.data(), r.assignment_row.data(), kTokens,
                      kTopK, kHidden, false, stream);
  }, kReps), row_bytes + token_bytes);
  report.add("combine_fwd +=", dtype, shape, timer.median_us([&] {
    cuda::combine_fwd(y.data(), dxp.data(), r.weights.data(), r.assignment_row.data(), kTokens,
                      kTopK, kHidden, true, stream);
  }, kReps), row_bytes + 2 * token_bytes);
  report.add("combine_bwd", dtype, shape, timer.median_us([&] {
    cuda::combine_bwd(xp.data(), dweights.data(), x.data(), dxp.data(), r.weights.data(),
                      r.assignment_row.data(), r.row_assignment.data(), rows, kTokens, kTopK,
                      kHidden, stream);
  }, kReps), 2 * row_bytes + token_bytes);
}

template <class T>
void time_xent_embedding(BandwidthReport& report, cuda::CudaTimer& timer, cudaStream_t stream, const char* dtype) {
  const int64_t s = sizeof(T);
  const std::string xent_shape = std::to_string(kTokens) + "x" + std::to_string(kVocab);
  cuda::DeviceBuffer<T> logits(kTokens * kVocab);
  cuda::DeviceBuffer<float> losses(kTokens), scale(1);
  cuda::DeviceBuffer<double> loss_sum(1);
  cuda::DeviceBuffer<int64_t> valid(1);
  cuda::DeviceBuffer<int32_t> ids(kTokens);
  fill_normal(logits.data(), kTokens * kVocab * s / 4, 3);
  std::mt19937_64 gen(4);
  std::vector<int32_t> host_ids(kTokens);
  for (int32_t& id : host_ids) id = static_cast<int32_t>(gen() % kVocab);
  ids.upload(host_ids);
  const std::vector<float> host_scale = {1.0f / kTokens};
  scale.upload(host_scale);
  const double logit_bytes = double(kTokens * kVocab * s);
  report.add("xent_fwd", dtype, xent_shape, timer.median_us([&] {
    cuda::xent_fwd(losses.data(), loss_sum.data(), valid.data(), logits.data(), ids.data(), kTokens,
                   kVocab, stream);
  }, kReps), logit_bytes);
  report.add("xent_bwd (in place)", dtype, xent_shape, timer.median_us([&] {
    cuda::xent_bwd(logits.data(), logits.data(), ids.data(), kTokens, kVocab, scale.data(), stream);
  }, kReps), 2 * logit_bytes);

  const std::string emb_shape = std::to_string(kTokens) + "x" + std::to_string(kHidden) + " V" +
                                std::to_string(kVocab);
  cuda::DeviceBuffer<float> table(kVocab * kHidden), dtable(kVocab * kHidden);
  cuda::DeviceBuffer<T> out(kTokens * kHidden);
  cuda::DeviceBuffer<uint8_t> workspace(cuda::embedding_bwd_workspace_bytes(kTokens, kVocab));
  fill_normal(table.data(), kVocab * kHidden, 5);
  FRUGAL_CUDA_CHECK(cudaMemset(dtable.data(), 0, dtable.bytes()));
  const int64_t unique = static_cast<int64_t>(std::set<int32_t>(host_ids.begin(), host_ids.end()).size());
  report.add("embedding_fwd", dtype, emb_shape, timer.median_us([&] {
    cuda::embedding_fwd(out.data(), table.data(), ids.data(), kTokens, kHidden, stream);
  }, kReps), double(kTokens * kHidden * (4 + s)));
  report.add("embedding_bwd_weight", dtype, emb_shape, timer.median_us([&] {
    cuda::embedding_bwd_weight(dtable.data(), out.data(), ids.data(), kTokens, kHidden, kVocab,
                               workspace.data(), stream);
  }, kReps), double(kTokens * kHidden * s + 2 * unique * kHidden * 4));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    cudaDeviceProp properties{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
    cudaStream_t stream;
    FRUGAL_CUDA_CHECK(cudaStreamCreate(&stream));
    cuda::CudaTimer timer(stream);
    std::printf("%s (%d SMs); median of %d runs after 3 warm-ups\n", properties.name,
                properties.multiProcessorCount, kReps);
    BandwidthReport report(timer, stream, kReps);

    cpu::RouterParams params;
    params.n_experts = kExperts;
    params.top_k = kTopK;
    params.topk_method = cpu::TopkMethod::Greedy;
    params.scoring_func = cpu::ScoringFunc::Sigmoid;
    Routing r;
    const int64_t n = kTokens * kTopK, bound = n;  // row_align 1
    r.logits = cuda::DeviceBuffer<float>(kTokens * kExperts);
    r.scores = cuda::DeviceBuffer<float>(kTokens * kExperts);
    r.weights = cuda::DeviceBuffer<float>(n);
    r.topk_idx = cuda::DeviceBuffer<int32_t>(n);
    r.assignment_row = cuda::DeviceBuffer<int32_t>(n);
    r.row_assignment = cuda::DeviceBuffer<int32_t>(bound);
    r.offsets = cuda::DeviceBuffer<int64_t>(kExperts + 1);
    r.counts = cuda::DeviceBuffer<int64_t>(kExperts);
    r.workspace = cuda::DeviceBuffer<uint8_t>(
        cuda::expert_permutation_workspace_bytes(kTokens, kTopK, kExperts));
    fill_normal(r.logits.data(), kTokens * kExperts, 6);
    const std::string route_shape = std::to_string(kTokens) + " E" + std::to_string(kExperts) +
                                    " K" + std::to_string(kTopK);
    report.add("router_fwd (greedy)", "fp32", route_shape, timer.median_us([&] {
      cuda::router_fwd(r.topk_idx.data(), r.weights.data(), r.scores.data(), r.logits.data(),
                       nullptr, kTokens, params, stream);
    }, kReps), double(kTokens * kExperts * 8));
    report.add("build_expert_permutation", "int", route_shape, timer.median_us([&] {
      cuda::build_expert_permutation(r.offsets.data(), r.counts.data(), nullptr,
                                     r.assignment_row.data(), r.row_assignment.data(),
                                     r.topk_idx.data(), kTokens, kTopK, kExperts, 1,
                                     r.workspace.data(), stream);
    }, kReps), 0.0);
    r.padded_rows = n;
    time_row_ops<__nv_bfloat16>(report, timer, stream, r, "bf16");
    time_row_ops<float>(report, timer, stream, r, "fp32");
    time_xent_embedding<__nv_bfloat16>(report, timer, stream, "bf16");
    time_xent_embedding<float>(report, timer, stream, "fp32");
    FRUGAL_CUDA_CHECK(cudaStreamDestroy(stream));
    bench::write_json_argument(argc, argv, report.json(properties.name, {{"tokens", kTokens},
                                                           {"hidden", kHidden},
                                                           {"experts", kExperts},
                                                           {"top_k", kTopK},
                                                           {"vocab", kVocab}}));
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_moe_ops_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}

#else  // a CPU-only build still compiles every bench/*.cc

#include <cstdio>

int main() {
  std::fprintf(stderr, "bench_moe_ops_cuda: this build has no CUDA backend\n");
  return 1;
}

#endif
