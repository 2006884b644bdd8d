// GpuAdamW (see gpu_optimizer.h): moment layout, the step (norm, skip check, fused updates) and
// the conversions to and from the CPU AdamW's fp32 checkpoint state.
#ifdef FRUGAL_HAVE_CUDA

#include "train/gpu_optimizer.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>

#include "core/cuda_check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/gpu_profiler.h"
#include "kernels/quant/quant.h"
#include "model/gpu/gpu_linear.h"

namespace frugal::gpu {
namespace {

// Each tensor's moments start on a multiple of this many elements (512 bytes of fp32, 256 of
// BF16), so the vectorized kernels see aligned slices.
constexpr int64_t kSliceAlignment = 128;

// The fused refresh is on unless FRUGAL_FUSED_REFRESH=0 (for A/B runs; the copies are the same
// bits either way: FusedRefreshEqualsTheModelRefreshBitForBit).
bool fused_refresh_from_env() {
  const char* text = std::getenv("FRUGAL_FUSED_REFRESH");
  return text == nullptr || std::string(text) != "0";
}

// Clears the weights' written_by_optimizer flags when it goes out of scope (also on a throw), so a
// flag never outlives the optimizer's own refresh callback.
class ClearWrittenFlags {
 public:
  explicit ClearWrittenFlags(const std::vector<std::shared_ptr<WeightCopyState>>& weights)
      : weights_(weights) {}
  ~ClearWrittenFlags() {
    for (const auto& w : weights_) w->written_by_optimizer = false;
  }
  ClearWrittenFlags(const ClearWrittenFlags&) = delete;
  ClearWrittenFlags& operator=(const ClearWrittenFlags&) = delete;

 private:
  const std::vector<std::shared_ptr<WeightCopyState>>& weights_;
};

float bits_to_float(int32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

}  // namespace

// The copy target of the per-step scalars: page-locked, so the copy is a real async DMA.
struct GpuAdamW::PinnedScalars {
  int32_t* values = nullptr;  // [4]
  PinnedScalars() {
    FRUGAL_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&values), 4 * sizeof(int32_t)));
    std::memset(values, 0, 4 * sizeof(int32_t));
  }
  ~PinnedScalars() { cudaFreeHost(values); }
  PinnedScalars(const PinnedScalars&) = delete;
  PinnedScalars& operator=(const PinnedScalars&) = delete;
};

GpuAdamW::GpuAdamW(cuda::DeviceContext& ctx, const OptimConfig& config, GpuTransformer& model)
    : GpuAdamW(ctx, config, model.params(), model.recipe(), [&model] { model.weights_updated(); }) {}

GpuAdamW::GpuAdamW(cuda::DeviceContext& ctx, const OptimConfig& config,
                   std::vector<DeviceParam>& params_list, Recipe recipe,
                   std::function<void()> refresh)
    : ctx_(ctx),
      config_(config),
      params_(params_list),
      refresh_(std::move(refresh)),
      bf16_moments_(recipe != Recipe::Fp32),
      fused_refresh_(fused_refresh_from_env()) {
  check_optim_config(config);
  FRUGAL_CHECK(refresh_ != nullptr, "GpuAdamW: no refresh callback for the weight copies");

  const std::vector<DeviceParam>& params = params_;
  for (size_t i = 0; i < params.size(); ++i) {
    const DeviceParam& p = params[i];
    if (!p.trainable) continue;
    FRUGAL_CHECK(p.value != nullptr && p.grad != nullptr && p.count > 0,
                 "GpuAdamW: trainable parameter {} has no device value or gradient ({} elements)",
                 p.name, p.count);
    slots_.push_back({i, moment_elements_, p.count});
    grad_tensors_.push_back({p.grad, p.count});
    moment_elements_ += round_up(p.count, kSliceAlignment);
  }
  FRUGAL_CHECK(!slots_.empty(), "GpuAdamW: the model has no trainable parameters");

  if (bf16_moments_) {
    m_bf16_ = cuda::DeviceArray<uint16_t>(ctx_, moment_elements_);
    v_bf16_ = cuda::DeviceArray<uint16_t>(ctx_, moment_elements_);
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(m_bf16_.data(), 0, m_bf16_.bytes(), ctx_.stream));
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(v_bf16_.data(), 0, v_bf16_.bytes(), ctx_.stream));
  } else {
    m_f32_ = cuda::DeviceArray<float>(ctx_, moment_elements_);
    v_f32_ = cuda::DeviceArray<float>(ctx_, moment_elements_);
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(m_f32_.data(), 0, m_f32_.bytes(), ctx_.stream));
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(v_f32_.data(), 0, v_f32_.bytes(), ctx_.stream));
  }
  build_update_table(current_plan());
  const size_t workspace = cuda::grad_norm_workspace_bytes(
      grad_tensors_.data(), static_cast<int64_t>(grad_tensors_.size()));
  norm_workspace_ = cuda::DeviceArray<uint8_t>(ctx_, static_cast<int64_t>(workspace));
  build_norm_table();
  scalars_ = cuda::DeviceArray<int32_t>(ctx_, 4);
  FRUGAL_CUDA_CHECK(cudaMemsetAsync(scalars_.data(), 0, scalars_.bytes(), ctx_.stream));
  host_scalars_ = std::make_unique<PinnedScalars>();
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
}

GpuAdamW::~GpuAdamW() = default;

const DeviceParam& GpuAdamW::param_of(const Slot& slot) const {
  return params_[slot.param];
}

GpuAdamW::StepInfo GpuAdamW::step(double lr) {
  FRUGAL_CHECK(std::isfinite(lr) && lr >= 0.0, "GpuAdamW: learning rate {} must be finite and >= 0",
               lr);
  // The model's parameter list must still be the one the moments were laid out for.
  FRUGAL_CHECK(params_.size() > slots_.back().param &&
                   param_of(slots_.back()).count == slots_.back().count,
               "GpuAdamW: the model's parameters changed since the optimizer was made");
  refresh_pointers();

  cuda::ScopedSection section(ctx_.stream, "optimizer");
  float* norm = reinterpret_cast<float*>(scalars_.data());
  float* clip_scale = reinterpret_cast<float*>(scalars_.data() + 1);
  int32_t* nonfinite = scalars_.data() + 2;
  cuda::grad_norm_and_clip(norm, clip_scale, nonfinite, norm_table_,
                           static_cast<float>(config_.grad_clip), norm_workspace_.data(),
                           ctx_.stream);
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(host_scalars_->values, scalars_.data(), 3 * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, ctx_.stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));

  StepInfo info;
  info.grad_norm = bits_to_float(host_scalars_->values[0]);
  if (host_scalars_->values[2] != 0) {
    info.skipped = true;
    info.clip_scale = 0.0;
    ++skipped_steps_;
    return info;
  }
  info.clip_scale = bits_to_float(host_scalars_->values[1]);
  ++step_count_;
  {
    cuda::ScopedSection update_section(ctx_.stream, "optimizer.update");
    apply_updates(lr);
  }
  // The copies of fused_weights_ are current: their refresh is skipped inside the callback only.
  ClearWrittenFlags clear_flags(fused_weights_);
  for (const auto& w : fused_weights_) w->written_by_optimizer = true;
  cuda::ScopedSection refresh_section(ctx_.stream, "optimizer.refresh");
  refresh_();
  return info;
}

GpuAdamW::Plan GpuAdamW::current_plan() const {
  // Which weights can have their copies written by the update: bf16/fp8 GpuWeights whose whole
  // storage is covered by trainable slots here (and, fp8, whose parameters all cover whole
  // 128-row blocks of one matrix or of consecutive ones).
  struct Coverage {
    std::shared_ptr<WeightCopyState> state;
    int64_t covered = 0;
    bool fusable = true;
  };
  std::vector<std::shared_ptr<WeightCopyState>> slot_weight(slots_.size());
  std::unordered_map<const WeightCopyState*, Coverage> coverage;
  if (fused_refresh_) {
    for (size_t k = 0; k < slots_.size(); ++k) {
      const DeviceParam& p = param_of(slots_[k]);
      std::shared_ptr<WeightCopyState> state = p.copies;
      if (state == nullptr) continue;
      const WeightCopies& c = state->copies;
      Coverage& entry = coverage[state.get()];
      entry.state = state;
      entry.covered += p.count;
      if (c.precision == GemmPrecision::Fp8) {
        const int64_t offset = p.value - c.value;
        const int64_t block_row = kFp8BlockSize * c.in;  // one row of 128x128 blocks
        entry.fusable = entry.fusable && c.out % kFp8BlockSize == 0 &&
                        c.in % kFp8BlockSize == 0 && offset % block_row == 0 &&
                        p.count % block_row == 0 &&
                        c.power_of_two_scales == kFp8PowerOfTwoScales;
      } else if (c.precision != GemmPrecision::Bf16) {
        entry.fusable = false;
      }
      slot_weight[k] = std::move(state);
    }
  }
  Plan plan;
  for (const auto& [key, entry] : coverage)
    if (entry.fusable && entry.covered == entry.state->copies.count())
      plan.fused_weights.push_back(entry.state);
  auto fused = [&](const std::shared_ptr<WeightCopyState>& state) {
    if (state == nullptr) return false;
    const Coverage& entry = coverage.at(state.get());
    return entry.fusable && entry.covered == state->copies.count();
  };

  plan.segments.reserve(slots_.size());
  for (size_t k = 0; k < slots_.size(); ++k) {
    const Slot& slot = slots_[k];
    const DeviceParam& p = param_of(slot);
    cuda::AdamWSegment s;
    s.w = p.value;
    s.grad = p.grad;
    // (DeviceArray::data() const gives const pointers; the moments are this optimizer's own.)
    if (bf16_moments_) {
      s.m = const_cast<uint16_t*>(m_bf16_.data()) + slot.offset;
      s.v = const_cast<uint16_t*>(v_bf16_.data()) + slot.offset;
    } else {
      s.m = const_cast<float*>(m_f32_.data()) + slot.offset;
      s.v = const_cast<float*>(v_f32_.data()) + slot.offset;
    }
    s.weight_bf16 = nullptr;  // the refresh callback rebuilds the copies (unless fused below)
    s.count = slot.count;
    s.weight_decay = p.weight_decay ? static_cast<float>(config_.weight_decay) : 0.0f;
    const std::shared_ptr<WeightCopyState>& state = slot_weight[k];
    if (fused(state)) {
      const WeightCopies& c = state->copies;
      const int64_t offset = p.value - c.value;
      if (c.precision == GemmPrecision::Bf16) {
        s.weight_bf16 = c.bf16_copy + offset;
      } else {
        // fp8: the slot's 128-row blocks, cut at matrix boundaries, go to the FP8 launch.
        const int64_t matrix = c.out * c.in;
        const int64_t matrix_blocks = (c.out / kFp8BlockSize) * (c.in / kFp8BlockSize);
        const int64_t moment_bytes = bf16_moments_ ? 2 : 4;
        for (int64_t position = offset; position < offset + p.count;) {
          const int64_t group = position / matrix;
          const int64_t row0 = (position % matrix) / c.in;
          const int64_t end = std::min(offset + p.count, (group + 1) * matrix);
          const int64_t local = position - offset;  // element of the slot
          cuda::AdamWFp8Segment f;
          f.w = p.value + local;
          f.grad = p.grad + local;
          f.m = static_cast<unsigned char*>(s.m) + local * moment_bytes;
          f.v = static_cast<unsigned char*>(s.v) + local * moment_bytes;
          f.rows = (end - position) / c.in;
          f.cols = c.in;
          f.weight_decay = s.weight_decay;
          f.q = c.q + group * matrix + row0 * c.in;
          f.scales = c.scales + group * matrix_blocks + row0 / kFp8BlockSize * (c.in / kFp8BlockSize);
          f.qT = c.qT + group * matrix + row0;
          f.qT_stride = c.out;
          f.scalesT = c.scalesT + group * matrix_blocks + row0 / kFp8BlockSize;
          f.scalesT_stride = c.out / kFp8BlockSize;
          plan.fp8_segments.push_back(f);
          position = end;
        }
        s.count = 0;  // left out of the multi-tensor launch
      }
    }
    plan.segments.push_back(s);
  }
  return plan;
}

void GpuAdamW::build_update_table(Plan plan) {
  std::vector<cuda::AdamWSegment>& segments = plan.segments;
  const int64_t count = static_cast<int64_t>(segments.size());
  const size_t bytes = cuda::adamw_multi_table_bytes(count);
  if (update_table_memory_.size() < static_cast<int64_t>(bytes))
    update_table_memory_ = cuda::DeviceArray<uint8_t>(ctx_, static_cast<int64_t>(bytes));
  const int64_t fp8_count = static_cast<int64_t>(plan.fp8_segments.size());
  const size_t fp8_bytes = cuda::adamw_fp8_table_bytes(fp8_count);
  if (fp8_count > 0 && fp8_table_memory_.size() < static_cast<int64_t>(fp8_bytes))
    fp8_table_memory_ = cuda::DeviceArray<uint8_t>(ctx_, static_cast<int64_t>(fp8_bytes));
  if (bf16_moments_) {
    update_table_ = cuda::adamw_multi_prepare<__nv_bfloat16>(
        segments.data(), count, update_table_memory_.data(), bytes, ctx_.stream);
    fp8_table_ = cuda::adamw_fp8_prepare<__nv_bfloat16>(
        plan.fp8_segments.data(), fp8_count, fp8_table_memory_.data(), fp8_bytes, ctx_.stream);
  } else {
    update_table_ = cuda::adamw_multi_prepare<float>(
        segments.data(), count, update_table_memory_.data(), bytes, ctx_.stream);
    fp8_table_ = cuda::adamw_fp8_prepare<float>(plan.fp8_segments.data(), fp8_count,
                                                fp8_table_memory_.data(), fp8_bytes, ctx_.stream);
  }
  segments_ = std::move(segments);
  fused_weights_ = std::move(plan.fused_weights);
}

void GpuAdamW::build_norm_table() {
  const int64_t count = static_cast<int64_t>(grad_tensors_.size());
  const size_t bytes = cuda::grad_norm_table_bytes(count);
  if (norm_table_memory_.size() < static_cast<int64_t>(bytes))
    norm_table_memory_ = cuda::DeviceArray<uint8_t>(ctx_, static_cast<int64_t>(bytes));
  norm_table_ = cuda::grad_norm_prepare(grad_tensors_.data(), count, norm_table_memory_.data(),
                                        bytes, ctx_.stream);
}

void GpuAdamW::refresh_pointers() {
  bool moved = false;
  for (size_t k = 0; k < slots_.size() && !moved; ++k) {
    const DeviceParam& p = param_of(slots_[k]);
    moved = p.value != segments_[k].w || p.grad != segments_[k].grad;
  }
  if (!moved) return;
  for (size_t k = 0; k < slots_.size(); ++k) grad_tensors_[k].data = param_of(slots_[k]).grad;
  build_norm_table();
  build_update_table(current_plan());
}

void GpuAdamW::apply_updates(double lr) {
  const float* clip_scale = reinterpret_cast<const float*>(scalars_.data() + 1);
  cuda::AdamWStep step;
  step.lr = static_cast<float>(lr);
  step.beta1 = static_cast<float>(config_.beta1);
  step.beta2 = static_cast<float>(config_.beta2);
  step.eps = static_cast<float>(config_.eps);
  step.step = step_count_;  // weight decay: per segment, from the table
  // Two launches at most: the multi-tensor update (with the BF16 copies), the FP8-fused update.
  if (bf16_moments_) {
    cuda::adamw_update_multi<__nv_bfloat16>(update_table_, clip_scale, step, ctx_.stream);
    cuda::adamw_update_fp8<__nv_bfloat16>(fp8_table_, clip_scale, step, kFp8PowerOfTwoScales,
                                          ctx_.stream);
  } else {
    cuda::adamw_update_multi<float>(update_table_, clip_scale, step, ctx_.stream);
    cuda::adamw_update_fp8<float>(fp8_table_, clip_scale, step, kFp8PowerOfTwoScales,
                                  ctx_.stream);
  }
}

void GpuAdamW::check_host_layout(const AdamW<float>& host, const char* what) const {
  FRUGAL_CHECK(host.state().size() == slots_.size(),
               "GpuAdamW::{}: the host optimizer has {} trainable tensors, the GPU one {}", what,
               host.state().size(), slots_.size());
  for (size_t k = 0; k < slots_.size(); ++k) {
    const DeviceParam& p = param_of(slots_[k]);
    const auto& s = host.state()[k];
    FRUGAL_CHECK(s.name == p.name && static_cast<int64_t>(s.m.size()) == p.count &&
                     static_cast<int64_t>(s.v.size()) == p.count,
                 "GpuAdamW::{}: host tensor {} ({} elements) does not match device tensor {} ({} "
                 "elements)",
                 what, s.name, s.m.size(), p.name, p.count);
  }
}

void GpuAdamW::copy_to_host(void* host, const void* device, size_t bytes) const {
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
}

void GpuAdamW::copy_to_device(void* device, const void* host, size_t bytes) {
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, ctx_.stream));
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));  // `host` may be reused at once
}

void GpuAdamW::download(AdamW<float>& host) const {
  check_host_layout(host, "download");
  std::vector<float> m, v;
  std::vector<uint16_t> bits;
  for (size_t k = 0; k < slots_.size(); ++k) {
    const Slot& slot = slots_[k];
    const size_t n = static_cast<size_t>(slot.count);
    m.resize(n);
    v.resize(n);
    if (bf16_moments_) {
      bits.resize(n);
      copy_to_host(bits.data(), m_bf16_.data() + slot.offset, n * sizeof(uint16_t));
      for (size_t i = 0; i < n; ++i) m[i] = bf16_bits_to_float(bits[i]);
      copy_to_host(bits.data(), v_bf16_.data() + slot.offset, n * sizeof(uint16_t));
      for (size_t i = 0; i < n; ++i) v[i] = bf16_bits_to_float(bits[i]);
    } else {
      copy_to_host(m.data(), m_f32_.data() + slot.offset, n * sizeof(float));
      copy_to_host(v.data(), v_f32_.data() + slot.offset, n * sizeof(float));
    }
    host.set_state(host.state()[k].name, m, v);
  }
  host.set_step_count(step_count_);
}

void GpuAdamW::upload(const AdamW<float>& host) {
  check_host_layout(host, "upload");
  std::vector<uint16_t> bits;
  for (size_t k = 0; k < slots_.size(); ++k) {
    const Slot& slot = slots_[k];
    const auto& s = host.state()[k];
    const size_t n = static_cast<size_t>(slot.count);
    if (bf16_moments_) {
      bits.resize(n);
      for (size_t i = 0; i < n; ++i) bits[i] = float_to_bf16_bits(s.m[i]);
      copy_to_device(m_bf16_.data() + slot.offset, bits.data(), n * sizeof(uint16_t));
      for (size_t i = 0; i < n; ++i) bits[i] = float_to_bf16_bits(s.v[i]);
      copy_to_device(v_bf16_.data() + slot.offset, bits.data(), n * sizeof(uint16_t));
    } else {
      copy_to_device(m_f32_.data() + slot.offset, s.m.data(), n * sizeof(float));
      copy_to_device(v_f32_.data() + slot.offset, s.v.data(), n * sizeof(float));
    }
  }
  step_count_ = host.step_count();
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
