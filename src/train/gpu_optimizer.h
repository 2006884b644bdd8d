// AdamW on the GPU over GpuTransformer::params() (or any fixed device parameter list with a refresh
// callback, e.g. a ParamRegistry's holding a rank's pipeline stages): the update rule, clipping and skip rule of the
// CPU reference (train/adamw.h), run by the kernels of kernels/adamw/adamw_cuda.h.
//
// Per optimizer step:
//   1. grad_norm_and_clip over every trainable gradient (a table prepared once: two launches), in
//      a fixed order (deterministic): the global L2 norm, clip_scale = min(1, grad_clip / (norm +
//      1e-6)) (1 when grad_clip = 0) and a non-finite flag, all on the device.
//   2. One 12-byte device->host copy (norm, clip scale, flag) and a stream synchronize: the only
//      host round trip of the step. A non-finite norm skips the update: weights, moments and the
//      update count stay as they were, skipped_steps() counts it.
//   3. Otherwise the update count t increases and one fused AdamW launch (adamw_update_multi)
//      updates every trainable tensor (bias-corrected with t, decoupled weight decay only where
//      DeviceParam::weight_decay, the clip scale read on the device; bit-identical to one
//      adamw_update per tensor), then GpuTransformer::weights_updated() (or the refresh callback)
//      refreshes the BF16 / FP8 weight copies.
//      Fused refresh (the default; FRUGAL_FUSED_REFRESH=0 turns it off, read when the optimizer
//      is made): the copies of a bf16 or fp8 GpuWeight whose whole storage is trainable
//      in this list (DeviceParam::copies, model/gpu/gpu_linear.h) are written by the update
//      itself: the BF16 copy
//      by adamw_update_multi (weight_bf16), the FP8 codes and scales of both orientations by a
//      second launch, adamw_update_fp8, over the weight's 128x128 blocks (when every parameter in
//      it covers whole 128-row blocks of one matrix). Those weights are flagged written_by_optimizer
//      for the refresh callback only, so its GpuWeight::refresh skips them; everything else (fp32,
//      norms, weights not fully covered) is updated by the first launch and refreshed as before.
//      The copies are the same bits either way. Profiler sections: "optimizer.update" (the
//      launches), "optimizer.refresh" (the callback: what is left to rebuild). Buffers (the routing biases) are never touched here. The launch's segment
//      table (pointers, sizes, decay of every tensor) is built in the constructor and rebuilt only
//      if a parameter's value or gradient pointer changes.
// State: fp32 master weights live in the model. Moments m, v (same element count as each
// parameter) are fp32 under the fp32 recipe (the CPU reference's precision) and BF16 under bf16
// and fp8 (spec §4.3: computed in fp32, stored rounded to nearest even). They live in two device
// arrays, one slice per trainable tensor in params() order, each slice starting on a 128-element
// (>= 256-byte) boundary.
//
// Checkpoints use the CPU format: download() writes the moments as fp32 into a host AdamW<float>
// of the same model (and its update count), upload() reads them back (rounding to BF16 when the
// moments are BF16, which is exact for moments that came from BF16). save_checkpoint /
// load_checkpoint_training (train/checkpoint.h) then read and write optimizer.safetensors exactly
// as for the CPU trainer, so CPU and GPU checkpoints are interchangeable.
//
// Only for builds with the CUDA backend (FRUGAL_HAVE_CUDA).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/device_context.h"
#include "kernels/adamw/adamw_cuda.h"
#include "model/gpu/gpu_transformer.h"
#include "train/adamw.h"
#include "train/train_config.h"

namespace frugal::gpu {

struct WeightCopyState;  // model/gpu/gpu_linear.h

// The clip factor of a global gradient norm computed on the host (the rule grad_norm_and_clip
// applies on the device): min(1, grad_clip / (norm + 1e-6)), 1 when grad_clip = 0.
inline float clip_scale_for_norm(double grad_norm, double grad_clip) {
  return grad_clip > 0 ? std::min(1.0f, static_cast<float>(grad_clip / (grad_norm + 1e-6))) : 1.0f;
}

class GpuAdamW {
 public:
  struct StepInfo {
    double grad_norm = 0;   // global L2 norm of the gradients before clipping (inf/nan: skipped)
    double clip_scale = 1;  // factor applied to the gradients (0 when skipped)
    bool skipped = false;   // the norm was not finite: nothing was updated
  };

  // Zero moments for every trainable parameter of `model` (whose params() layout is fixed from
  // here); BF16 moments unless model.recipe() is Recipe::Fp32. Throws on invalid settings like
  // the CPU AdamW. `ctx` and `model` must outlive the optimizer.
  GpuAdamW(cuda::DeviceContext& ctx, const OptimConfig& config, GpuTransformer& model);
  // The same over `params` (a list whose layout is fixed from here, e.g. ParamRegistry::params()),
  // BF16 moments unless `recipe` is Recipe::Fp32; `refresh` is called after every applied update
  // (it rebuilds the weight copies). A caller that clips against a norm of its own (a model split
  // over ranks: pipeline or expert parallelism) scales the gradients itself and passes
  // config.grad_clip = 0. `ctx` and `params` must outlive the optimizer.
  GpuAdamW(cuda::DeviceContext& ctx, const OptimConfig& config, std::vector<DeviceParam>& params,
           Recipe recipe, std::function<void()> refresh);
  ~GpuAdamW();
  GpuAdamW(const GpuAdamW&) = delete;
  GpuAdamW& operator=(const GpuAdamW&) = delete;

  // One update at learning rate `lr` from the accumulated gradients (read, not cleared).
  StepInfo step(double lr);

  const OptimConfig& config() const { return config_; }
  int64_t step_count() const { return step_count_; }  // updates applied (bias-correction t)
  int64_t skipped_steps() const { return skipped_steps_; }
  bool bf16_moments() const { return bf16_moments_; }
  int64_t trainable_tensors() const { return static_cast<int64_t>(slots_.size()); }
  bool fused_refresh() const { return fused_refresh_; }
  // Weights whose copies the update writes (0 when the fused refresh is off), and the 128x128
  // blocks the FP8 launch covers.
  int64_t fused_weights() const { return static_cast<int64_t>(fused_weights_.size()); }
  int64_t fused_fp8_blocks() const { return fp8_table_.blocks; }
  // Device bytes of the moments (m and v of every trainable tensor, slices padded as above).
  int64_t state_bytes() const {
    return 2 * moment_elements_ * static_cast<int64_t>(bf16_moments_ ? 2 : 4);
  }

  // Moments (as fp32) and the update count into / from a CPU AdamW built for the same model
  // (same trainable names and sizes in the same order; a mismatch is an error naming the tensor).
  void download(AdamW<float>& host) const;
  void upload(const AdamW<float>& host);

 private:
  struct Slot {
    size_t param = 0;    // index into model.params()
    int64_t offset = 0;  // first element of this tensor's moments
    int64_t count = 0;
  };
  const DeviceParam& param_of(const Slot& slot) const;
  void check_host_layout(const AdamW<float>& host, const char* what) const;
  void apply_updates(double lr);
  // The segments as the model's params() give them now: segments_ (one per slot, in slot order;
  // count 0 for a slot the FP8 launch updates), the FP8 launch's segments and the weights whose
  // copies the update writes.
  struct Plan {
    std::vector<cuda::AdamWSegment> segments;
    std::vector<cuda::AdamWFp8Segment> fp8_segments;
    std::vector<std::shared_ptr<WeightCopyState>> fused_weights;
  };
  Plan current_plan() const;
  void build_update_table(Plan plan);
  // The gradient-norm table (from grad_tensors_).
  void build_norm_table();
  // The update table and the gradient tables hold raw device pointers: if any trainable
  // parameter's value or gradient pointer differs from the table's (a host comparison per step),
  // rebuild them.
  void refresh_pointers();
  void copy_to_host(void* host, const void* device, size_t bytes) const;
  void copy_to_device(void* device, const void* host, size_t bytes);

  cuda::DeviceContext& ctx_;
  OptimConfig config_;
  std::vector<DeviceParam>& params_;
  std::function<void()> refresh_;
  bool bf16_moments_ = false;
  std::vector<Slot> slots_;
  int64_t moment_elements_ = 0;
  int64_t step_count_ = 0;
  int64_t skipped_steps_ = 0;
  cuda::DeviceArray<float> m_f32_, v_f32_;       // fp32 recipe
  cuda::DeviceArray<uint16_t> m_bf16_, v_bf16_;  // bf16 / fp8 recipes (BF16 bit patterns)
  std::vector<cuda::GradTensor> grad_tensors_;   // the trainable gradients, in slot order
  std::vector<cuda::AdamWSegment> segments_;     // what update_table_ was built from, slot order
  cuda::DeviceArray<uint8_t> update_table_memory_;
  cuda::AdamWMultiTable update_table_;
  bool fused_refresh_ = true;
  std::vector<std::shared_ptr<WeightCopyState>> fused_weights_;  // copies written by the update
  cuda::DeviceArray<uint8_t> fp8_table_memory_;
  cuda::AdamWFp8Table fp8_table_;
  cuda::DeviceArray<uint8_t> norm_workspace_;
  cuda::DeviceArray<uint8_t> norm_table_memory_;
  cuda::GradNormTable norm_table_;  // grad_tensors_ prepared: pass 1 in one launch
  cuda::DeviceArray<int32_t> scalars_;  // [0] norm (f32 bits), [1] clip scale, [2] flag
  struct PinnedScalars;
  std::unique_ptr<PinnedScalars> host_scalars_;  // page-locked copy target of scalars_
};

}  // namespace frugal::gpu
