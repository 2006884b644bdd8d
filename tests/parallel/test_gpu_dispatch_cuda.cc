// GPU expert-parallel token exchange (parallel/gpu_expert_dispatch.h; label cuda; one GPU per rank,
// e.g. `mpirun -np 2 build/test_parallel_gpu_dispatch_cuda`; skipped with fewer GPUs than ranks).
// Every rank makes every rank's inputs from the same seeds (uneven token counts, one rank with no
// tokens in the second case, hidden sizes on the vector path (128) and off it (67), random
// distinct top-3 of 8 experts), so each rank knows exactly what it must receive:
//   - dispatch: the received rows are, per local expert, the rows of the tokens routed to it,
//     sources in rank order and tokens ascending inside a source, bit for bit (pure data movement),
//     with local_offsets, received_rows, send_rows and recv_rows matching the host count;
//   - combine: with each expert e scaling its rows by (e + 1) / 2 (on the host, rounded to BF16),
//     y[t] = sum_k w[t,k] * out(t,k) within one BF16 rounding of the fp32 sum (2^-7 relative);
//   - combine_backward: at the owners, d_expert_out of the row of (t,k) = w[t,k] * dy[t] (one BF16
//     rounding, 2^-8 relative), in the dispatch's row order; at the tokens' rank
//     d_weights[t,k] = dy[t] . out(t,k) within 1e-5 of the sum of |terms| (fp32 accumulation);
//   - dispatch_backward of the experts' outputs: dx[t] = sum_k out(t,k) within one BF16 rounding.
// Outputs are poisoned before each call.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
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
  std::vector<uint16_t> dy;       // [tokens, hidden] BF16 bits: the gradient of y
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
  in.dy.resize(in.x.size());
  for (auto& v : in.dy) v = float_to_bf16_bits(normal(gen));
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
    std::vector<std::array<int64_t, 3>> origin;  // (source, token, k) of each expected row
    std::vector<int64_t> offsets(local + 1, 0), recv_rows(size, 0), send_rows(size, 0);
    for (int64_t e = 0; e < local; ++e) {
      for (int s = 0; s < size; ++s)
        for (int64_t t = 0; t < inputs[s].tokens; ++t)
          for (int64_t k = 0; k < kTopK; ++k)
            if (inputs[s].topk[t * kTopK + k] == first + e) {
              expected.insert(expected.end(), inputs[s].x.begin() + t * hidden,
                              inputs[s].x.begin() + (t + 1) * hidden);
              origin.push_back({s, t, k});
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

    // combine_backward: d_expert_out at the owners, d_weights here.
    auto dy = upload(*ctx, mine.dy);
    cuda::DeviceArray<__nv_bfloat16> d_out(*ctx, std::max<int64_t>(received, 1) * hidden);
    cuda::DeviceArray<float> d_weights(*ctx, std::max<int64_t>(mine.tokens, 1) * kTopK);
    ASSERT_EQ(cudaMemset(d_out.data(), 0xCD, d_out.bytes()), cudaSuccess);
    ASSERT_EQ(cudaMemset(d_weights.data(), 0xCD, d_weights.bytes()), cudaSuccess);
    dispatch.combine_backward(d_out.data(), d_weights.data(),
                              reinterpret_cast<const __nv_bfloat16*>(dy.data()), weights.data());
    ctx->synchronize();
    const auto d_out_bits =
        download(reinterpret_cast<const uint16_t*>(d_out.data()), received * hidden);
    int64_t bad_rows = 0;
    for (int64_t row = 0; row < received; ++row) {
      const auto [s, t, k] = origin[row];
      const float w = inputs[s].weights[t * kTopK + k];
      for (int64_t h = 0; h < hidden; ++h) {
        const float ref = w * bf16_bits_to_float(inputs[s].dy[t * hidden + h]);
        const float value = bf16_bits_to_float(d_out_bits[row * hidden + h]);
        if (!(std::fabs(value - ref) <= std::fabs(ref) / 256 + 1e-6f)) {
          ++bad_rows;
          break;
        }
      }
    }
    EXPECT_EQ(bad_rows, 0) << "d_expert_out rows wrong, of " << received;
    const auto d_weights_host = download(d_weights.data(), mine.tokens * kTopK);
    int64_t bad_weights = 0;
    for (int64_t t = 0; t < mine.tokens; ++t)
      for (int64_t k = 0; k < kTopK; ++k) {
        const int32_t e = mine.topk[t * kTopK + k];
        double ref = 0, magnitude = 0;
        for (int64_t h = 0; h < hidden; ++h) {
          const double o = bf16_bits_to_float(float_to_bf16_bits(
              bf16_bits_to_float(mine.x[t * hidden + h]) * expert_scale(e)));
          const double term = o * bf16_bits_to_float(mine.dy[t * hidden + h]);
          ref += term;
          magnitude += std::fabs(term);
        }
        if (!(std::fabs(d_weights_host[t * kTopK + k] - ref) <= 1e-5 * magnitude + 1e-6))
          ++bad_weights;
      }
    EXPECT_EQ(bad_weights, 0) << "d_weights wrong, of " << mine.tokens * kTopK;

    // dispatch_backward of the experts' outputs: dx[t] = sum_k out(t,k).
    cuda::DeviceArray<__nv_bfloat16> dx(*ctx, std::max<int64_t>(mine.tokens, 1) * hidden);
    ASSERT_EQ(cudaMemset(dx.data(), 0xCD, dx.bytes()), cudaSuccess);
    dispatch.dispatch_backward(dx.data(), reinterpret_cast<const __nv_bfloat16*>(out.data()));
    ctx->synchronize();
    const auto dx_bits = download(reinterpret_cast<const uint16_t*>(dx.data()), mine.tokens * hidden);
    int64_t bad_dx = 0;
    for (int64_t t = 0; t < mine.tokens; ++t)
      for (int64_t h = 0; h < hidden; ++h) {
        double ref = 0;
        for (int64_t k = 0; k < kTopK; ++k)
          ref += bf16_bits_to_float(float_to_bf16_bits(
              bf16_bits_to_float(mine.x[t * hidden + h]) * expert_scale(mine.topk[t * kTopK + k])));
        const double value = bf16_bits_to_float(dx_bits[t * hidden + h]);
        if (!(std::fabs(value - ref) <= std::fabs(ref) / 128 + 1e-5)) ++bad_dx;
      }
    EXPECT_EQ(bad_dx, 0) << "dx elements wrong, of " << mine.tokens * hidden;
  }

  std::unique_ptr<Communicator> host;
  std::unique_ptr<cuda::DeviceContext> ctx;  // outlives the NCCL communicator using its stream
  std::unique_ptr<Communicator> nccl;
  int rank = 0, size = 1;
};

TEST_F(GpuDispatch, DispatchCombineAndTheirBackwardsMoveEveryRow) {
  run_case(128, false);
  run_case(67, false);
}

TEST_F(GpuDispatch, ARankWithoutTokensStillTakesPart) {
  run_case(128, true);
}

}  // namespace
}  // namespace frugal
