// Deferred weight-gradient work of one backward (zero-bubble W, spec §5.2): a module whose
// backward is given a WeightGradQueue computes its input gradients at once (B) and leaves its
// weight-gradient GEMMs (dW += dy^T · x) in the queue, each item owning what its GEMM reads:
//   fp32/bf16 GpuLinear / GpuGroupedLinear   copies of x [rows, in] and dy [rows, out] (the
//                                             caller's x and dy are freed during B)
//   fp8                                       the forward's x^T codes/scales (moved, no copy) and
//                                             dy^T codes/scales quantized in B
//   grouped                                   plus the expert row offsets (device, and host when
//                                             the cuBLASLt calls need them)
// run() (W) replays the items in the order B queued them, on the context's stream, and frees them.
// Each item is the GEMM the immediate backward would have run, on bitwise equal operands, so a
// weight's gradient gets the same += sequence (the same bits) as long as every W of a stage runs
// in the order of its B's (micro-batch order for the pipeline schedules).
//
// Weight gradients that stay in B (never queued): RMSNorm weights, the MoE router's gate (fp32,
// small), the token embedding, and the output head (its Wgrad would hold dlogits [rows, vocab]
// until W).
// CUDA builds only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/device_context.h"

namespace frugal::gpu {

class WeightGradQueue {
 public:
  WeightGradQueue() = default;
  WeightGradQueue(const WeightGradQueue&) = delete;
  WeightGradQueue& operator=(const WeightGradQueue&) = delete;
  WeightGradQueue(WeightGradQueue&&) noexcept = default;
  WeightGradQueue& operator=(WeightGradQueue&&) noexcept = default;

  // Queues `work` (callable as work(cuda::DeviceContext&), move-only captures allowed) that holds
  // `bytes_held` bytes of device memory until it has run.
  template <class Work>
  void defer(size_t bytes_held, Work&& work) {
    items_.push_back(std::make_unique<Item<std::decay_t<Work>>>(std::forward<Work>(work)));
    bytes_held_ += bytes_held;
  }

  // Runs every queued item in order on ctx's stream and frees them; returns how many ran.
  int64_t run(cuda::DeviceContext& ctx);

  bool empty() const { return items_.empty(); }
  int64_t size() const { return static_cast<int64_t>(items_.size()); }
  // Device bytes the queued items hold (their operand copies / FP8 caches).
  size_t bytes_held() const { return bytes_held_; }

 private:
  struct ItemBase {
    virtual ~ItemBase() = default;
    virtual void run(cuda::DeviceContext& ctx) = 0;
  };
  template <class Work>
  struct Item final : ItemBase {
    explicit Item(Work&& w) : work(std::move(w)) {}
    explicit Item(const Work& w) : work(w) {}
    void run(cuda::DeviceContext& ctx) override { work(ctx); }
    Work work;
  };

  std::vector<std::unique_ptr<ItemBase>> items_;
  size_t bytes_held_ = 0;
};

// A device copy of n elements of `src` (the operands a deferred GEMM keeps), on ctx's stream.
template <class E>
cuda::DeviceArray<E> device_copy(cuda::DeviceContext& ctx, const E* src, int64_t n);

}  // namespace frugal::gpu
