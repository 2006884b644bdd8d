// The optimizer step on the GPU: one fused AdamW kernel over a tensor (adamw_update) or over a
// fixed list of tensors in one launch (adamw_update_multi), global gradient norm and clipping on
// the device, and the non-finite check that makes the trainer skip a step. adamw_update_fp8 fuses
// the update of weights kept in FP8 with their refresh (128x128-block codes and scales, both
// orientations), so the master weights are read once per step.
//
// Per element (decoupled weight decay, bias-corrected, as train/adamw.h):
//   g  = grad * clip_scale[0]
//   m  = beta1 m + (1-beta1) g          v = beta2 v + (1-beta2) g^2      (moments stored as M)
//   w -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w)
// Master weights w fp32; moments M = float (fp32 recipe, matches the CPU AdamW) or __nv_bfloat16
// (the bf16/fp8 recipes: computed in fp32, stored rounded to nearest even). `weight_bf16`, when
// not null, receives the updated weights in BF16 (the copy the bf16 GEMMs read).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace frugal::cuda {

struct AdamWStep {
  float lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0;
  int64_t step = 1;  // 1-based, for bias correction
};

template <class M>
void adamw_update(float* w, M* m, M* v, const float* grad, const float* clip_scale,
                  const AdamWStep& step, int64_t n, void* weight_bf16, cudaStream_t stream);

// ---- many tensors in one launch -----------------------------------------------------------------
// The same update over a list of tensors ("segments"), each with its own weight decay, in one
// kernel launch. Every element gets exactly adamw_update's arithmetic: the results are
// bit-identical to calling adamw_update once per segment (step.weight_decay = the segment's).
struct AdamWSegment {
  float* w = nullptr;           // [count] fp32 master weights (updated)
  void* m = nullptr;            // [count] first moments, of the M given to the calls below
  void* v = nullptr;            // [count] second moments, M
  const float* grad = nullptr;  // [count]
  void* weight_bf16 = nullptr;  // [count] __nv_bfloat16 copy of the updated weights, or null
  int64_t count = 0;            // 0 is allowed (the segment is left out)
  float weight_decay = 0;       // replaces AdamWStep::weight_decay for this segment (>= 0)
};

// A fixed segment list prepared for adamw_update_multi: a device table in caller-owned memory plus
// what the launcher needs on the host. Valid as long as that memory and the segments' arrays are;
// prepare again when any pointer or size changes.
struct AdamWMultiTable {
  const void* device = nullptr;  // the table (segment records, then the tile prefix)
  int64_t segments = 0;          // non-empty segments in the table
  int64_t tiles = 0;             // units of work (a block's share of one segment)
  int moment_bytes = 0;          // sizeof(M) the table was prepared for
};
// Device bytes the table needs for `count` segments (an upper bound: empty ones are left out).
size_t adamw_multi_table_bytes(int64_t count);
// Checks the segments (sizes >= 0, no null array in a non-empty one, weight_decay >= 0; errors name
// the segment index), writes the table into `table_memory` (16-byte aligned, at least
// adamw_multi_table_bytes(count) bytes) with a copy on `stream`, and synchronizes the stream (so
// `segments` may be released at once). Done once per segment list, not per step.
template <class M>
AdamWMultiTable adamw_multi_prepare(const AdamWSegment* segments, int64_t count,
                                    void* table_memory, size_t table_bytes, cudaStream_t stream);
// One launch: every segment of `table` updated as adamw_update<M> would (clip_scale as there: null
// means 1, exactly 0 skips the step and writes nothing). step.weight_decay is ignored.
template <class M>
void adamw_update_multi(const AdamWMultiTable& table, const float* clip_scale,
                        const AdamWStep& step, cudaStream_t stream);

// ---- the update fused with the FP8 weight refresh ----------------------------------------------
// A region of a weight kept in FP8 (128x128 blocks, with a transposed copy for Dgrad): `rows` x
// `cols` fp32 master weights (row-major, contiguous, both multiples of 128) that are whole blocks
// of one matrix W [out, in] of the weight. One thread block per 128x128 block updates its elements
// exactly as adamw_update_multi (bit-identical w, m, v), then quantizes the updated block exactly
// as quantize_weight_128x128_with_transpose (kernels/quant/quant.h; the same device code) and
// writes the codes and the scale of the block and of its transpose. Block (rb, cb) of the region
// (row block rb, column block cb):
//   codes       q[(128 rb + r) * cols + 128 cb + c]                 (the region's rows of W_q)
//   scale       scales[rb * (cols/128) + cb]                        (the region's rows of scales)
//   transposed  qT[(128 cb + c) * qT_stride + 128 rb + r]           (qT: W_q^T [in, out] at the
//   scale       scalesT[cb * scalesT_stride + rb]                    region's first column)
// so for a region starting at row `row0` of W (row0 % 128 == 0): q = W_q + row0 * in, scales =
// scales_W + row0/128 * in/128, qT = W_q^T + row0, qT_stride = out, scalesT = scalesT_W + row0/128,
// scalesT_stride = out/128.
struct AdamWFp8Segment {
  float* w = nullptr;           // [rows, cols] fp32 master weights (updated)
  void* m = nullptr;            // [rows, cols] first moments (M)
  void* v = nullptr;            // [rows, cols] second moments (M)
  const float* grad = nullptr;  // [rows, cols]
  int64_t rows = 0, cols = 0;   // multiples of 128 (0 rows: the segment is left out)
  float weight_decay = 0;       // >= 0
  uint8_t* q = nullptr;         // E4M3 codes, layout above
  float* scales = nullptr;
  uint8_t* qT = nullptr;
  int64_t qT_stride = 0;        // >= rows, a multiple of 128
  float* scalesT = nullptr;
  int64_t scalesT_stride = 0;   // >= rows / 128
};
struct AdamWFp8Table {
  const void* device = nullptr;  // segment records, then the block prefix
  int64_t segments = 0;          // non-empty segments
  int64_t blocks = 0;            // 128x128 blocks (thread blocks of the launch)
  int moment_bytes = 0;          // sizeof(M) the table was prepared for
};
// Device bytes of the table for `count` segments (an upper bound: empty ones are left out).
size_t adamw_fp8_table_bytes(int64_t count);
// Checks the segments (shapes multiples of 128, strides, non-null arrays, weight_decay >= 0; errors
// name the segment index), writes the table into `table_memory` (16-byte aligned, at least
// adamw_fp8_table_bytes(count) bytes) and synchronizes `stream`. Once per segment list.
template <class M>
AdamWFp8Table adamw_fp8_prepare(const AdamWFp8Segment* segments, int64_t count,
                                void* table_memory, size_t table_bytes, cudaStream_t stream);
// One launch over every block of `table`: update (clip_scale as adamw_update_multi: null means 1,
// exactly 0 skips the step and writes nothing, the FP8 copies included), then quantize with
// fp8_scale_from_amax(amax, power_of_two_scale). step.weight_decay is ignored.
template <class M>
void adamw_update_fp8(const AdamWFp8Table& table, const float* clip_scale, const AdamWStep& step,
                      bool power_of_two_scale, cudaStream_t stream);

// Sum of squares of many gradient tensors, in a fixed order (the same bits every run):
// pass 1 writes one partial per (tensor, chunk) into `partials`, pass 2 sums them in order.
struct GradTensor {
  const float* data;
  int64_t count;
};
// Device scratch for `tensors` tensors of these sizes.
size_t grad_norm_workspace_bytes(const GradTensor* tensors, int64_t count);
// Writes, on the device: norm[0] = sqrt(sum of squares) (fp32; inf/nan when a gradient is not
// finite), clip_scale[0] = min(1, max_norm / (norm + 1e-6)) (1 when max_norm <= 0; 0 when the norm
// is not finite, and then nonfinite[0] = 1 else 0). `tensors` is a host array; the kernel reads
// the list from its launch parameters, up to 128 tensors per pass-1 launch.
void grad_norm_and_clip(float* norm, float* clip_scale, int32_t* nonfinite,
                        const GradTensor* tensors, int64_t count, float max_norm, void* workspace,
                        cudaStream_t stream);

// The same with the tensor list prepared once (a fixed list, as the optimizer's): pass 1 is one
// launch however many tensors there are, and the partials, hence norm, clip scale and flag, are
// bit-identical to the form above for the same list. grad_norm_prepare checks the tensors (errors
// name the index), writes the table into `table_memory` (16-byte aligned, at least
// grad_norm_table_bytes(count) bytes) with a copy on `stream` and synchronizes the stream. The
// workspace is the same as above (grad_norm_workspace_bytes of the same list).
struct GradNormTable {
  const void* device = nullptr;  // tensor records, then the block prefix
  int64_t tensors = 0;           // non-empty tensors in the table
  int64_t blocks = 0;            // pass-1 blocks (= partials in the workspace)
};
size_t grad_norm_table_bytes(int64_t count);
GradNormTable grad_norm_prepare(const GradTensor* tensors, int64_t count, void* table_memory,
                                size_t table_bytes, cudaStream_t stream);
void grad_norm_and_clip(float* norm, float* clip_scale, int32_t* nonfinite,
                        const GradNormTable& table, float max_norm, void* workspace,
                        cudaStream_t stream);

}  // namespace frugal::cuda
