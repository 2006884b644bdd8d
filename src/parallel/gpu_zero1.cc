// GpuZero1Optimizer (see gpu_zero1.h): flat layout, pieces and buckets, reduce-scatter, sharded
// AdamW, all-gather, and the checkpoint conversions.
#if defined(FRUGAL_HAVE_CUDA) && defined(FRUGAL_HAVE_NCCL)

#include "parallel/gpu_zero1.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <atomic>
#include <cstdlib>
#include <string>
#include <utility>

#include "core/cuda_check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/gpu_profiler.h"
#include "model/gpu/gpu_common.h"
#include "parallel/nccl_communicator.h"
#include "train/gpu_optimizer.h"

namespace frugal::gpu {
namespace {

// -1: the environment decides; 0 / 1: set_zero1_overlap.
std::atomic<int> overlap_override{-1};

bool overlap_from_environment() {
  static const bool on = [] {
    const char* value = std::getenv("FRUGAL_ZERO1_OVERLAP");
    return value == nullptr || std::string(value) != "0";
  }();
  return on;
}

// Makes `comm`'s input stream `stream` for one call, restoring the previous one after (also when
// the call throws).
class InputStreamSwap {
 public:
  InputStreamSwap(Communicator& comm, cudaStream_t stream)
      : comm_(comm), previous_(input_stream(comm)) {
    set_input_stream(comm_, stream);
  }
  ~InputStreamSwap() { set_input_stream(comm_, previous_); }
  InputStreamSwap(const InputStreamSwap&) = delete;
  InputStreamSwap& operator=(const InputStreamSwap&) = delete;

 private:
  Communicator& comm_;
  cudaStream_t previous_;
};

}  // namespace

bool zero1_overlap_enabled() {
  const int forced = overlap_override.load();
  return forced < 0 ? overlap_from_environment() : forced == 1;
}

void set_zero1_overlap(std::optional<bool> on) {
  overlap_override.store(on.has_value() ? (*on ? 1 : 0) : -1);
}

// The overlap's side stream and the event that forks it from the compute stream.
struct GpuZero1Optimizer::SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t grads_final = nullptr;
  explicit SideStream(int device) {
    FRUGAL_CUDA_CHECK(cudaSetDevice(device));
    FRUGAL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    FRUGAL_CUDA_CHECK(cudaEventCreateWithFlags(&grads_final, cudaEventDisableTiming));
  }
  ~SideStream() {
    if (grads_final != nullptr) cudaEventDestroy(grads_final);
    if (stream != nullptr) cudaStreamDestroy(stream);  // released once its work is done
  }
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
};

GpuZero1Optimizer::GpuZero1Optimizer(cuda::DeviceContext& ctx, const OptimConfig& config,
                                     std::vector<DeviceParam>& params, Recipe recipe,
                                     std::function<void()> refresh, Communicator& comm,
                                     Communicator& norm_group, int64_t bucket_elements)
    : ctx_(ctx),
      config_(config),
      params_(params),
      refresh_(std::move(refresh)),
      comm_(comm),
      norm_group_(norm_group),
      bf16_moments_(recipe != Recipe::Fp32),
      rank_(comm.rank()),
      ranks_(comm.size()) {
  check_optim_config(config);
  FRUGAL_CHECK(refresh_ != nullptr, "GpuZero1Optimizer: no refresh callback for the weight copies");
  FRUGAL_CHECK(bucket_elements > 0, "GpuZero1Optimizer: bucket of {} elements", bucket_elements);
  FRUGAL_CHECK(norm_group.size() == ranks_ && norm_group.rank() == rank_,
               "GpuZero1Optimizer: the norm group (rank {} of {}) is not the NCCL group (rank {} "
               "of {})",
               norm_group.rank(), norm_group.size(), rank_, ranks_);

  // The flat layout: every trainable tensor from a multiple of kAlign.
  std::vector<int64_t> flat_offset;
  int64_t end = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    const DeviceParam& p = params_[i];
    if (!p.trainable) continue;
    FRUGAL_CHECK(p.value != nullptr && p.grad != nullptr && p.count > 0,
                 "GpuZero1Optimizer: trainable parameter {} has no device value or gradient ({} "
                 "elements)",
                 p.name, p.count);
    end = round_up(end, kAlign);
    trainable_.push_back(i);
    flat_offset.push_back(end);
    end += p.count;
    total_ += p.count;
  }
  FRUGAL_CHECK(!trainable_.empty(), "GpuZero1Optimizer: the model has no trainable parameters");
  shard_ = round_up((end + ranks_ - 1) / ranks_, kAlign);
  bucket_elements_ = std::min(round_up(bucket_elements, kAlign), shard_);

  for (int64_t start = 0; start < shard_; start += bucket_elements_)
    buckets_.push_back({start, std::min(bucket_elements_, shard_ - start), {}});
  // Cut every tensor at the shard and bucket boundaries.
  for (size_t t = 0; t < trainable_.size(); ++t) {
    const int64_t count = params_[trainable_[t]].count;
    int64_t done = 0;
    while (done < count) {
      const int64_t flat = flat_offset[t] + done;
      const int owner = static_cast<int>(flat / shard_);
      const int64_t within = flat - static_cast<int64_t>(owner) * shard_;
      const int64_t k = within / bucket_elements_;
      Bucket& bucket = buckets_[static_cast<size_t>(k)];
      const int64_t room = bucket.start + bucket.len - within;
      Piece piece;
      piece.param = trainable_[t];
      piece.offset = done;
      piece.count = std::min(room, count - done);
      piece.rank = owner;
      piece.shard = within;
      piece.stage = static_cast<int64_t>(owner) * bucket.len + (within - bucket.start);
      bucket.pieces.push_back(piece);
      done += piece.count;
    }
  }

  {
    // The readiness planner: bucket k needs every tensor one of its pieces (any rank's) cuts.
    std::vector<std::vector<int64_t>> bucket_params;
    for (const Bucket& bucket : buckets_) {
      std::vector<int64_t> members;
      for (const Piece& piece : bucket.pieces) members.push_back(static_cast<int64_t>(piece.param));
      bucket_params.push_back(std::move(members));
    }
    readiness_ = BucketReadiness(static_cast<int64_t>(params_.size()), bucket_params);
  }

  grad_shard_ = cuda::DeviceArray<float>(ctx_, shard_);
  stage_ = cuda::DeviceArray<float>(ctx_, bucket_elements_ * ranks_);
  send_stage_ = cuda::DeviceArray<float>(ctx_, bucket_elements_);
  FRUGAL_CUDA_CHECK(cudaMemsetAsync(grad_shard_.data(), 0, grad_shard_.bytes(), ctx_.stream));
  if (bf16_moments_) {
    m_bf16_ = cuda::DeviceArray<uint16_t>(ctx_, shard_);
    v_bf16_ = cuda::DeviceArray<uint16_t>(ctx_, shard_);
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(m_bf16_.data(), 0, m_bf16_.bytes(), ctx_.stream));
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(v_bf16_.data(), 0, v_bf16_.bytes(), ctx_.stream));
  } else {
    m_f32_ = cuda::DeviceArray<float>(ctx_, shard_);
    v_f32_ = cuda::DeviceArray<float>(ctx_, shard_);
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(m_f32_.data(), 0, m_f32_.bytes(), ctx_.stream));
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(v_f32_.data(), 0, v_f32_.bytes(), ctx_.stream));
  }
  const cuda::GradTensor shard_tensor{grad_shard_.data(), shard_};
  norm_workspace_ = cuda::DeviceArray<uint8_t>(
      ctx_, static_cast<int64_t>(std::max<size_t>(cuda::grad_norm_workspace_bytes(&shard_tensor, 1), 8)));
  scalars_ = cuda::DeviceArray<float>(ctx_, 4);
  flag_ = cuda::DeviceArray<int32_t>(ctx_, 1);
  FRUGAL_CUDA_CHECK(cudaMemsetAsync(scalars_.data(), 0, scalars_.bytes(), ctx_.stream));
  build_update_table();
  sync();
  check_same_layout_on_every_rank();
}

GpuZero1Optimizer::~GpuZero1Optimizer() {
  // Launched buckets still read the staging buffer and write the shard: let them finish before
  // the memory goes (an error here has nowhere to go; the communicator's watchdog bounds the wait).
  if (enqueued_ > 0) {
    try {
      complete_enqueued(comm_);
    } catch (...) {
    }
  }
}

void GpuZero1Optimizer::sync() { FRUGAL_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream)); }

int64_t GpuZero1Optimizer::state_bytes() const {
  return 2 * shard_ * static_cast<int64_t>(bf16_moments_ ? sizeof(uint16_t) : sizeof(float));
}

void* GpuZero1Optimizer::moment(int which, int64_t at) const {
  if (bf16_moments_)
    return const_cast<uint16_t*>((which == 0 ? m_bf16_ : v_bf16_).data()) + at;
  return const_cast<float*>((which == 0 ? m_f32_ : v_f32_).data()) + at;
}

// A mismatch would sum one tensor's gradient into another's: refuse it (FNV-1a of the sizes,
// compared through the host group's sum; see GradientAllReducer for the same check).
void GpuZero1Optimizer::check_same_layout_on_every_rank() {
  if (ranks_ == 1) return;
  uint64_t hash = 1469598103934665603ull;
  auto mix = [&hash](int64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= static_cast<uint64_t>(value >> (8 * byte)) & 0xffu;
      hash *= 1099511628211ull;
    }
  };
  mix(static_cast<int64_t>(trainable_.size()));
  mix(bucket_elements_);
  for (size_t i : trainable_) mix(params_[i].count);
  const int64_t own = static_cast<int64_t>(hash & 0x7fffffffu);
  int64_t sum = own;
  norm_group_.all_reduce_sum(&sum, 1, CommType::I64);
  FRUGAL_CHECK(sum == own * ranks_,
               "GpuZero1Optimizer: rank {} of {} lists other trainable tensors ({} tensors, {} "
               "elements) than another rank: every rank must hold the same model",
               rank_, ranks_, trainable_.size(), total_);
}

void GpuZero1Optimizer::build_update_table() {
  segments_.clear();
  table_values_.clear();
  table_grads_.clear();
  for (size_t i : trainable_) {
    table_values_.push_back(params_[i].value);
    table_grads_.push_back(params_[i].grad);
  }
  for (const Bucket& bucket : buckets_)
    for (const Piece& piece : bucket.pieces) {
      if (piece.rank != rank_) continue;
      const DeviceParam& p = params_[piece.param];
      cuda::AdamWSegment s;
      s.w = p.value + piece.offset;
      s.grad = grad_shard_.data() + piece.shard;
      s.m = moment(0, piece.shard);
      s.v = moment(1, piece.shard);
      s.weight_bf16 = nullptr;  // refresh_ rebuilds the copies after the all-gather
      s.count = piece.count;
      s.weight_decay = p.weight_decay ? static_cast<float>(config_.weight_decay) : 0.0f;
      segments_.push_back(s);
    }
  if (segments_.empty()) return;  // a rank whose shard is all padding
  const int64_t count = static_cast<int64_t>(segments_.size());
  const size_t bytes = cuda::adamw_multi_table_bytes(count);
  if (update_table_memory_.size() < static_cast<int64_t>(bytes))
    update_table_memory_ = cuda::DeviceArray<uint8_t>(ctx_, static_cast<int64_t>(bytes));
  if (bf16_moments_)
    update_table_ = cuda::adamw_multi_prepare<__nv_bfloat16>(
        segments_.data(), count, update_table_memory_.data(), bytes, ctx_.stream);
  else
    update_table_ = cuda::adamw_multi_prepare<float>(segments_.data(), count,
                                                     update_table_memory_.data(), bytes,
                                                     ctx_.stream);
}

bool GpuZero1Optimizer::pointers_moved() const {
  for (size_t k = 0; k < trainable_.size(); ++k) {
    const DeviceParam& p = params_[trainable_[k]];
    if (p.value != table_values_[k] || p.grad != table_grads_[k]) return true;
  }
  return false;
}

void GpuZero1Optimizer::check_params_unchanged() const {
  FRUGAL_CHECK(params_.size() > trainable_.back(),
               "GpuZero1Optimizer: the model's parameters changed since the optimizer was made");
}

void GpuZero1Optimizer::stage_bucket(const Bucket& bucket, cudaStream_t stream) {
  // [ranks, len]: rank r's part of this bucket at r * len; padding stays 0.
  FRUGAL_CUDA_CHECK(cudaMemsetAsync(stage_.data(), 0,
                                    static_cast<size_t>(bucket.len * ranks_) * sizeof(float),
                                    stream));
  for (const Piece& piece : bucket.pieces)
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(stage_.data() + piece.stage,
                                      params_[piece.param].grad + piece.offset,
                                      static_cast<size_t>(piece.count) * sizeof(float),
                                      cudaMemcpyDeviceToDevice, stream));
}

void GpuZero1Optimizer::stage_and_reduce_scatter(const Bucket& bucket) {
  stage_bucket(bucket, ctx_.stream);
  comm_.reduce_scatter_sum(grad_shard_.data() + bucket.start, stage_.data(), bucket.len,
                           CommType::F32);
}

void GpuZero1Optimizer::launch_enqueued(const Bucket& bucket) {
  const cudaStream_t side = side_->stream;
  // The previous enqueued reduce-scatter reads the one staging buffer: wait for it on the device.
  stream_wait_for_operations(comm_, side);
  stage_bucket(bucket, side);
  InputStreamSwap input(comm_, side);  // the collective waits for the staging above
  enqueue_reduce_scatter_sum(comm_, grad_shard_.data() + bucket.start, stage_.data(), bucket.len,
                             CommType::F32);
  ++enqueued_;
}

void GpuZero1Optimizer::join_enqueued() {
  if (enqueued_ > 0) stream_wait_for_operations(comm_, ctx_.stream);
}

void GpuZero1Optimizer::reduce_scatter_ready(std::span<const size_t> final_params) {
  check_params_unchanged();
  std::vector<int64_t> finished(final_params.begin(), final_params.end());
  const std::vector<int64_t> ready = readiness_.mark_final(finished);
  if (ready.empty()) return;
  if (side_ == nullptr) side_ = std::make_unique<SideStream>(ctx_.device);
  // The side stream starts after everything queued on the compute stream so far: the gradients
  // reported final are written there.
  FRUGAL_CUDA_CHECK(cudaEventRecord(side_->grads_final, ctx_.stream));
  FRUGAL_CUDA_CHECK(cudaStreamWaitEvent(side_->stream, side_->grads_final, 0));
  cuda::ScopedSection section(side_->stream, "zero1.reduce_scatter_ready");
  for (int64_t k : ready) launch_enqueued(buckets_[static_cast<size_t>(k)]);
}

void GpuZero1Optimizer::reduce_scatter() {
  check_params_unchanged();
  cuda::ScopedSection section(ctx_.stream, "zero1.reduce_scatter");
  // The compute stream reuses the staging buffer and then reads the shard: after every enqueued
  // bucket.
  join_enqueued();
  const std::vector<int64_t> rest = readiness_.take_pending();
  for (int64_t k : rest) stage_and_reduce_scatter(buckets_[static_cast<size_t>(k)]);
  if (enqueued_ > 0) complete_enqueued(comm_);  // the host too (watchdog), e.g. when rest is empty
  early_buckets_last_step_ = enqueued_;
  early_buckets_total_ += enqueued_;
  enqueued_ = 0;
  readiness_.reset();
}

GpuZero1Optimizer::StepInfo GpuZero1Optimizer::step(double lr, double extra_norm_squared) {
  FRUGAL_CHECK(std::isfinite(lr) && lr >= 0.0,
               "GpuZero1Optimizer: learning rate {} must be finite and >= 0", lr);
  if (pointers_moved()) {
    build_update_table();
    sync();
  }
  cuda::ScopedSection section(ctx_.stream, "optimizer");
  // This shard's norm (padding contributes 0), squared and summed over the ranks on the host.
  const cuda::GradTensor shard_tensor{grad_shard_.data(), shard_};
  cuda::grad_norm_and_clip(scalars_.data(), scalars_.data() + 1, flag_.data(), &shard_tensor, 1,
                           0.0f, norm_workspace_.data(), ctx_.stream);
  float shard_norm = 0;
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(&shard_norm, scalars_.data(), sizeof shard_norm,
                                    cudaMemcpyDeviceToHost, ctx_.stream));
  sync();
  double squares = static_cast<double>(shard_norm) * static_cast<double>(shard_norm);
  norm_group_.all_reduce_sum(&squares, 1, CommType::F64);  // rank order: the same on every rank
  squares += extra_norm_squared;
  StepInfo info;
  info.grad_norm = std::sqrt(squares);
  if (!std::isfinite(info.grad_norm)) {
    info.skipped = true;
    info.clip_scale = 0.0;
    ++skipped_steps_;
    return info;
  }
  const float scale = clip_scale_for_norm(info.grad_norm, config_.grad_clip);
  info.clip_scale = scale;
  ++step_count_;
  if (!segments_.empty()) {
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(scalars_.data() + 2, &scale, sizeof scale,
                                      cudaMemcpyHostToDevice, ctx_.stream));
    cuda::AdamWStep step;
    step.lr = static_cast<float>(lr);
    step.beta1 = static_cast<float>(config_.beta1);
    step.beta2 = static_cast<float>(config_.beta2);
    step.eps = static_cast<float>(config_.eps);
    step.step = step_count_;
    if (bf16_moments_)
      cuda::adamw_update_multi<__nv_bfloat16>(update_table_, scalars_.data() + 2, step,
                                              ctx_.stream);
    else
      cuda::adamw_update_multi<float>(update_table_, scalars_.data() + 2, step, ctx_.stream);
    sync();  // `scale` is a host local
  }
  {
    cuda::ScopedSection gather(ctx_.stream, "zero1.all_gather");
    for (const Bucket& bucket : buckets_) {
      for (const Piece& piece : bucket.pieces)
        if (piece.rank == rank_)
          FRUGAL_CUDA_CHECK(cudaMemcpyAsync(send_stage_.data() + (piece.shard - bucket.start),
                                            params_[piece.param].value + piece.offset,
                                            static_cast<size_t>(piece.count) * sizeof(float),
                                            cudaMemcpyDeviceToDevice, ctx_.stream));
      comm_.all_gather(stage_.data(), send_stage_.data(), bucket.len, CommType::F32);
      for (const Piece& piece : bucket.pieces)
        if (piece.rank != rank_)
          FRUGAL_CUDA_CHECK(cudaMemcpyAsync(params_[piece.param].value + piece.offset,
                                            stage_.data() + piece.stage,
                                            static_cast<size_t>(piece.count) * sizeof(float),
                                            cudaMemcpyDeviceToDevice, ctx_.stream));
    }
  }
  cuda::ScopedSection refresh_section(ctx_.stream, "optimizer.refresh");
  refresh_();
  return info;
}

void GpuZero1Optimizer::check_host_layout(const AdamW<float>& host, const char* what) const {
  FRUGAL_CHECK(host.state().size() == trainable_.size(),
               "GpuZero1Optimizer::{}: the host optimizer has {} trainable tensors, the GPU one {}",
               what, host.state().size(), trainable_.size());
  for (size_t k = 0; k < trainable_.size(); ++k) {
    const DeviceParam& p = params_[trainable_[k]];
    const auto& s = host.state()[k];
    FRUGAL_CHECK(s.name == p.name && static_cast<int64_t>(s.m.size()) == p.count &&
                     static_cast<int64_t>(s.v.size()) == p.count,
                 "GpuZero1Optimizer::{}: host tensor {} ({} elements) does not match device "
                 "tensor {} ({} elements)",
                 what, s.name, s.m.size(), p.name, p.count);
  }
}

void GpuZero1Optimizer::download(AdamW<float>& host) {
  check_host_layout(host, "download");
  join_enqueued();  // the staging buffer below: after any bucket launched during a backward
  // Slot k of the host state <-> trainable_[k].
  std::vector<size_t> slot_of(params_.size(), 0);
  for (size_t k = 0; k < trainable_.size(); ++k) slot_of[trainable_[k]] = k;
  std::vector<std::vector<float>> m(trainable_.size()), v(trainable_.size());
  for (size_t k = 0; k < trainable_.size(); ++k) {
    m[k].assign(static_cast<size_t>(params_[trainable_[k]].count), 0.0f);
    v[k].assign(m[k].size(), 0.0f);
  }
  const CommType type = bf16_moments_ ? CommType::BF16 : CommType::F32;
  std::vector<float> staged_f32;
  std::vector<uint16_t> staged_bf16;
  sync();
  for (const Bucket& bucket : buckets_) {
    const size_t n = static_cast<size_t>(bucket.len * ranks_);
    for (int which = 0; which < 2; ++which) {
      // The stage (fp32-sized) holds the gathered moments of either type.
      comm_.all_gather(stage_.data(), moment(which, bucket.start), bucket.len, type);
      if (bf16_moments_) {
        staged_bf16.resize(n);
        FRUGAL_CUDA_CHECK(cudaMemcpyAsync(staged_bf16.data(), stage_.data(), n * sizeof(uint16_t),
                                          cudaMemcpyDeviceToHost, ctx_.stream));
      } else {
        staged_f32.resize(n);
        FRUGAL_CUDA_CHECK(cudaMemcpyAsync(staged_f32.data(), stage_.data(), n * sizeof(float),
                                          cudaMemcpyDeviceToHost, ctx_.stream));
      }
      sync();
      auto& out = which == 0 ? m : v;
      for (const Piece& piece : bucket.pieces) {
        float* to = out[slot_of[piece.param]].data() + piece.offset;
        for (int64_t i = 0; i < piece.count; ++i)
          to[i] = bf16_moments_ ? bf16_bits_to_float(staged_bf16[static_cast<size_t>(piece.stage + i)])
                                : staged_f32[static_cast<size_t>(piece.stage + i)];
      }
    }
  }
  for (size_t k = 0; k < trainable_.size(); ++k) host.set_state(host.state()[k].name, m[k], v[k]);
  host.set_step_count(step_count_);
}

void GpuZero1Optimizer::upload(const AdamW<float>& host) {
  check_host_layout(host, "upload");
  std::vector<size_t> slot_of(params_.size(), 0);
  for (size_t k = 0; k < trainable_.size(); ++k) slot_of[trainable_[k]] = k;
  std::vector<float> m(static_cast<size_t>(shard_), 0.0f), v(m.size(), 0.0f);
  for (const Bucket& bucket : buckets_)
    for (const Piece& piece : bucket.pieces) {
      if (piece.rank != rank_) continue;
      const auto& s = host.state()[slot_of[piece.param]];
      std::copy_n(s.m.begin() + piece.offset, piece.count, m.begin() + piece.shard);
      std::copy_n(s.v.begin() + piece.offset, piece.count, v.begin() + piece.shard);
    }
  if (bf16_moments_) {
    std::vector<uint16_t> bits(m.size());
    for (int which = 0; which < 2; ++which) {
      const std::vector<float>& from = which == 0 ? m : v;
      for (size_t i = 0; i < bits.size(); ++i) bits[i] = float_to_bf16_bits(from[i]);
      FRUGAL_CUDA_CHECK(cudaMemcpyAsync(moment(which, 0), bits.data(),
                                        bits.size() * sizeof(uint16_t), cudaMemcpyHostToDevice,
                                        ctx_.stream));
      sync();  // `bits` is reused
    }
  } else {
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(moment(0, 0), m.data(), m.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, ctx_.stream));
    FRUGAL_CUDA_CHECK(cudaMemcpyAsync(moment(1, 0), v.data(), v.size() * sizeof(float),
                                      cudaMemcpyHostToDevice, ctx_.stream));
    sync();
  }
  step_count_ = host.step_count();
}

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA && FRUGAL_HAVE_NCCL
