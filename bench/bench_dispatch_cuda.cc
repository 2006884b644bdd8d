// Expert-parallel dispatch and combine bandwidth on GPUs (parallel/gpu_expert_dispatch.h) at
// bench-1b's MoE shape: per rank 8 x 4096 tokens, hidden 1024, top-6 of 64 experts, routing from
// random logits (each token's 6 largest of 64 normal logits), BF16 rows; next to a plain NCCL
// all-to-all (ncclSend/ncclRecv pairs in one group, equal splits) moving the same bytes, in the
// same run. Run with one GPU per rank:
//   mpirun -np 2 build/bench_dispatch_cuda [results.json]
// Each op's time is the median of 10 runs after 3 warm-ups, host wall clock around a synchronized
// call (the NCCL operations return complete); GB/s = the BF16 row bytes this rank sends (every
// routed row, its own experts' included) / time. plan = the routing layout (local permutation,
// per-expert counts exchanged, one host sync, the reorder indices); dispatch = permute + all-to-
// all-v + reorder; combine = reorder + all-to-all-v + weighted sum; dispatch (FP8 + scales) =
// dispatch_fp8 (permute, 1x128 quantization, all-to-all-v of E4M3 codes + fp32 scales records,
// reorder), its GB/s from the record bytes actually sent (fp8_record_bytes() per row). Prints one
// table row per op and rank (rank 0 prints); writes JSON to argv[1] when given.
#include "mpi_bench_main.h"

#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL) && defined(FRUGAL_HAVE_MPI)

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/device_context.h"
#include "core/dtype.h"
#include "core/error.h"
#include "parallel/gpu_expert_dispatch.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"

using namespace frugal;

namespace {

constexpr int64_t kTokens = 8 * 4096, kHidden = 1024, kExperts = 64, kTopK = 6;
constexpr int kWarmups = 3, kReps = 10;

double median_ms(cuda::DeviceContext& ctx, const std::function<void()>& op) {
  for (int i = 0; i < kWarmups; ++i) op();
  ctx.synchronize();
  std::vector<double> ms;
  for (int i = 0; i < kReps; ++i) {
    ctx.synchronize();
    const auto start = std::chrono::steady_clock::now();
    op();
    ctx.synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int local_device(int world_rank, int devices) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* value = std::getenv(name); value && *value) return std::atoi(value) % devices;
  return world_rank % devices;
}

int run(int argc, char** argv) {
  auto world = mpi_world_communicator();
  const int rank = world->rank(), size = world->size();
  int devices = 0;
  FRUGAL_CUDA_CHECK(cudaGetDeviceCount(&devices));
  FRUGAL_CHECK(devices > 0, "no GPU");
  cuda::DeviceContext ctx(local_device(rank, devices));
  auto nccl = make_nccl_communicator(*world, ctx.device);
  set_input_stream(*nccl, ctx.stream);
  FRUGAL_CHECK(kExperts % size == 0, "{} experts do not split over {} ranks", kExperts, size);

  // Inputs: random BF16 rows; top-6 of 64 random logits per token; random weights.
  std::mt19937_64 gen(99 + rank);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> x(static_cast<size_t>(kTokens * kHidden));
  for (auto& v : x) v = float_to_bf16_bits(normal(gen));
  std::vector<int32_t> topk;
  std::vector<float> weights;
  std::vector<float> logits(kExperts);
  std::vector<int32_t> order(kExperts);
  for (int64_t t = 0; t < kTokens; ++t) {
    for (auto& l : logits) l = normal(gen);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + kTopK, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    for (int64_t k = 0; k < kTopK; ++k) {
      topk.push_back(order[k]);
      weights.push_back(1.0f / kTopK);
    }
  }
  cuda::DeviceArray<__nv_bfloat16> x_dev(ctx, kTokens * kHidden), y_dev(ctx, kTokens * kHidden);
  cuda::DeviceArray<int32_t> topk_dev(ctx, kTokens * kTopK);
  cuda::DeviceArray<float> weights_dev(ctx, kTokens * kTopK);
  FRUGAL_CUDA_CHECK(cudaMemcpy(x_dev.data(), x.data(), x.size() * 2, cudaMemcpyHostToDevice));
  FRUGAL_CUDA_CHECK(cudaMemcpy(topk_dev.data(), topk.data(), topk.size() * 4, cudaMemcpyHostToDevice));
  FRUGAL_CUDA_CHECK(
      cudaMemcpy(weights_dev.data(), weights.data(), weights.size() * 4, cudaMemcpyHostToDevice));

  gpu::GpuExpertDispatch dispatch(ctx, *nccl, kExperts, kHidden);
  dispatch.plan(topk_dev.data(), kTokens, kTopK);
  // The received rows serve as the experts' outputs (identity experts).
  cuda::DeviceArray<__nv_bfloat16> received(ctx, std::max<int64_t>(dispatch.received_rows(), 1) *
                                                     kHidden);
  const double row_bytes = static_cast<double>(kTokens * kTopK * kHidden * 2);
  const double plan_ms =
      median_ms(ctx, [&] { dispatch.plan(topk_dev.data(), kTokens, kTopK); });
  const double dispatch_ms =
      median_ms(ctx, [&] { dispatch.dispatch(received.data(), x_dev.data()); });
  const double combine_ms = median_ms(
      ctx, [&] { dispatch.combine(y_dev.data(), received.data(), weights_dev.data()); });
  cuda::DeviceArray<uint8_t> received_q(ctx,
                                        std::max<int64_t>(dispatch.received_rows(), 1) * kHidden);
  cuda::DeviceArray<float> received_scales(
      ctx, std::max<int64_t>(dispatch.received_rows(), 1) * (kHidden / 128));
  const double fp8_bytes = static_cast<double>(kTokens * kTopK * dispatch.fp8_record_bytes());
  const double fp8_ms = median_ms(ctx, [&] {
    dispatch.dispatch_fp8(received_q.data(), received_scales.data(), x_dev.data(),
                          /*power_of_two_scale=*/false);
  });

  // Plain NCCL all-to-all of the same bytes, equal splits.
  const int64_t per_peer = kTokens * kTopK * kHidden / size;
  cuda::DeviceArray<__nv_bfloat16> send(ctx, per_peer * size), recv(ctx, per_peer * size);
  FRUGAL_CUDA_CHECK(cudaMemset(send.data(), 0, send.bytes()));
  const std::vector<int64_t> equal(static_cast<size_t>(size), per_peer);
  const double a2a_ms = median_ms(ctx, [&] {
    nccl->all_to_all_v(recv.data(), equal, send.data(), equal, CommType::BF16);
  });

  // Every rank's numbers to rank 0: [rank][plan, dispatch, combine, a2a, sent rows, received,
  // fp8 dispatch].
  const std::vector<double> mine = {plan_ms, dispatch_ms, combine_ms, a2a_ms,
                                    static_cast<double>(kTokens * kTopK),
                                    static_cast<double>(dispatch.received_rows()), fp8_ms};
  std::vector<double> all(mine.size() * size);
  world->all_gather(all.data(), mine.data(), static_cast<int64_t>(mine.size()), CommType::F64);
  if (rank == 0) {
    cudaDeviceProp properties{};
    FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&properties, ctx.device));
    std::printf("expert dispatch, %d ranks on %s: %lld tokens/rank, hidden %lld, top-%lld of %lld "
                "experts, BF16 rows (%.1f MB sent per rank per exchange)\n",
                size, properties.name, static_cast<long long>(kTokens),
                static_cast<long long>(kHidden), static_cast<long long>(kTopK),
                static_cast<long long>(kExperts), row_bytes / 1e6);
    std::printf("%-26s %5s %10s %10s %14s\n", "op", "rank", "ms", "GB/s", "rows received");
    nlohmann::json json = {{"gpu", properties.name}, {"ranks", size}, {"tokens_per_rank", kTokens},
                           {"hidden", kHidden}, {"experts", kExperts}, {"top_k", kTopK},
                           {"results", nlohmann::json::array()}};
    const char* names[] = {"plan (layout + counts)", "dispatch (BF16)", "combine (BF16)",
                           "nccl all-to-all (equal)", "dispatch (FP8 + scales)"};
    const int slot[] = {0, 1, 2, 3, 6};  // each op's time in `mine`
    for (int op = 0; op < 5; ++op)
      for (int r = 0; r < size; ++r) {
        const double* v = all.data() + r * mine.size();
        const double ms = v[slot[op]];
        const double bytes = op == 4 ? fp8_bytes : row_bytes;
        const double gbs = op == 0 ? 0.0 : bytes / (ms * 1e-3) / 1e9;
        const double rows = op == 1 || op == 4 ? v[5] : 0.0;
        std::printf("%-26s %5d %10.3f %10s %14.0f\n", names[op], r, ms,
                    op == 0 ? "-" : std::to_string(static_cast<int>(gbs + 0.5)).c_str(), rows);
        json["results"].push_back({{"op", names[op]}, {"rank", r}, {"ms", ms},
                                   {"bytes_sent", op == 0 ? 0.0 : bytes},
                                   {"gb_per_s", gbs}, {"rows_received", rows}});
      }
    std::printf("FP8 dispatch: %.1f MB sent per rank (%lld bytes per row: %lld codes + %lld "
                "scales + padding) vs %.1f MB BF16\n",
                fp8_bytes / 1e6, static_cast<long long>(dispatch.fp8_record_bytes()),
                static_cast<long long>(kHidden), static_cast<long long>(kHidden / 128 * 4),
                row_bytes / 1e6);
    if (argc > 1) {
      std::ofstream out(argv[1]);
      out << json.dump(2) << "\n";
      std::printf("wrote %s\n", argv[1]);
    }
  }
  world->barrier();
  return 0;
}

}  // namespace

#endif

int main(int argc, char** argv) {
#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL) && defined(FRUGAL_HAVE_MPI)
  return frugal::mpi_bench_main("bench_dispatch_cuda", run, argc, argv);
#else
  return frugal::mpi_bench_main("bench_dispatch_cuda", nullptr, argc, argv);
#endif
}
