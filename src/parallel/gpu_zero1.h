// ZeRO-1 data parallelism on GPUs (spec §5.1): the AdamW moments are sharded over the
// data-parallel ranks, each rank updates only its shard of the fp32 master weights, and the
// updated values are all-gathered into every rank's model. The GPU counterpart of
// train/zero1.h (whose chunked layout it does not share: here a flat padded list, see below).
//
// Layout. The trainable tensors of `params`, in list order, are laid end to end in a flat fp32
// index space, each starting on a multiple of kAlign elements (the gaps are padding, always 0 in
// the collectives and never copied back). The flat length is padded to ranks * S; rank r owns the
// contiguous range [r*S, (r+1)*S) (NCCL's reduce-scatter and all-gather need equal counts). The
// shard is cut into buckets [k*B, k*B + len_k) (len_k = min(B, S - k*B)); bucket k of every rank
// forms one collective whose staging buffer holds rank r's part at r*len_k. The tensors are cut
// into "pieces" at shard and bucket boundaries; a piece knows its tensor, its offset in it, and its
// place in its bucket's staging buffer.
//
// A step:
//   reduce_scatter  per bucket: the staging buffer is zeroed, every piece's gradient copied in, and
//                   NCCL reduce-scatters it into this rank's flat gradient shard [S] (fp32).
//   step            the shard's L2 norm (cuda::grad_norm_and_clip over the shard), squared in
//                   double and summed over `norm_group` (a host communicator: rank order, every
//                   rank gets the same bits), plus the caller's extra squares (expert
//                   parallelism: the routed experts, which are not in `params`), its square root
//                   the global norm; a non-finite norm
//                   skips the step on every rank (nothing changes). Else clip_scale = min(1,
//                   grad_clip / (norm + 1e-6)) (1 when grad_clip = 0), one fused AdamW launch
//                   (cuda::adamw_update_multi) over this rank's pieces: the weights are the model's
//                   own fp32 values (updated in place), the gradients the flat shard, the moments
//                   this rank's shard (fp32 under Recipe::Fp32, else BF16) with each tensor's
//                   weight-decay flag; then per bucket this rank's updated pieces are packed and
//                   all-gathered, the other ranks' pieces copied back into the model, and `refresh`
//                   rebuilds the BF16/FP8 weight copies.
// Overlap (spec §5.1: "gradients reduce-scattered in buckets as backward produces them"; on unless
// FRUGAL_ZERO1_OVERLAP=0, zero1_overlap_enabled()). During the backward of a step's LAST
// micro-batch the engine reports the parameters whose gradients just became final
// (reduce_scatter_ready: a decoder layer's after its backward, everything else at the end; see
// GpuTransformer::forward_backward). A BucketReadiness (bucket_readiness.h) over the buckets'
// pieces' tensors says which buckets became ready; each is launched at once on a side stream
// of this optimizer, in the planner's order (ascending within one report):
//   side stream   waits for the compute stream's work so far (event: the gradients are final),
//                 then for the communicator's earlier operations (stream_wait_for_operations: the
//                 previous enqueued reduce-scatter has read the one staging buffer), zeroes and
//                 fills the staging buffer, and the reduce-scatter is enqueued
//                 (enqueue_reduce_scatter_sum, with the side stream as the input stream for the
//                 call) without waiting for it; the host returns to the backward at once.
//   reduce_scatter()  (the optimizer step) makes the compute stream wait for every enqueued
//                 operation, reduce-scatters the buckets not launched yet exactly as without
//                 overlap (ascending), and waits on the host (watchdog) for all of them.
// Same buckets, same staging contents, same NCCL calls on the same stream: the shard is bitwise
// what the non-overlapped path gives; only the bucket order and the time of launch differ
// (identical on every rank, since every rank makes the same calls).
//
// Memory per rank: moments 2 * S (about 1/ranks of a replica's), the gradient shard S (fp32), and
// the staging buffers B * (ranks + 1) fp32.
//
// Checkpoints use the single-process format: download() all-gathers the moment shards bucket by
// bucket (collective) into a whole host AdamW<float> on every rank; upload() takes this rank's
// shard from a whole host AdamW (local, no communication).
//
// Every rank must list the same tensors with the same sizes in the same order (checked once at
// construction). Only for builds with CUDA and NCCL; `comm` is an NCCL communicator whose input
// stream is the context's stream (set_input_stream).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "core/device_context.h"
#include "kernels/adamw/adamw_cuda.h"
#include "model/gpu/gpu_transformer.h"
#include "parallel/bucket_readiness.h"
#include "parallel/communicator.h"
#include "train/adamw.h"
#include "train/recipe.h"
#include "train/train_config.h"

namespace frugal::gpu {

// The overlap switch: on unless FRUGAL_ZERO1_OVERLAP=0 in the environment (read once);
// set_zero1_overlap overrides it for this process (std::nullopt: back to the environment).
bool zero1_overlap_enabled();
void set_zero1_overlap(std::optional<bool> on);

class GpuZero1Optimizer {
 public:
  static constexpr int64_t kDefaultBucketElements = int64_t{1} << 24;  // 64 MiB of fp32
  static constexpr int64_t kAlign = 32;  // flat offsets, S and B: multiples (16-byte vectors)

  struct StepInfo {
    double grad_norm = 0;
    double clip_scale = 1;
    bool skipped = false;
  };

  // Collective over `comm` (NCCL, the dp group) and `norm_group` (the same ranks, host). `ctx`,
  // `params`, `comm` and `norm_group` must outlive the optimizer.
  GpuZero1Optimizer(cuda::DeviceContext& ctx, const OptimConfig& config,
                    std::vector<DeviceParam>& params, Recipe recipe, std::function<void()> refresh,
                    Communicator& comm, Communicator& norm_group,
                    int64_t bucket_elements = kDefaultBucketElements);
  ~GpuZero1Optimizer();
  GpuZero1Optimizer(const GpuZero1Optimizer&) = delete;
  GpuZero1Optimizer& operator=(const GpuZero1Optimizer&) = delete;

  // Collective: the gradients summed over the ranks, this rank's shard kept (read, not cleared).
  // Only the buckets reduce_scatter_ready has not launched; then waits for all of them and starts
  // the next step's readiness.
  void reduce_scatter();
  // Collective (every rank: the same calls, the same indices, in the same order): the gradients of
  // params[i] for i in `final_params` will not change before this step's reduce_scatter; launches
  // (enqueues) every bucket this makes ready (see "Overlap"). Throws on an index outside params or
  // one already reported this step.
  void reduce_scatter_ready(std::span<const size_t> final_params);
  // Buckets launched by reduce_scatter_ready (before the optimizer step) in the last completed
  // reduce_scatter's step, and over the optimizer's life.
  int64_t early_buckets_last_step() const { return early_buckets_last_step_; }
  // Buckets reduce_scatter_ready has launched since the last reduce_scatter (this step so far).
  int64_t early_buckets_this_step() const { return enqueued_; }
  int64_t early_buckets_total() const { return early_buckets_total_; }
  // Collective: norm, clip, AdamW on the shard, all-gather of the updated weights (needs
  // reduce_scatter first). `extra_norm_squared` (the same on every rank) joins the global norm:
  // the squared norm of gradients outside this optimizer (under expert parallelism, the routed
  // experts' summed over the EP group), which the caller then clips by StepInfo::clip_scale.
  StepInfo step(double lr, double extra_norm_squared = 0.0);

  int64_t step_count() const { return step_count_; }
  int64_t skipped_steps() const { return skipped_steps_; }
  bool bf16_moments() const { return bf16_moments_; }
  int64_t shard_elements() const { return shard_; }
  int64_t total_elements() const { return total_; }  // trainable elements (no padding)
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Device bytes of the moments held here (m and v of the shard).
  int64_t state_bytes() const;

  // Collective over `comm`: every rank's `host` (an AdamW over the whole model, same trainable
  // names and sizes in the same order) receives every moment (as fp32) and the update count.
  void download(AdamW<float>& host);
  // This rank's shard of `host`'s moments and its update count (local).
  void upload(const AdamW<float>& host);

 private:
  struct Piece {
    size_t param = 0;     // index into params
    int64_t offset = 0;   // first element inside the tensor
    int64_t count = 0;
    int rank = 0;         // owner of the range
    int64_t stage = 0;    // position in the bucket's staging buffer (rank * len + within)
    int64_t shard = 0;    // position in the owner's shard
  };
  struct Bucket {
    int64_t start = 0;  // in the shard
    int64_t len = 0;
    std::vector<Piece> pieces;
  };
  void check_same_layout_on_every_rank();
  void check_host_layout(const AdamW<float>& host, const char* what) const;
  void build_update_table();
  bool pointers_moved() const;
  void* moment(int which, int64_t at) const;  // 0: m, 1: v
  void sync();
  void check_params_unchanged() const;
  // Copies the ranks' parts of `bucket`'s gradients into the staging buffer, on `stream`.
  void stage_bucket(const Bucket& bucket, cudaStream_t stream);
  void stage_and_reduce_scatter(const Bucket& bucket);  // blocking, on ctx.stream
  void launch_enqueued(const Bucket& bucket);           // on the side stream, not waited for
  void join_enqueued();  // ctx.stream waits for every enqueued operation (no host wait)

  cuda::DeviceContext& ctx_;
  OptimConfig config_;
  std::vector<DeviceParam>& params_;
  std::function<void()> refresh_;
  Communicator& comm_;
  Communicator& norm_group_;
  bool bf16_moments_ = false;
  int rank_ = 0, ranks_ = 1;
  std::vector<size_t> trainable_;  // indices of the trainable params, in order
  int64_t total_ = 0, shard_ = 0, bucket_elements_ = 0;
  std::vector<Bucket> buckets_;
  int64_t step_count_ = 0, skipped_steps_ = 0;
  cuda::DeviceArray<float> grad_shard_;          // [S]
  cuda::DeviceArray<float> stage_;               // [B * ranks]
  cuda::DeviceArray<float> send_stage_;          // [B]
  cuda::DeviceArray<float> m_f32_, v_f32_;       // [S], fp32 recipe
  cuda::DeviceArray<uint16_t> m_bf16_, v_bf16_;  // [S], bf16 / fp8 recipes
  std::vector<cuda::AdamWSegment> segments_;     // this rank's pieces, as the table was built
  std::vector<const float*> table_values_, table_grads_;  // params' pointers then
  cuda::DeviceArray<uint8_t> update_table_memory_;
  cuda::AdamWMultiTable update_table_;
  cuda::DeviceArray<uint8_t> norm_workspace_;
  cuda::DeviceArray<float> scalars_;    // [0] norm, [1] clip scale (device), [2] clip for AdamW
  cuda::DeviceArray<int32_t> flag_;     // [1] non-finite
  // Overlap: which buckets are ready, the side stream and its fork event (made on first use).
  BucketReadiness readiness_;
  struct SideStream;
  std::unique_ptr<SideStream> side_;
  int64_t enqueued_ = 0;  // buckets enqueued this step, not yet waited for
  int64_t early_buckets_last_step_ = 0, early_buckets_total_ = 0;
};

}  // namespace frugal::gpu
