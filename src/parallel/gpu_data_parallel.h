// Data-parallel gradient summation on GPUs: the fp32 gradients of one model replica per rank are
// summed over the data-parallel group through NCCL (an NCCL Communicator, nccl_communicator.h),
// in place, so every rank ends with the same summed gradient (NCCL's all-reduce hands every rank
// the same result) and runs the same optimizer step.
//
// The gradient arrays (device pointers + element counts, possibly overlapping) are first merged
// into their union of disjoint address ranges ("spans"). Arrays that only touch stay apart: two
// blocks of the caching allocator can be adjacent in address space and still be different
// cudaMalloc allocations, and no copy or collective may cross one. Spans of at least
// `bucket_elements` are all-reduced in place; smaller ones are packed, in span order, into a
// staging bucket of `bucket_elements` floats, which is all-reduced whole and copied back (so a
// model of many small tensors costs a few collectives per step, not one per tensor).
// Every rank must list the same tensors in the same order (e.g. its model's parameter order): the
// spans keep that order, never the process's own address order, since the bucket is summed
// element by element across ranks and two ranks' allocations may lie in different address order
// (a process that made and freed other device allocations before, e.g. a one-GPU run on rank 0
// only, gets other addresses; packing in address order then summed one tensor's gradient into
// another's on the other rank). Copies run on the context's
// stream; the communicator must have that stream as its input stream (set_input_stream), and each
// of its operations returns complete, so the copies back are ordered after it.
//
// This is the GPU engine's all-reduce path (train.gpu_zero1 = false) and its expert_dp sums; the
// default data parallelism is ZeRO-1 (parallel/gpu_zero1.h: reduce-scatter, sharded AdamW,
// all-gather).
//
// Sums of two ranks are exact in any order (a + b); with more ranks NCCL's order (not rank order).
// Only for builds with CUDA and NCCL (FRUGAL_HAVE_NCCL).
#pragma once

#include <cstdint>
#include <vector>

#include "core/device_context.h"
#include "parallel/communicator.h"

namespace frugal::gpu {

struct DeviceSpan {
  float* data = nullptr;  // device
  int64_t count = 0;
};

// The union of `arrays` as disjoint spans: overlapping arrays merged, touching ones kept apart,
// empty arrays dropped. Ordered by the position in `arrays` of each span's first array (not by
// address), so the order does not depend on where this process's allocations happen to lie.
std::vector<DeviceSpan> merge_device_spans(std::vector<DeviceSpan> arrays);

class GradientAllReducer {
 public:
  static constexpr int64_t kDefaultBucketElements = int64_t{1} << 24;  // 64 MiB of fp32

  // `ctx` and `comm` must outlive the reducer; the arrays keep their addresses. Collective over
  // `comm` (one small all-reduce checks that every rank has the same span sizes in the same order).
  GradientAllReducer(cuda::DeviceContext& ctx, Communicator& comm, std::vector<DeviceSpan> arrays,
                     int64_t bucket_elements = kDefaultBucketElements);

  // Every array becomes its sum over the ranks of `comm` (collective).
  void all_reduce();

  int64_t spans() const { return static_cast<int64_t>(spans_.size()); }
  int64_t collectives_per_call() const { return collectives_; }  // all-reduces per all_reduce()

 private:
  void flush(size_t first, size_t end, int64_t elements);
  // Collective: throws unless every rank has the same span sizes in the same order.
  void check_same_layout_on_every_rank();

  cuda::DeviceContext& ctx_;
  Communicator& comm_;
  std::vector<DeviceSpan> spans_;
  int64_t bucket_elements_;
  cuda::DeviceArray<float> bucket_;  // staging of the small spans
  int64_t collectives_ = 0;
};

}  // namespace frugal::gpu
