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
// FP8 dispatch (dispatch_fp8, the fp8 recipe): for several expert counts / top-k (one case routing
// every token to rank 0's experts, so the other ranks receive 0 rows), the E4M3 codes and scales
// received equal, bit for bit, cuda::quantize_act_1x128 of the rows the BF16 dispatch delivers;
// and the tile-padded grouped layout GpuMoe builds from them (fp8_rows.h gathers) equals
// cuda::quantize_act_1x128_grouped of the padded BF16 rows. Prints CHECK lines.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "core/device_context.h"
#include "core/dtype.h"
#include "kernels/gemm/gemm_cuda.h"
#include "kernels/moe/fp8_rows.h"
#include "kernels/moe/moe_cuda.h"
#include "kernels/quant/quant.h"
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

  // FP8 dispatch against quantizing the BF16-dispatched rows on the receiver (bitwise).
  void run_fp8_case(int64_t experts, int64_t top_k, int64_t hidden, bool only_rank0_experts,
                    bool power_of_two) {
    const std::string label = "fp8 dispatch: " + std::to_string(experts) + " experts, top-" +
                              std::to_string(top_k) + ", hidden " + std::to_string(hidden) +
                              (only_rank0_experts ? ", only rank 0's experts" : "") +
                              (power_of_two ? ", power-of-two scales" : "");
    SCOPED_TRACE(label);
    ASSERT_EQ(experts % size, 0);
    const int64_t local = experts / size;
    const int64_t choices = only_rank0_experts ? local : experts;
    ASSERT_LE(top_k, choices);
    const int64_t tokens = 29 + 13 * rank;
    std::mt19937_64 gen(5000 + rank * 31 + experts * 7 + top_k);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<uint16_t> x_host(static_cast<size_t>(tokens * hidden));
    for (int64_t i = 0; i < tokens * hidden; ++i)  // rows of different magnitudes, a zero row
      x_host[i] = float_to_bf16_bits(i / hidden == 3 ? 0.0f
                                                      : normal(gen) * std::ldexp(1.0f, int(i / hidden % 9) - 4));
    std::vector<int32_t> topk_host;
    std::vector<int32_t> pool(static_cast<size_t>(choices));
    for (int64_t t = 0; t < tokens; ++t) {
      std::iota(pool.begin(), pool.end(), 0);
      std::shuffle(pool.begin(), pool.end(), gen);
      topk_host.insert(topk_host.end(), pool.begin(), pool.begin() + top_k);
    }
    auto x = upload(*ctx, x_host);
    auto topk = upload(*ctx, topk_host);
    gpu::GpuExpertDispatch dispatch(*ctx, *nccl, experts, hidden);
    dispatch.plan(topk.data(), tokens, top_k);
    const int64_t received = dispatch.received_rows(), tiles = hidden / 128;
    if (only_rank0_experts && rank != 0) {
      EXPECT_EQ(received, 0);
    }
    const auto* xb = reinterpret_cast<const __nv_bfloat16*>(x.data());

    cuda::DeviceArray<__nv_bfloat16> rows(*ctx, std::max<int64_t>(received, 1) * hidden);
    dispatch.dispatch(rows.data(), xb);
    cuda::DeviceArray<uint8_t> q_ref(*ctx, std::max<int64_t>(received, 1) * hidden);
    cuda::DeviceArray<float> s_ref(*ctx, std::max<int64_t>(received, 1) * tiles);
    if (received > 0)
      cuda::quantize_act_1x128<__nv_bfloat16>(q_ref.data(), s_ref.data(), rows.data(), received,
                                              hidden, power_of_two, ctx->stream);
    cuda::DeviceArray<uint8_t> q(*ctx, std::max<int64_t>(received, 1) * hidden);
    cuda::DeviceArray<float> scales(*ctx, std::max<int64_t>(received, 1) * tiles);
    ASSERT_EQ(cudaMemset(q.data(), 0xCD, q.bytes()), cudaSuccess);  // poison
    ASSERT_EQ(cudaMemset(scales.data(), 0xCD, scales.bytes()), cudaSuccess);
    dispatch.dispatch_fp8(q.data(), scales.data(), xb, power_of_two);
    ctx->synchronize();
    const auto q_got = download(q.data(), received * hidden),
               q_want = download(q_ref.data(), received * hidden);
    const auto s_got = download(reinterpret_cast<const uint32_t*>(scales.data()), received * tiles),
               s_want = download(reinterpret_cast<const uint32_t*>(s_ref.data()), received * tiles);
    int64_t bad_codes = 0, bad_scales = 0;
    for (size_t i = 0; i < q_got.size(); ++i) bad_codes += q_got[i] != q_want[i];
    for (size_t i = 0; i < s_got.size(); ++i) bad_scales += s_got[i] != s_want[i];
    EXPECT_EQ(bad_codes, 0) << "of " << q_got.size() << " codes";
    EXPECT_EQ(bad_scales, 0) << "of " << s_got.size() << " scales (layout [hidden/128][received])";

    // GpuMoe's tile-padded grouped layout from the FP8 rows vs the grouped quantizer on the padded
    // BF16 rows.
    const std::vector<int64_t>& offsets = dispatch.local_offsets();
    std::vector<int64_t> padded_offsets(static_cast<size_t>(local + 1), 0);
    for (int64_t e = 0; e < local; ++e)
      padded_offsets[e + 1] =
          padded_offsets[e] + (offsets[e + 1] - offsets[e] + 127) / 128 * 128;
    const int64_t padded = padded_offsets[local];
    int64_t bad_padded = 0;
    if (padded > 0) {
      std::vector<int32_t> pad_map(static_cast<size_t>(padded), -1);
      for (int64_t e = 0; e < local; ++e)
        for (int64_t i = offsets[e]; i < offsets[e + 1]; ++i)
          pad_map[padded_offsets[e] + i - offsets[e]] = static_cast<int32_t>(i);
      auto pad = upload(*ctx, pad_map);
      auto device_offsets = upload(*ctx, padded_offsets);
      cuda::DeviceArray<__nv_bfloat16> rows_padded(*ctx, padded * hidden);
      cuda::permute_rows<__nv_bfloat16>(rows_padded.data(), rows.data(), pad.data(), padded, 1,
                                        hidden, ctx->stream);
      cuda::DeviceArray<uint8_t> qg_ref(*ctx, padded * hidden), qg(*ctx, padded * hidden);
      cuda::DeviceArray<float> sg_ref(*ctx, padded * tiles), sg(*ctx, padded * tiles);
      ASSERT_EQ(cudaMemset(qg.data(), 0xCD, qg.bytes()), cudaSuccess);
      ASSERT_EQ(cudaMemset(sg.data(), 0xCD, sg.bytes()), cudaSuccess);
      cuda::quantize_act_1x128_grouped<__nv_bfloat16>(qg_ref.data(), sg_ref.data(),
                                                      rows_padded.data(), device_offsets.data(),
                                                      local, padded, hidden, power_of_two,
                                                      ctx->stream);
      cuda::gather_byte_rows(qg.data(), hidden, q.data(), hidden, pad.data(), padded, hidden,
                             ctx->stream);
      const float zero_row_scale = fp8_scale_from_amax(0.0f, power_of_two);
      for (int64_t e = 0; e < local; ++e) {
        const int64_t base = padded_offsets[e], n = padded_offsets[e + 1] - base;
        if (n > 0)
          cuda::gather_scales(sg.data() + base * tiles, 1, n, scales.data(), 1, received,
                              pad.data() + base, n, tiles, zero_row_scale, ctx->stream);
      }
      ctx->synchronize();
      const auto a = download(qg.data(), padded * hidden), b = download(qg_ref.data(), padded * hidden);
      const auto c = download(reinterpret_cast<const uint32_t*>(sg.data()), padded * tiles),
                 d = download(reinterpret_cast<const uint32_t*>(sg_ref.data()), padded * tiles);
      for (size_t i = 0; i < a.size(); ++i) bad_padded += a[i] != b[i];
      for (size_t i = 0; i < c.size(); ++i) bad_padded += c[i] != d[i];
      EXPECT_EQ(bad_padded, 0) << "padded grouped codes/scales differ from "
                                  "quantize_act_1x128_grouped of the padded BF16 rows";
    }
    std::printf("CHECK | rank %d %s: %lld rows received, %lld bad codes, %lld bad scales, %lld bad "
                "padded | %s\n",
                rank, label.c_str(), static_cast<long long>(received),
                static_cast<long long>(bad_codes), static_cast<long long>(bad_scales),
                static_cast<long long>(bad_padded),
                bad_codes == 0 && bad_scales == 0 && bad_padded == 0 ? "ok" : "FAIL");
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

TEST_F(GpuDispatch, Fp8DispatchEqualsQuantizingTheBf16Rows) {
  run_fp8_case(8, 3, 256, false, false);
  run_fp8_case(4, 1, 128, false, false);
  run_fp8_case(16, 6, 384, false, true);
  run_fp8_case(8, 2, 256, true, false);  // the other ranks receive no rows
}

}  // namespace
}  // namespace frugal
