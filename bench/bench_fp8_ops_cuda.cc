// Bandwidth of the work around the FP8 GEMMs of one bench-1b MoE layer, and of the optimizer over
// its expert weights: the 1x128 activation quantizers (plain, grouped per expert, transposed for
// Wgrad, both at once), the SwiGLU cache's dequantizer, SwiGLU itself, the fused FP8 SwiGLU kernels
// (forward: SwiGLU + the gu cache + h's two operands; backward: the cache's expansion + SwiGLU's
// backward + dgu's two operands) next to the unfused sequences they replace, the 128x128 weight
// quantizer with its transposed copy, and AdamW (bf16 moments) alone, followed by that quantizer,
// and fused with it.
// Sizes: 32768 tokens x top-6 = 196608 expert rows in 64 groups of 3072 (a multiple of 128, as
// the FP8 permutation pads them), hidden 1024, expert inter 384; the expert weights of a layer
// are 64 x [768, 1024] (gate|up) and 64 x [1024, 384] (down). Each op is timed with CUDA events
// (median of 20 runs after 3 warm-ups) and its GB/s counts the bytes it must move at least; the
// first row is a device-to-device copy (the ceiling). The dual quantizer gets one row with exact
// scales (as training runs it) and one with power-of-two scales (" pow2"), dense at
// 32768 x {256, 1024, 4096} and grouped at the expert shapes. Prints a table; writes JSON to
// argv[1].
//   build/bench_fp8_ops_cuda [results.json]
#if defined(FRUGAL_HAVE_CUDA)

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "bandwidth_report.h"
#include "core/cuda_check.h"
#include "core/cuda_timer.h"
#include "core/error.h"
#include "kernels/adamw/adamw_cuda.h"
#include "kernels/quant/quant.h"
#include "kernels/swiglu/swiglu.h"

using namespace frugal;
using bench::BandwidthReport;
using bench::fill_normal;
using bench::fill_normal_bf16;
using bf16 = __nv_bfloat16;

namespace {

constexpr int64_t kTokens = 32768, kHidden = 1024, kInter = 384, kExperts = 64, kTopK = 6;
constexpr int64_t kRows = kTokens * kTopK;  // 196608 = 64 x 3072
constexpr int kReps = 20;

std::string shape_of(int64_t rows, int64_t cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

// Scale bytes of 1x128 tiles over [rows, cols].
double tile_scale_bytes(int64_t rows, int64_t cols) {
  return 4.0 * static_cast<double>(rows * fp8_block_count(cols));
}

// The dual quantizer (both operands of an FP8 Linear in one pass) over x [rows, cols], one row per
// scale rule: grouped over `offsets` (kExperts groups) or, when null, the plain form. Bytes: x
// read, both code arrays and both scale arrays written.
void time_dual(BandwidthReport& report, cuda::CudaTimer& timer, cudaStream_t stream,
                        const bf16* x, const int64_t* offsets, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  cuda::DeviceBuffer<uint8_t> q(static_cast<size_t>(n)), qT(static_cast<size_t>(n));
  cuda::DeviceBuffer<float> scales(static_cast<size_t>(rows * fp8_block_count(cols))),
      scalesT(static_cast<size_t>(fp8_block_count(rows) * cols));
  const double bytes = 4.0 * static_cast<double>(n) + tile_scale_bytes(rows, cols) +
                       4.0 * static_cast<double>(fp8_block_count(rows) * cols);
  const std::string name = offsets ? "quantize_act_1x128_dual_grouped" : "quantize_act_1x128_dual";
  // Exact scales (an IEEE division per code: what training uses, kFp8PowerOfTwoScales = false)
  // and power-of-two scales (a multiply per code).
  for (const bool power_of_two : {false, true}) {
    report.add(name + (power_of_two ? " pow2" : ""), "bf16", shape_of(rows, cols),
               timer.median_us([&] {
                 if (offsets)
                   cuda::quantize_act_1x128_dual_grouped(q.data(), scales.data(), qT.data(),
                                                         scalesT.data(), x, offsets, kExperts,
                                                         rows, cols, power_of_two, stream);
                 else
                   cuda::quantize_act_1x128_dual(q.data(), scales.data(), qT.data(),
                                                 scalesT.data(), x, rows, cols, power_of_two,
                                                 stream);
               }, kReps),
               bytes);
  }
}

// The dense dual quantizer at the token count (the attention and dense-MLP Linears' inputs).
void time_dense_dual(BandwidthReport& report, cuda::CudaTimer& timer, cudaStream_t stream) {
  for (const int64_t cols : {int64_t{256}, kHidden, 4 * kHidden}) {
    const int64_t n = kTokens * cols;
    cuda::DeviceBuffer<bf16> x(static_cast<size_t>(n));
    fill_normal_bf16(x.data(), n, 18);
    time_dual(report, timer, stream, x.data(), nullptr, kTokens, cols);
  }
}

// The activation quantizers at [kRows, cols] (bf16 in): plain, grouped, transposed grouped, the
// dual quantizer, the dequantizer.
void time_activation_quantizers(BandwidthReport& report, cuda::CudaTimer& timer,
                                cudaStream_t stream, const int64_t* offsets, int64_t cols) {
  const int64_t n = kRows * cols;
  cuda::DeviceBuffer<bf16> x(static_cast<size_t>(n));
  cuda::DeviceBuffer<uint8_t> q(static_cast<size_t>(n));
  cuda::DeviceBuffer<float> scales(static_cast<size_t>(kRows * fp8_block_count(cols)));
  fill_normal_bf16(x.data(), n, 11);
  const double bytes = 3.0 * static_cast<double>(n) + tile_scale_bytes(kRows, cols);
  const std::string shape = shape_of(kRows, cols);
  report.add("quantize_act_1x128", "bf16", shape, timer.median_us([&] {
    cuda::quantize_act_1x128<bf16>(q.data(), scales.data(), x.data(), kRows, cols, true, stream);
  }, kReps), bytes);
  report.add("quantize_act_1x128_grouped", "bf16", shape, timer.median_us([&] {
    cuda::quantize_act_1x128_grouped<bf16>(q.data(), scales.data(), x.data(), offsets, kExperts,
                                           kRows, cols, true, stream);
  }, kReps), bytes);
  report.add("transpose_quantize_1x128_grouped", "bf16", shape, timer.median_us([&] {
    cuda::transpose_quantize_1x128_grouped<bf16>(q.data(), scales.data(), x.data(), offsets,
                                                 kExperts, kRows, cols, true, stream);
  }, kReps), bytes);
  time_dual(report, timer, stream, x.data(), offsets, kRows, cols);
  report.add("dequantize_act_1x128", "bf16", shape, timer.median_us([&] {
    cuda::dequantize_act_1x128<bf16>(x.data(), q.data(), scales.data(), kRows, cols, stream);
  }, kReps), bytes);
}

// SwiGLU over the gate|up output [kRows, 2*inter] -> h [kRows, inter], and its backward.
void time_swiglu(BandwidthReport& report, cuda::CudaTimer& timer, cudaStream_t stream) {
  const int64_t I = kInter;
  cuda::DeviceBuffer<bf16> gu(static_cast<size_t>(kRows * 2 * I)), h(static_cast<size_t>(kRows * I)),
      dgu(static_cast<size_t>(kRows * 2 * I));
  cuda::DeviceBuffer<uint8_t> q(static_cast<size_t>(kRows * I));
  cuda::DeviceBuffer<float> scales(static_cast<size_t>(kRows * fp8_block_count(I)));
  fill_normal_bf16(gu.data(), kRows * 2 * I, 12);
  fill_normal_bf16(h.data(), kRows * I, 13);
  const std::string shape = shape_of(kRows, I);
  const double element = static_cast<double>(kRows * I);
  report.add("swiglu_fwd", "bf16", shape, timer.median_us([&] {
    cuda::swiglu_fwd<bf16>(h.data(), gu.data(), gu.data() + I, kRows, I, 2 * I, stream);
  }, kReps), 6.0 * element);
  report.add("swiglu_fwd_quant", "bf16", shape, timer.median_us([&] {
    cuda::swiglu_fwd_quant<bf16>(q.data(), scales.data(), gu.data(), gu.data() + I, kRows, I,
                                 2 * I, true, stream);
  }, kReps), 5.0 * element + tile_scale_bytes(kRows, I));
  report.add("swiglu_bwd", "bf16", shape, timer.median_us([&] {
    cuda::swiglu_bwd<bf16>(dgu.data(), dgu.data() + I, h.data(), gu.data(), gu.data() + I, kRows,
                           I, 2 * I, stream);
  }, kReps), 10.0 * element);
}

// The fused FP8 SwiGLU kernels of the MoE experts over [kRows, 2*inter] (64 groups), each next to
// the unfused sequence it replaces (the same kernels as the rows above, back to back).
void time_fused_swiglu(BandwidthReport& report, cuda::CudaTimer& timer, cudaStream_t stream,
                       const int64_t* offsets) {
  const int64_t I = kInter, n = kRows * I;
  cuda::DeviceBuffer<bf16> gu(static_cast<size_t>(2 * n)), h(static_cast<size_t>(n)),
      dh(static_cast<size_t>(n)), dgu(static_cast<size_t>(2 * n));
  cuda::DeviceBuffer<uint8_t> gu_q(static_cast<size_t>(2 * n)), h_q(static_cast<size_t>(n)),
      hT_q(static_cast<size_t>(n)), dgu_q(static_cast<size_t>(2 * n)),
      dguT_q(static_cast<size_t>(2 * n));
  cuda::DeviceBuffer<float> gu_scales(static_cast<size_t>(kRows * fp8_block_count(2 * I))),
      h_scales(static_cast<size_t>(kRows * fp8_block_count(I))),
      hT_scales(static_cast<size_t>(kRows / kFp8BlockSize * I)),
      dgu_scales(static_cast<size_t>(kRows * fp8_block_count(2 * I))),
      dguT_scales(static_cast<size_t>(kRows / kFp8BlockSize * 2 * I));
  fill_normal_bf16(gu.data(), 2 * n, 16);
  fill_normal_bf16(dh.data(), n, 17);
  cuda::quantize_act_1x128<bf16>(gu_q.data(), gu_scales.data(), gu.data(), kRows, 2 * I, true,
                                 stream);
  const std::string shape = shape_of(kRows, I);
  const double element = static_cast<double>(n);
  // gu read (4n), its cache (2n), h's two code arrays (2n), and the scales.
  const double fwd_bytes = 8.0 * element + tile_scale_bytes(kRows, 2 * I) +
                           2.0 * tile_scale_bytes(kRows, I);
  report.add("swiglu_fwd_fp8_grouped (fused)", "bf16", shape, timer.median_us([&] {
    cuda::swiglu_fwd_fp8_grouped(gu_q.data(), gu_scales.data(), h_q.data(), h_scales.data(),
                                 hT_q.data(), hT_scales.data(), gu.data(), offsets, kExperts,
                                 kRows, I, true, stream);
  }, kReps), fwd_bytes);
  report.add("swiglu_fwd +cache +dual (unfused)", "bf16", shape, timer.median_us([&] {
    cuda::swiglu_fwd<bf16>(h.data(), gu.data(), gu.data() + I, kRows, I, 2 * I, stream);
    cuda::quantize_act_1x128_dual_grouped(h_q.data(), h_scales.data(), hT_q.data(),
                                          hT_scales.data(), h.data(), offsets, kExperts, kRows, I,
                                          true, stream);
    cuda::quantize_act_1x128<bf16>(gu_q.data(), gu_scales.data(), gu.data(), kRows, 2 * I, true,
                                   stream);
  }, kReps), fwd_bytes);
  // dh read (2n), the cache read (2n), dgu's two code arrays (4n), and the scales.
  const double bwd_bytes = 8.0 * element + tile_scale_bytes(kRows, 2 * I) +
                           2.0 * tile_scale_bytes(kRows, 2 * I);
  report.add("swiglu_bwd_fp8_grouped (fused)", "bf16", shape, timer.median_us([&] {
    cuda::swiglu_bwd_fp8_grouped(dgu_q.data(), dgu_scales.data(), dguT_q.data(),
                                 dguT_scales.data(), dh.data(), gu_q.data(), gu_scales.data(),
                                 offsets, kExperts, kRows, I, true, stream);
  }, kReps), bwd_bytes);
  report.add("dequant +swiglu_bwd +dual (unfused)", "bf16", shape, timer.median_us([&] {
    cuda::dequantize_act_1x128<bf16>(gu.data(), gu_q.data(), gu_scales.data(), kRows, 2 * I,
                                     stream);
    cuda::swiglu_bwd<bf16>(dgu.data(), dgu.data() + I, dh.data(), gu.data(), gu.data() + I, kRows,
                           I, 2 * I, stream);
    cuda::quantize_act_1x128_dual_grouped(dgu_q.data(), dgu_scales.data(), dguT_q.data(),
                                          dguT_scales.data(), dgu.data(), offsets, kExperts, kRows,
                                          2 * I, true, stream);
  }, kReps), bwd_bytes);
}

// The optimizer over one layer's stacked expert matrix [rows, cols] (fp32 master, bf16 moments):
// the weight quantizer alone, AdamW alone, and AdamW fused with the quantizer.
void time_weight_update(BandwidthReport& report, cuda::CudaTimer& timer, cudaStream_t stream,
                        int64_t rows, int64_t cols) {
  const int64_t n = rows * cols, blocks = (rows / kFp8BlockSize) * (cols / kFp8BlockSize);
  cuda::DeviceBuffer<float> w(static_cast<size_t>(n)), grad(static_cast<size_t>(n)),
      scales(static_cast<size_t>(blocks)), scalesT(static_cast<size_t>(blocks));
  cuda::DeviceBuffer<bf16> m(static_cast<size_t>(n)), v(static_cast<size_t>(n));
  cuda::DeviceBuffer<uint8_t> q(static_cast<size_t>(n)), qT(static_cast<size_t>(n));
  fill_normal(w.data(), n, 14, 0.02f);
  fill_normal(grad.data(), n, 15, 1e-3f);
  FRUGAL_CUDA_CHECK(cudaMemset(m.data(), 0, m.bytes()));
  FRUGAL_CUDA_CHECK(cudaMemset(v.data(), 0, v.bytes()));
  const std::string shape = shape_of(rows, cols);
  const double codes = 2.0 * static_cast<double>(n) + 8.0 * static_cast<double>(blocks);
  const double quant_bytes = 4.0 * static_cast<double>(n) + codes;
  const double update_bytes = 20.0 * static_cast<double>(n);  // w rw, m rw, v rw, grad r
  cuda::AdamWStep step;
  step.lr = 1e-4f;
  step.weight_decay = 0.1f;

  report.add("quantize_weight_128x128 +transpose", "fp32", shape, timer.median_us([&] {
    cuda::quantize_weight_128x128_with_transpose(q.data(), scales.data(), qT.data(),
                                                 scalesT.data(), w.data(), rows, cols, true,
                                                 stream);
  }, kReps), quant_bytes);

  cuda::AdamWSegment segment;
  segment.w = w.data();
  segment.m = m.data();
  segment.v = v.data();
  segment.grad = grad.data();
  segment.count = n;
  segment.weight_decay = step.weight_decay;
  cuda::DeviceBuffer<uint8_t> multi_table(cuda::adamw_multi_table_bytes(1));
  const cuda::AdamWMultiTable multi = cuda::adamw_multi_prepare<bf16>(
      &segment, 1, multi_table.data(), multi_table.bytes(), stream);
  report.add("adamw_update_multi", "bf16m", shape, timer.median_us([&] {
    cuda::adamw_update_multi<bf16>(multi, nullptr, step, stream);
  }, kReps), update_bytes);
  report.add("adamw_update_multi, then quantize", "bf16m", shape, timer.median_us([&] {
    cuda::adamw_update_multi<bf16>(multi, nullptr, step, stream);
    cuda::quantize_weight_128x128_with_transpose(q.data(), scales.data(), qT.data(),
                                                 scalesT.data(), w.data(), rows, cols, true,
                                                 stream);
  }, kReps), update_bytes + codes);

  cuda::AdamWFp8Segment fp8_segment;
  fp8_segment.w = w.data();
  fp8_segment.m = m.data();
  fp8_segment.v = v.data();
  fp8_segment.grad = grad.data();
  fp8_segment.rows = rows;
  fp8_segment.cols = cols;
  fp8_segment.weight_decay = step.weight_decay;
  fp8_segment.q = q.data();
  fp8_segment.scales = scales.data();
  fp8_segment.qT = qT.data();
  fp8_segment.qT_stride = rows;
  fp8_segment.scalesT = scalesT.data();
  fp8_segment.scalesT_stride = rows / kFp8BlockSize;
  cuda::DeviceBuffer<uint8_t> fp8_table(cuda::adamw_fp8_table_bytes(1));
  const cuda::AdamWFp8Table fused = cuda::adamw_fp8_prepare<bf16>(
      &fp8_segment, 1, fp8_table.data(), fp8_table.bytes(), stream);
  report.add("adamw_update_fp8 (fused)", "bf16m", shape, timer.median_us([&] {
    cuda::adamw_update_fp8<bf16>(fused, nullptr, step, true, stream);
  }, kReps), update_bytes + codes);
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

    // 64 groups of 3072 rows.
    std::vector<int64_t> host_offsets(kExperts + 1);
    for (int64_t g = 0; g <= kExperts; ++g) host_offsets[static_cast<size_t>(g)] = g * (kRows / kExperts);
    cuda::DeviceBuffer<int64_t> offsets(host_offsets);
    time_dense_dual(report, timer, stream);
    for (const int64_t cols : {kHidden, 2 * kInter, kInter})
      time_activation_quantizers(report, timer, stream, offsets.data(), cols);
    time_swiglu(report, timer, stream);
    time_fused_swiglu(report, timer, stream, offsets.data());
    time_weight_update(report, timer, stream, kExperts * 2 * kInter, kHidden);
    time_weight_update(report, timer, stream, kExperts * kHidden, kInter);
    FRUGAL_CUDA_CHECK(cudaStreamDestroy(stream));
    bench::write_json_argument(argc, argv, report.json(properties.name, {{"tokens", kTokens},
                                                           {"expert_rows", kRows},
                                                           {"experts", kExperts},
                                                           {"hidden", kHidden},
                                                           {"moe_inter", kInter}}));
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_fp8_ops_cuda: %s\n", e.what());
    return 1;
  }
  return 0;
}

#else  // a CPU-only build still compiles every bench/*.cc

#include <cstdio>

int main() {
  std::fprintf(stderr, "bench_fp8_ops_cuda: this build has no CUDA backend\n");
  return 1;
}

#endif
