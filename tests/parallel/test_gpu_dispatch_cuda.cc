// GPU expert-parallel token exchange (parallel/gpu_expert_dispatch.h; label cuda; one GPU per rank,
// e.g. `mpirun -np 2 build/test_parallel_gpu_dispatch_cuda`; skipped with fewer GPUs than ranks).
// Every rank makes every rank's inputs from the same seeds (uneven token counts, one rank with no
// tokens in the second case, hidden sizes on the vector path (128) and off it (67), random
// distinct top-3 of 8 experts), so each rank knows exactly what it must receive:
//   - dispatch: the received rows are, per local expert, the rows of the tokens routed to it,
//     sources in rank order and tokens ascending inside a source, bit for bit (pure data movement),
//     with local_offsets, received_rows, send_rows and recv_rows matching the host count;
//   - combine: with each expert e scaling its rows by (e + 1) / 2 (on the host, rounded to BF16),
//     y[t] = sum_k w[t,k] * out(t,k) within one BF16 rounding of the fp32 sum (2^-7 relative).
// Outputs are poisoned before each call.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/device_context.h"
#include "core/dtype.h"
#include "parallel/gpu_expert_dispatch.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"

namespace frugal {
namespace {

constexpr int64_t kExperts = 8, kTopK = 3;

struct RankInput {
  int64_t tokens = 0;
  std::vector<uint16_t> x;        // [tokens, hidden] BF16 bits
  std::vector<int32_t> topk;      // [tokens, K]
  std::vector<float> weights;     // [tokens, K]
};

RankInput make_input(int rank, int64_t tokens, int64_t hidden) {
  RankInput in;
  in.tokens = tokens;
  std::mt19937_64 gen(1000 + rank * 7919 + hidden);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
  in.x.resize(static_cast<size_t>(tokens * hidden));
  for (auto& v : in.x) v = float_to_bf16_bits(normal(gen));
  std::vector<int32_t> experts(kExperts);
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), gen);
    for (int64_t k = 0; k < kTopK; ++k) {
      in.topk.push_back(experts[k]);
      in.weights.push_back(uniform(gen));
    }
  }
  return in;
}

template <class T>
cuda::DeviceArray<T> upload(cuda::DeviceContext& ctx, const std::vector<T>& host) {
  cuda::DeviceArray<T> out(ctx, std::max<int64_t>(static_cast<int64_t>(host.size()), 1));
  if (!host.empty()) {
    EXPECT_EQ(cudaMemcpy(out.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  return out;
}

template <class T>
std::vector<T> download(const T* device, int64_t count) {
  std::vector<T> out(static_cast<size_t>(count));
  if (count > 0) {
    EXPECT_EQ(cudaMemcpy(out.data(), device, out.size() * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
  }
  return out;
}

float expert_scale(int64_t expert) { return 0.5f * static_cast<float>(expert + 1); }

class GpuDispatch : public ::testing::Test {
 protected:
  void SetUp() override {
    host = mpi_world_communicator();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < host->size())
      GTEST_SKIP() << "needs one GPU per rank (" << devices << " GPUs, " << host->size()
                   << " ranks)";
    rank = host->rank();
    size = host->size();
    ctx = std::make_unique<cuda::DeviceContext>(rank % devices);
    nccl = make_nccl_communicator(*host, ctx->device);
    set_input_stream(*nccl, ctx->stream);
  }

  void run_case(int64_t hidden, bool last_rank_empty) {
    SCOPED_TRACE("hidden " + std::to_string(hidden) + (last_rank_empty ? ", last rank empty" : ""));
    ASSERT_EQ(kExperts % size, 0);
    std::vector<RankInput> inputs;
    for (int r = 0; r < size; ++r)
      inputs.push_back(make_input(r, last_rank_empty && r == size - 1 ? 0 : 37 + 11 * r, hidden));
    const RankInput& mine = inputs[rank];
    const int64_t local = kExperts / size, first = rank * local;

    // What this rank must receive, expert-major, and what each rank sends it.
    std::vector<uint16_t> expected;
    std::vector<int64_t> offsets(local + 1, 0), recv_rows(size, 0), send_rows(size, 0);
    for (int64_t e = 0; e < local; ++e) {
      for (int s = 0; s < size; ++s)
        for (int64_t t = 0; t < inputs[s].tokens; ++t)
          for (int64_t k = 0; k < kTopK; ++k)
            if (inputs[s].topk[t * kTopK + k] == first + e) {
              expected.insert(expected.end(), inputs[s].x.begin() + t * hidden,
                              inputs[s].x.begin() + (t + 1) * hidden);
              ++recv_rows[s];
              ++offsets[e + 1];
            }
      offsets[e + 1] += offsets[e];
    }
    for (int64_t a = 0; a < mine.tokens * kTopK; ++a) ++send_rows[mine.topk[a] / local];
    const int64_t received = offsets[local];

    auto x = upload(*ctx, mine.x);
    auto topk = upload(*ctx, mine.topk);
    auto weights = upload(*ctx, mine.weights);
    gpu::GpuExpertDispatch dispatch(*ctx, *nccl, kExperts, hidden);
    EXPECT_EQ(dispatch.local_experts(), local);
    EXPECT_EQ(dispatch.first_local_expert(), first);
    dispatch.plan(topk.data(), mine.tokens, kTopK);
    EXPECT_EQ(dispatch.received_rows(), received);
    EXPECT_EQ(dispatch.local_offsets(), offsets);
    EXPECT_EQ(dispatch.recv_rows(), recv_rows);
    EXPECT_EQ(dispatch.send_rows(), send_rows);

    cuda::DeviceArray<__nv_bfloat16> got(*ctx, std::max<int64_t>(received, 1) * hidden);
    ASSERT_EQ(cudaMemset(got.data(), 0xCD, got.bytes()), cudaSuccess);  // poison
    dispatch.dispatch(got.data(), reinterpret_cast<const __nv_bfloat16*>(x.data()));
    ctx->synchronize();
    const auto got_bits = download(reinterpret_cast<const uint16_t*>(got.data()), received * hidden);
    int64_t wrong_rows = 0;
    for (int64_t row = 0; row < received; ++row)
      if (!std::equal(got_bits.begin() + row * hidden, got_bits.begin() + (row + 1) * hidden,
                      expected.begin() + row * hidden))
        ++wrong_rows;
    EXPECT_EQ(wrong_rows, 0) << "of " << received << " received rows";

    // Experts: row of local expert e scaled by (first + e + 1) / 2, rounded to BF16.
    std::vector<uint16_t> out_bits(static_cast<size_t>(received * hidden));
    for (int64_t e = 0; e < local; ++e)
      for (int64_t row = offsets[e]; row < offsets[e + 1]; ++row)
        for (int64_t h = 0; h < hidden; ++h)
          out_bits[row * hidden + h] = float_to_bf16_bits(
              bf16_bits_to_float(expected[row * hidden + h]) * expert_scale(first + e));
    auto out = upload(*ctx, out_bits);
    cuda::DeviceArray<__nv_bfloat16> y(*ctx, std::max<int64_t>(mine.tokens, 1) * hidden);
    ASSERT_EQ(cudaMemset(y.data(), 0xCD, y.bytes()), cudaSuccess);  // poison
    dispatch.combine(y.data(), reinterpret_cast<const __nv_bfloat16*>(out.data()), weights.data());
    ctx->synchronize();
    const auto y_bits = download(reinterpret_cast<const uint16_t*>(y.data()), mine.tokens * hidden);
    int64_t bad = 0;
    double worst = 0;
    for (int64_t t = 0; t < mine.tokens; ++t)
      for (int64_t h = 0; h < hidden; ++h) {
        double ref = 0;
        for (int64_t k = 0; k < kTopK; ++k) {
          const int32_t e = mine.topk[t * kTopK + k];
          const float o = bf16_bits_to_float(float_to_bf16_bits(
              bf16_bits_to_float(mine.x[t * hidden + h]) * expert_scale(e)));
          ref += static_cast<double>(mine.weights[t * kTopK + k]) * o;
        }
        const double value = bf16_bits_to_float(y_bits[t * hidden + h]);
        const double error = std::fabs(value - ref);
        worst = std::max(worst, error / (std::fabs(ref) + 1e-6));
        if (!(error <= std::fabs(ref) / 128 + 1e-5)) ++bad;
      }
    EXPECT_EQ(bad, 0) << "combined elements off by more than one BF16 rounding; worst relative "
                      << worst;
  }

  std::unique_ptr<Communicator> host;
  std::unique_ptr<cuda::DeviceContext> ctx;  // outlives the NCCL communicator using its stream
  std::unique_ptr<Communicator> nccl;
  int rank = 0, size = 1;
};

TEST_F(GpuDispatch, DispatchDeliversEveryRowAndCombineSumsThemBack) {
  run_case(128, false);
  run_case(67, false);
}

TEST_F(GpuDispatch, ARankWithoutTokensStillTakesPart) {
  run_case(128, true);
}

}  // namespace
}  // namespace frugal
