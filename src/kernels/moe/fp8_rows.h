// Moving FP8 activation rows and their 1x128 scales between layouts (the FP8 dispatch of expert
// parallelism, spec §5: the all-to-all-v carries E4M3 rows plus scales under the fp8 recipe).
// Pure copies: no arithmetic touches a code or a scale, so what arrives is bit for bit what was
// quantized (kernels/quant/quant.h: q [rows, cols] E4M3, scales [ceil(cols/128)][rows]).
//
//   gather_byte_rows  dst[r*dst_stride .. +row_bytes) = src[s*src_stride .. +row_bytes) with
//                     s = index[r] (index null: s = r); s < 0 writes zero bytes (E4M3 +0)
//   gather_scales     dst[r*dst_row_stride + t*dst_tile_stride] =
//                       src[s*src_row_stride + t*src_tile_stride]   (t < tiles)
//                     with s as above; s < 0 writes pad_scale (the scale quantize_act_1x128 gives
//                     a row of zeros: fp8_scale_from_amax(0, power_of_two))
// Strides are in elements (bytes / floats). Device pointers; asynchronous on `stream`.
#pragma once

#ifdef FRUGAL_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>

namespace frugal::cuda {

void gather_byte_rows(uint8_t* dst, int64_t dst_stride, const uint8_t* src, int64_t src_stride,
                      const int32_t* index, int64_t rows, int64_t row_bytes, cudaStream_t stream);

void gather_scales(float* dst, int64_t dst_row_stride, int64_t dst_tile_stride, const float* src,
                   int64_t src_row_stride, int64_t src_tile_stride, const int32_t* index,
                   int64_t rows, int64_t tiles, float pad_scale, cudaStream_t stream);

}  // namespace frugal::cuda
#endif
