// The AdamW update fused with the FP8 weight refresh (adamw_update_fp8, see adamw_cuda.h): one
// 256-thread block per 128x128 block of a weight region kept in FP8.
//
// Thread layout (quant_weight_block.cuh): lane l of warp k owns columns 4l..4l+3 of rows k, k+8,
// ..., k+120 of the block. Each thread loads w, m, v, grad of its 64 elements (4 at a time: float4
// / 8-byte bf16 packs on the vector path; 2 rows' loads in flight), applies detail::adamw_element
// (adamw_element.cuh: the multi-tensor kernel's element update, so w, m, v are the same bits),
// stores w, m, v, then reads its updated w back from L2 (it just wrote them: the DRAM traffic is
// the update's alone) and detail::quantize_weight_block (the device code of
// quantize_weight_128x128_with_transpose) takes the block amax, the scale, and writes the codes of
// the block and of its transpose with both scales. One launch instead of the update and the
// refresh's per-matrix quantizer launches.
//
// The table (adamw_fp8_prepare, once per segment list): one 112-byte record per non-empty segment,
// then first_block[segments + 1] (int64); a thread block finds its segment by binary search. The
// vector path is chosen per segment (w, grad 16-byte aligned, m, v aligned to 4 moments, q 4-byte).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "kernels/adamw/adamw_cuda.h"
#include "kernels/adamw/adamw_element.cuh"
#include "kernels/cast/vector_access.cuh"
#include "kernels/quant/quant.h"
#include "kernels/quant/quant_weight_block.cuh"

namespace frugal::cuda {
namespace {

using detail::AdamWConstants;
using detail::aligned_to;
using detail::kWeightPasses;
using detail::kWeightRowsPerPass;

constexpr int kThreads = detail::kWeightBlockThreads;

using detail::text;

struct Fp8Record {
  float* w;
  void* m;
  void* v;
  const float* grad;
  uint8_t* q;
  float* scales;
  uint8_t* qT;
  float* scalesT;
  int64_t rows, cols, qT_stride, scalesT_stride;
  double weight_decay;  // the segment's float weight decay, widened (exact)
  int64_t vector;       // 1: the vector path's alignments hold
};
static_assert(sizeof(Fp8Record) == 112, "Fp8Record is 112 bytes (the table layout)");

// 4 consecutive values at p widened to fp32 (kVector: p aligned to 4 * sizeof(T)).
template <bool kVector, class T>
__device__ __forceinline__ void load4(float (&v)[4], const T* p) {
  if (kVector) {
    detail::load_pack<T, 4>(v, p);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = detail::to_float(p[i]);
  }
}
// 4 values narrowed to T (round to nearest even; exact for moments already rounded to M).
template <bool kVector, class T>
__device__ __forceinline__ void store4(T* p, const float (&v)[4]) {
  if (kVector) {
    detail::store_pack<T, 4>(p, v);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = detail::from_float<T>(v[i]);
  }
}

template <class M, bool kVector>
__device__ __forceinline__ void update_and_quantize_block(const Fp8Record& s, int64_t block,
                                                          double clip_d, const AdamWConstants& c,
                                                          bool power_of_two_scale) {
  const int64_t col_blocks = s.cols / kFp8BlockSize;
  const int64_t row_block = block / col_blocks;
  const int64_t col_block = block % col_blocks;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t row0 = row_block * kFp8BlockSize;
  const int64_t col = col_block * kFp8BlockSize + lane * 4;
  M* m = static_cast<M*>(s.m);
  M* v = static_cast<M*>(s.v);
  // The same product the multi-tensor kernel forms (lr * weight_decay in double).
  const double decay = __dmul_rn(c.lr, s.weight_decay);

  // The update, kPassesInFlight rows of the thread at a time: their loads are all issued
  // before the arithmetic (one row at a time left too few bytes in flight).
  constexpr int kPassesInFlight = 2;
  static_assert(kWeightPasses % kPassesInFlight == 0, "whole groups of passes");
#pragma unroll 1
  for (int k0 = 0; k0 < kWeightPasses; k0 += kPassesInFlight) {
    float wv[kPassesInFlight][4], mv[kPassesInFlight][4], vv[kPassesInFlight][4],
        gv[kPassesInFlight][4];
#pragma unroll
    for (int j = 0; j < kPassesInFlight; ++j) {
      const int64_t offset = (row0 + warp + kWeightRowsPerPass * (k0 + j)) * s.cols + col;
      load4<kVector>(wv[j], s.w + offset);
      load4<kVector>(mv[j], m + offset);
      load4<kVector>(vv[j], v + offset);
      load4<kVector>(gv[j], s.grad + offset);
    }
#pragma unroll
    for (int j = 0; j < kPassesInFlight; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        detail::adamw_element<M>(wv[j][i], mv[j][i], vv[j][i], gv[j][i], clip_d, c, decay);
      const int64_t offset = (row0 + warp + kWeightRowsPerPass * (k0 + j)) * s.cols + col;
      store4<kVector>(s.w + offset, wv[j]);
      store4<kVector>(m + offset, mv[j]);
      store4<kVector>(v + offset, vv[j]);
    }
  }
  // The updated block back in registers for the quantizer: each thread reads the elements it
  // wrote itself (no barrier needed), through L2 (ld.global.cg: the compiler cannot keep the
  // stored values live instead, which would bring back the register pressure).
  float w_new[kWeightPasses][4];
#pragma unroll
  for (int k = 0; k < kWeightPasses; ++k) {
    const float* p = s.w + (row0 + warp + kWeightRowsPerPass * k) * s.cols + col;
    if (kVector) {
      const float4 f = __ldcg(reinterpret_cast<const float4*>(p));
      w_new[k][0] = f.x;
      w_new[k][1] = f.y;
      w_new[k][2] = f.z;
      w_new[k][3] = f.w;
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) w_new[k][i] = __ldcg(p + i);
    }
  }
  detail::quantize_weight_block<kVector, true>(
      w_new, s.q + row0 * s.cols + col_block * kFp8BlockSize, s.cols,
      s.scales + row_block * col_blocks + col_block,
      s.qT + col_block * kFp8BlockSize * s.qT_stride + row0, s.qT_stride,
      s.scalesT + col_block * s.scalesT_stride + row_block, static_cast<int>(kFp8BlockSize),
      static_cast<int>(kFp8BlockSize), power_of_two_scale);
}

template <class M>
__global__ void __launch_bounds__(kThreads, 2)
    adamw_fp8_kernel(const Fp8Record* __restrict__ records,
                     const int64_t* __restrict__ first_block, int64_t segments,
                     const float* __restrict__ clip_scale, AdamWConstants c,
                     bool power_of_two_scale) {
  const float clip = clip_scale != nullptr ? *clip_scale : 1.0f;
  if (clip == 0.0f) return;  // a skipped step (non-finite gradient norm): the whole block leaves
  const double clip_d = clip;
  const int64_t block = blockIdx.x;
  int64_t low = 0, high = segments - 1;  // the last j with first_block[j] <= block
  while (low < high) {
    const int64_t middle = (low + high + 1) / 2;
    if (first_block[middle] <= block)
      low = middle;
    else
      high = middle - 1;
  }
  const Fp8Record s = records[low];
  // s.vector is the same for the whole thread block, so both paths synchronize uniformly.
  if (s.vector != 0)
    update_and_quantize_block<M, true>(s, block - first_block[low], clip_d, c, power_of_two_scale);
  else
    update_and_quantize_block<M, false>(s, block - first_block[low], clip_d, c, power_of_two_scale);
}

}  // namespace

size_t adamw_fp8_table_bytes(int64_t count) {
  return detail::segment_table_bytes<Fp8Record>(count, "cuda::adamw_fp8_table_bytes");
}

template <class M>
AdamWFp8Table adamw_fp8_prepare(const AdamWFp8Segment* segments, int64_t count,
                                void* table_memory, size_t table_bytes, cudaStream_t stream) {
  ADAMW_REQUIRE(count >= 0 && (count == 0 || segments != nullptr),
                "cuda::adamw_fp8_prepare: bad segment list (" + text(count) + " segments)");
  std::vector<Fp8Record> records;
  records.reserve(static_cast<size_t>(count));
  std::vector<int64_t> first_block{0};
  for (int64_t i = 0; i < count; ++i) {
    const AdamWFp8Segment& s = segments[i];
    const std::string who = "cuda::adamw_fp8_prepare: segment " + text(i) + " [" + text(s.rows) +
                            ", " + text(s.cols) + "]";
    ADAMW_REQUIRE(s.rows >= 0 && s.cols >= 0 && s.rows % kFp8BlockSize == 0 &&
                      s.cols % kFp8BlockSize == 0,
                  who + ": rows and cols must be multiples of 128");
    ADAMW_REQUIRE(s.weight_decay >= 0.0f && std::isfinite(s.weight_decay),
                  who + " has weight decay " + std::to_string(s.weight_decay));
    if (s.rows == 0) continue;
    ADAMW_REQUIRE(s.cols > 0, who + ": no columns");
    ADAMW_REQUIRE(s.w != nullptr && s.m != nullptr && s.v != nullptr && s.grad != nullptr &&
                      s.q != nullptr && s.scales != nullptr && s.qT != nullptr &&
                      s.scalesT != nullptr,
                  who + " has a null array");
    ADAMW_REQUIRE(s.qT_stride >= s.rows && s.scalesT_stride >= s.rows / kFp8BlockSize,
                  who + ": transposed strides " + text(s.qT_stride) + " / " +
                      text(s.scalesT_stride) + " are shorter than the region");
    Fp8Record r{};
    r.w = s.w;
    r.m = s.m;
    r.v = s.v;
    r.grad = s.grad;
    r.q = s.q;
    r.scales = s.scales;
    r.qT = s.qT;
    r.scalesT = s.scalesT;
    r.rows = s.rows;
    r.cols = s.cols;
    r.qT_stride = s.qT_stride;
    r.scalesT_stride = s.scalesT_stride;
    r.weight_decay = static_cast<double>(s.weight_decay);
    r.vector = aligned_to(s.w, 16) && aligned_to(s.grad, 16) && aligned_to(s.m, 4 * sizeof(M)) &&
                       aligned_to(s.v, 4 * sizeof(M)) && aligned_to(s.q, 4)
                   ? 1
                   : 0;
    records.push_back(r);
    first_block.push_back(first_block.back() +
                          (s.rows / kFp8BlockSize) * (s.cols / kFp8BlockSize));
  }
  AdamWFp8Table table;
  table.device = table_memory;
  table.segments = static_cast<int64_t>(records.size());
  table.blocks = first_block.back();
  table.moment_bytes = static_cast<int>(sizeof(M));
  ADAMW_REQUIRE(table.blocks <= 0x7FFFFFFF,
                "cuda::adamw_fp8_prepare: too many blocks (" + text(table.blocks) + ")");
  if (records.empty()) return table;
  detail::upload_segment_table(table_memory, table_bytes, records, first_block, stream,
                               "cuda::adamw_fp8_prepare");
  return table;
}

template <class M>
void adamw_update_fp8(const AdamWFp8Table& table, const float* clip_scale, const AdamWStep& step,
                      bool power_of_two_scale, cudaStream_t stream) {
  const AdamWConstants c = detail::adamw_constants(step, "adamw_update_fp8");
  ADAMW_REQUIRE(table.moment_bytes == static_cast<int>(sizeof(M)),
                "cuda::adamw_update_fp8: the table was prepared for " +
                        text(table.moment_bytes) + "-byte moments, not " +
                        text(static_cast<int64_t>(sizeof(M))));
  ADAMW_REQUIRE(table.segments >= 0 && table.blocks >= table.segments &&
                        table.blocks <= 0x7FFFFFFF,
                "cuda::adamw_update_fp8: table not prepared (" + text(table.segments) +
                        " segments, " + text(table.blocks) + " blocks)");
  if (table.segments == 0) return;
  FRUGAL_CUDA_REQUIRE(table.device != nullptr, "cuda::adamw_update_fp8: table without memory");
  const auto* records = static_cast<const Fp8Record*>(table.device);
  const auto* first_block = reinterpret_cast<const int64_t*>(records + table.segments);
  adamw_fp8_kernel<M><<<static_cast<unsigned>(table.blocks), kThreads, 0, stream>>>(
      records, first_block, table.segments, clip_scale, c, power_of_two_scale);
  FRUGAL_CUDA_CHECK_LAUNCH();
}

template AdamWFp8Table adamw_fp8_prepare<float>(const AdamWFp8Segment*, int64_t, void*, size_t,
                                                cudaStream_t);
template AdamWFp8Table adamw_fp8_prepare<__nv_bfloat16>(const AdamWFp8Segment*, int64_t, void*,
                                                        size_t, cudaStream_t);
template void adamw_update_fp8<float>(const AdamWFp8Table&, const float*, const AdamWStep&, bool,
                                      cudaStream_t);
template void adamw_update_fp8<__nv_bfloat16>(const AdamWFp8Table&, const float*,
                                              const AdamWStep&, bool, cudaStream_t);

}  // namespace frugal::cuda
