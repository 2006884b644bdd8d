// The CUDA op harness: error reporting, and the timing mode of every memory-bound op. The checks of
// each op family against its CPU reference live in test_<family>_cuda.cc (rmsnorm, swiglu, quant,
// cast, adamw), on the shared helpers of cuda_test_util.h.
//
// Timing mode: FRUGAL_CUDA_TIMING=1 makes OpsCuda.TimingBandwidth time each op at training sizes
// (32768 rows x 1024 and x 7168; cudaEvent, 3 warm-ups, median of FRUGAL_CUDA_TIMING_REPS = 20
// runs) and print "TIMING | op | shape | us | GB/s | % of copy" against the bytes the op must move
// (each input read once, each output written once), with a device-to-device copy as the ceiling.
// Without the variable that test is skipped. A benchmark, not a test: nothing about speed is
// asserted.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/cuda_timer.h"
#include "cuda_test_util.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "kernels/adamw/adamw_cuda.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/quant/quant.h"
#include "kernels/rmsnorm/rmsnorm.h"
#include "kernels/swiglu/swiglu.h"

namespace frugal {
namespace {

using bf16 = __nv_bfloat16;

class OpsCuda : public testing::CudaTest {};

TEST_F(OpsCuda, CudaErrorsThrowWithTheirPlace) {
  float* pointer = nullptr;
  // Far more than any GPU has: cudaMalloc fails with cudaErrorMemoryAllocation.
  try {
    FRUGAL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&pointer), size_t{1} << 62));
    FAIL() << "an impossible allocation succeeded";
  } catch (const Error& error) {
    const std::string message = error.what();
    std::printf("CUDA error message: %s\n", message.c_str());
    EXPECT_NE(message.find("test_ops_cuda.cc:"), std::string::npos) << message;
    EXPECT_NE(message.find("cudaMalloc"), std::string::npos) << message;
    EXPECT_NE(message.find("(cudaError"), std::string::npos) << message;  // the error's name
  }
  // The throw reset the last-error slot: the failure does not resurface at the next check.
  FRUGAL_CUDA_CHECK(cudaGetLastError());
  cuda::DeviceBuffer<float> buffer(4);
  std::vector<float> too_many(5);
  EXPECT_THROW(buffer.upload(too_many), Error);
  // A launcher's argument check names the op.
  try {
    cuda::quantize_act_1x128<float>(nullptr, nullptr, nullptr, -1, 128, false, stream_);
    FAIL() << "a negative shape was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("quantize_act_1x128"), std::string::npos)
        << error.what();
  }
}

// ---- Timing mode -------------------------------------------------------------------------------

bool timing_enabled() {
  const char* text = std::getenv("FRUGAL_CUDA_TIMING");
  return text != nullptr && std::string(text) != "0" && std::string(text) != "";
}

int timing_reps() {
  const char* text = std::getenv("FRUGAL_CUDA_TIMING_REPS");
  const int reps = text != nullptr ? std::atoi(text) : 20;
  return reps > 0 ? reps : 20;
}

// Fills a device array with N(mean, stddev) values: a 1M-value host block, copied over and over.
void fill_random(float* device, int64_t count, uint64_t seed, float mean = 0, float stddev = 1) {
  const int64_t block = std::min<int64_t>(count, int64_t{1} << 20);
  const std::vector<float> host = testing::random_normal(block, seed, mean, stddev);
  for (int64_t offset = 0; offset < count; offset += block) {
    const int64_t n = std::min(block, count - offset);
    FRUGAL_CUDA_CHECK(
        cudaMemcpy(device + offset, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  }
}
void fill_random(bf16* device, int64_t count, uint64_t seed, float mean = 0, float stddev = 1) {
  cuda::DeviceBuffer<float> staging(count);
  fill_random(staging.data(), count, seed, mean, stddev);
  cuda::cast<float, bf16>(device, staging.data(), count, nullptr);
  FRUGAL_CUDA_CHECK(cudaDeviceSynchronize());
}


TEST_F(OpsCuda, TimingBandwidth) {
  if (!timing_enabled()) GTEST_SKIP() << "set FRUGAL_CUDA_TIMING=1 to time the CUDA ops";
  const int reps = timing_reps();
  cudaDeviceProp properties{};
  FRUGAL_CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
  std::printf("timing on %s (%d SMs), median of %d runs after 3 warm-ups\n", properties.name,
              properties.multiProcessorCount, reps);
  cuda::CudaTimer timer(stream_);
  cudaStream_t s = stream_;
  const int64_t rows = 8 * 4096;
  for (int64_t dim : {int64_t{1024}, int64_t{7168}}) {
    const int64_t count = rows * dim;
    const int64_t tiles = fp8_block_count(dim);
    const double n = static_cast<double>(count);
    const double scale_bytes = 4.0 * tiles * rows;
    const std::string shape = testing::shape_text(rows, dim, false);
    double copy_gbps = 0;
    auto time = [&](const char* op, const std::string& op_shape, double bytes,
                    const std::function<void()>& launch) {
      const double us = timer.median_us(launch, reps);
      const double gbps = bytes / (us * 1e-6) / 1e9;
      if (copy_gbps == 0) copy_gbps = gbps;  // the first line is the copy ceiling
      std::printf("TIMING | %-26s | %-14s | %10.1f us | %7.0f GB/s | %5.1f%% of copy\n", op,
                  op_shape.c_str(), us, gbps, 100.0 * gbps / copy_gbps);
    };
    {
      cuda::DeviceBuffer<float> a(count), b(count);
      fill_random(a.data(), count, 1);
      time("copy d2d (ceiling)", shape, 8.0 * n, [&] {
        FRUGAL_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), count * sizeof(float),
                                          cudaMemcpyDeviceToDevice, s));
      });
    }
    {  // RMSNorm
      cuda::DeviceBuffer<float> x(count), w(dim), y(count), rstd(rows), dy(count), dx(count),
          dw(dim), workspace(cuda::rmsnorm_bwd_weight_workspace_floats(rows, dim));
      cuda::DeviceBuffer<bf16> x16(count), y16(count), dy16(count), dx16(count);
      cuda::DeviceBuffer<uint8_t> q(count);
      cuda::DeviceBuffer<float> scales(tiles * rows);
      fill_random(x.data(), count, 2);
      fill_random(w.data(), dim, 3, 1.0f, 0.2f);
      fill_random(dy.data(), count, 4);
      fill_random(dw.data(), dim, 5);
      fill_random(x16.data(), count, 6);
      fill_random(dy16.data(), count, 7);
      const double side = 4.0 * dim + 4.0 * rows;  // w and rstd
      time("rmsnorm_fwd f32", shape, 8.0 * n + side, [&] {
        cuda::rmsnorm_fwd<float, float>(y.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-6, s);
      });
      time("rmsnorm_fwd f32->bf16", shape, 6.0 * n + side, [&] {
        cuda::rmsnorm_fwd<float, bf16>(y16.data(), rstd.data(), x.data(), w.data(), rows, dim, 1e-6, s);
      });
      time("rmsnorm_fwd bf16", shape, 4.0 * n + side, [&] {
        cuda::rmsnorm_fwd<bf16, bf16>(y16.data(), rstd.data(), x16.data(), w.data(), rows, dim, 1e-6, s);
      });
      time("rmsnorm_fwd_quant f32", shape, 5.0 * n + scale_bytes + side, [&] {
        cuda::rmsnorm_fwd_quant<float, bf16>(q.data(), scales.data(), nullptr, rstd.data(), x.data(),
                                             w.data(), rows, dim, 1e-6, false, s);
      });
      time("rmsnorm_fwd_quant bf16+y", shape, 5.0 * n + scale_bytes + side, [&] {
        cuda::rmsnorm_fwd_quant<bf16, bf16>(q.data(), scales.data(), y16.data(), rstd.data(),
                                            x16.data(), w.data(), rows, dim, 1e-6, false, s);
      });
      time("rmsnorm_bwd_input f32", shape, 12.0 * n + side, [&] {
        cuda::rmsnorm_bwd_input<float, float>(dx.data(), dy.data(), x.data(), w.data(), rstd.data(),
                                              rows, dim, s);
      });
      time("rmsnorm_bwd_input bf16", shape, 6.0 * n + side, [&] {
        cuda::rmsnorm_bwd_input<bf16, bf16>(dx16.data(), dy16.data(), x16.data(), w.data(),
                                            rstd.data(), rows, dim, s);
      });
      time("rmsnorm_bwd_weight f32", shape, 8.0 * n + side, [&] {
        cuda::rmsnorm_bwd_weight<float, float>(dw.data(), dy.data(), x.data(), rstd.data(), rows, dim,
                                               workspace.data(), s);
      });
      time("rmsnorm_bwd_weight bf16", shape, 4.0 * n + side, [&] {
        cuda::rmsnorm_bwd_weight<bf16, bf16>(dw.data(), dy16.data(), x16.data(), rstd.data(), rows,
                                             dim, workspace.data(), s);
      });
    }
    {  // SwiGLU: flat fp32, and bf16 on a fused gate|up GEMM output [rows, 2*dim]
      cuda::DeviceBuffer<float> g(count), u(count), h(count), dh(count), dg(count), du(count);
      fill_random(g.data(), count, 8, 0.0f, 3.0f);
      fill_random(u.data(), count, 9);
      fill_random(dh.data(), count, 10);
      time("swiglu_fwd f32", shape, 12.0 * n, [&] {
        cuda::swiglu_fwd(h.data(), g.data(), u.data(), count, s);
      });
      time("swiglu_bwd f32", shape, 20.0 * n, [&] {
        cuda::swiglu_bwd(dg.data(), du.data(), dh.data(), g.data(), u.data(), count, s);
      });
    }
    {
      cuda::DeviceBuffer<bf16> gu(2 * count), h(count), dh(count), dgu(2 * count);
      cuda::DeviceBuffer<uint8_t> q(count);
      cuda::DeviceBuffer<float> scales(tiles * rows);
      fill_random(gu.data(), 2 * count, 11, 0.0f, 3.0f);
      fill_random(dh.data(), count, 12);
      const int64_t ld = 2 * dim;
      time("swiglu_fwd bf16 fused", shape, 6.0 * n, [&] {
        cuda::swiglu_fwd<bf16>(h.data(), gu.data(), gu.data() + dim, rows, dim, ld, s);
      });
      time("swiglu_bwd bf16 fused", shape, 10.0 * n, [&] {
        cuda::swiglu_bwd<bf16>(dgu.data(), dgu.data() + dim, dh.data(), gu.data(), gu.data() + dim,
                               rows, dim, ld, s);
      });
      time("swiglu_fwd_quant bf16", shape, 5.0 * n + scale_bytes, [&] {
        cuda::swiglu_fwd_quant<bf16>(q.data(), scales.data(), gu.data(), gu.data() + dim, rows, dim,
                                     ld, false, s);
      });
    }
    {  // FP8 activation quantizers
      cuda::DeviceBuffer<float> x(count), scales(tiles * rows),
          scalesT(fp8_block_count(rows) * dim);
      cuda::DeviceBuffer<bf16> x16(count), back16(count);
      cuda::DeviceBuffer<uint8_t> q(count), qT(count);
      fill_random(x.data(), count, 13);
      fill_random(x16.data(), count, 14);
      for (bool power_of_two : {false, true})
        time(power_of_two ? "quantize_act f32 pow2" : "quantize_act f32", shape,
             5.0 * n + scale_bytes, [&] {
               cuda::quantize_act_1x128<float>(q.data(), scales.data(), x.data(), rows, dim,
                                               power_of_two, s);
             });
      time("quantize_act bf16", shape, 3.0 * n + scale_bytes, [&] {
        cuda::quantize_act_1x128<bf16>(q.data(), scales.data(), x16.data(), rows, dim, false, s);
      });
      time("dequantize_act bf16", shape, 3.0 * n + scale_bytes, [&] {
        cuda::dequantize_act_1x128<bf16>(back16.data(), q.data(), scales.data(), rows, dim, s);
      });
      time("transpose_quantize bf16", shape, 3.0 * n + scale_bytes, [&] {
        cuda::transpose_quantize_1x128<bf16>(qT.data(), scalesT.data(), x16.data(), rows, dim, false,
                                             s);
      });
      time("transpose_quantize f32", shape, 5.0 * n + scale_bytes, [&] {
        cuda::transpose_quantize_1x128<float>(qT.data(), scalesT.data(), x.data(), rows, dim, false,
                                              s);
      });
      // 32 experts of rows/32 rows each (multiples of 128).
      const int64_t groups = 32;
      std::vector<int64_t> offsets(groups + 1);
      for (int64_t g = 0; g <= groups; ++g) offsets[g] = g * (rows / groups);
      cuda::DeviceBuffer<int64_t> offsets_d{std::span<const int64_t>(offsets)};
      time("quantize_act_grouped bf16", shape, 3.0 * n + scale_bytes, [&] {
        cuda::quantize_act_1x128_grouped<bf16>(q.data(), scales.data(), x16.data(), offsets_d.data(),
                                               groups, rows, dim, false, s);
      });
      time("transpose_quant_grouped bf16", shape, 3.0 * n + scale_bytes, [&] {
        cuda::transpose_quantize_1x128_grouped<bf16>(qT.data(), scalesT.data(), x16.data(),
                                                     offsets_d.data(), groups, rows, dim, false, s);
      });
    }
    {  // FP8 weights: a [4*dim, dim] weight (an FFN up projection)
      const int64_t wn = 4 * dim, wk = dim;
      const int64_t blocks = fp8_block_count(wn) * fp8_block_count(wk);
      cuda::DeviceBuffer<float> w(wn * wk), scales(blocks), scalesT(blocks);
      cuda::DeviceBuffer<uint8_t> q(wn * wk), qT(wn * wk);
      fill_random(w.data(), wn * wk, 15, 0.0f, 0.02f);
      const double elements = static_cast<double>(wn * wk);
      const std::string weight_shape = testing::shape_text(wn, wk, false);
      time("quantize_weight", weight_shape, 5.0 * elements + 4.0 * blocks, [&] {
        cuda::quantize_weight_128x128(q.data(), scales.data(), w.data(), wn, wk, false, s);
      });
      time("quantize_weight+transpose", weight_shape, 6.0 * elements + 8.0 * blocks, [&] {
        cuda::quantize_weight_128x128_with_transpose(q.data(), scales.data(), qT.data(),
                                                     scalesT.data(), w.data(), wn, wk, false, s);
      });
    }
    {  // casts, residual adds, strided copies
      cuda::DeviceBuffer<float> a(count), b(count);
      cuda::DeviceBuffer<bf16> a16(count), b16(count);
      fill_random(a.data(), count, 16);
      fill_random(b.data(), count, 17);
      fill_random(a16.data(), count, 18);
      fill_random(b16.data(), count, 19);
      time("cast f32->bf16", shape, 6.0 * n, [&] { cuda::cast<float, bf16>(a16.data(), a.data(), count, s); });
      time("cast bf16->f32", shape, 6.0 * n, [&] { cuda::cast<bf16, float>(b.data(), b16.data(), count, s); });
      time("axpby f32", shape, 12.0 * n, [&] { cuda::axpby<float>(a.data(), b.data(), 1.0f, 1.0f, count, s); });
      time("axpby bf16", shape, 6.0 * n, [&] { cuda::axpby<bf16>(a16.data(), b16.data(), 1.0f, 1.0f, count, s); });
      // The left half of every row into a packed [rows, dim/2] array.
      time("copy_2d bf16 half rows", shape, 2.0 * n, [&] {
        cuda::copy_2d<bf16>(b16.data(), dim / 2, a16.data(), dim, rows, dim / 2, s);
      });
    }
    {  // optimizer step over count parameters
      cuda::DeviceBuffer<float> w(count), grad(count), m(count), v(count), clip(1), norm(1);
      cuda::DeviceBuffer<bf16> m16(count), v16(count), w16(count);
      cuda::DeviceBuffer<int32_t> nonfinite(1);
      fill_random(w.data(), count, 20, 0.0f, 0.02f);
      fill_random(grad.data(), count, 21, 0.0f, 1e-3f);
      m.fill_bytes(0);
      v.fill_bytes(0);
      m16.fill_bytes(0);
      v16.fill_bytes(0);
      const std::vector<float> one = {1.0f};
      clip.upload(one);
      cuda::AdamWStep step;
      step.lr = 1e-4f;
      step.weight_decay = 0.1f;
      time("adamw f32 moments", shape, 30.0 * n, [&] {
        cuda::adamw_update<float>(w.data(), m.data(), v.data(), grad.data(), clip.data(), step, count,
                                  w16.data(), s);
      });
      time("adamw bf16 moments", shape, 22.0 * n, [&] {
        cuda::adamw_update<bf16>(w.data(), m16.data(), v16.data(), grad.data(), clip.data(), step,
                                 count, w16.data(), s);
      });
      const cuda::GradTensor tensor{grad.data(), count};
      cuda::DeviceBuffer<uint8_t> workspace(cuda::grad_norm_workspace_bytes(&tensor, 1));
      time("grad_norm_and_clip", shape, 4.0 * n, [&] {
        cuda::grad_norm_and_clip(norm.data(), clip.data(), nonfinite.data(), &tensor, 1, 1.0f,
                                 workspace.data(), s);
      });
    }
  }
}

}  // namespace
}  // namespace frugal
