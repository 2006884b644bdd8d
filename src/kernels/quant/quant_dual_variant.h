// Which kernel cuda::quantize_act_1x128_dual(_grouped) (quant.h) runs: the candidates of one
// optimization, all bit-identical in output, selectable at run time so that one GPU run of the
// test and the bench (test_kernels_quant_dual_cuda, bench_fp8_ops_cuda) checks and times every
// one of them. The selection starts as the environment variable FRUGAL_DUAL_QUANT_VARIANT (read
// once; unset = 0) and may be overridden by set_dual_quant_variant.
//   0  one 256-thread block per 128 x 128 tile, values staged in shared memory (quant_dual_cuda.cu)
//   1  one 256-thread block per tile, each thread 8 rows x 8 columns in registers, transposed
//      codes staged in a swizzled shared tile and written 16 bytes at a time (quant_dual_fast.cu)
//   2  as 1 with 512 threads of 4 rows x 8 columns (half the work and latency per thread)
//   3  as 2 with persistent blocks (a grid of what fits at once) that copy their next tile into
//      shared memory (cp.async, two stages) while they quantize the current one
// CUDA builds only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

constexpr int kDualQuantVariants = 4;

// The variant the dual quantizer runs now (0 .. kDualQuantVariants-1).
int dual_quant_variant();
// Selects `variant` for every later call (throws frugal::Error when out of range); -1 returns to
// the environment's choice.
void set_dual_quant_variant(int variant);

namespace detail {
// The kernels of variants 1..3 (quant_dual_fast.cu); arguments as
// quantize_act_1x128_dual(_grouped), already checked by it (offsets == nullptr and groups == 0
// for the plain form).
void launch_dual_quant_fast(int variant, uint8_t* q, float* scales, uint8_t* qT, float* scalesT,
                            const __nv_bfloat16* x, const int64_t* offsets, int64_t groups,
                            int64_t rows, int64_t cols, bool power_of_two_scale,
                            cudaStream_t stream);
}  // namespace detail

}  // namespace frugal::cuda
