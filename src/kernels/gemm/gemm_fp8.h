// CPU emulation of the block-scaled FP8 GEMM of gemm_cuda.h (gemm_fp8_nt): the reference the CUDA
// tests compare against.
//
//   C[M,N] = A[M,K] · B[N,K]^T + beta * C
//   A  E4M3 codes [M,K] row-major, 1x128 tile scales [ceil(K/128)][M] (kernels/quant/quant.h)
//   B  E4M3 codes [N,K] row-major, scales either 128x128 blocks [ceil(N/128)][ceil(K/128)]
//      (b_block_scaled) or 1x128 tiles [ceil(K/128)][N]
//   C  float [M,N] with leading dimension ldc
// Both operands are dequantized exactly (E4M3 value * scale, as cpu::dequantize_* do), the
// products are summed in double, and C = float(beta * C + sum). beta == 0 ignores C's old values.
#pragma once

#include <cstdint>

namespace frugal::cpu {

void gemm_fp8_nt_emulated(int64_t m, int64_t n, int64_t k, const uint8_t* a, const float* a_scales,
                          const uint8_t* b, const float* b_scales, bool b_block_scaled, float beta,
                          float* c, int64_t ldc);

}  // namespace frugal::cpu
