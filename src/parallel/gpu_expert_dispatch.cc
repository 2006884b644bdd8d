// GpuExpertDispatch (see gpu_expert_dispatch.h): the routing layouts (local permutation, exchanged
// per-expert counts, the source-major <-> expert-major reorders), the exchanges (on a side stream
// beside the caller's work under overlap) and their timing.
#ifdef FRUGAL_HAVE_CUDA

#include "parallel/gpu_expert_dispatch.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "kernels/moe/fp8_rows.h"
#include "kernels/moe/moe_cuda.h"
#include "kernels/quant/quant.h"
#ifdef FRUGAL_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace frugal::gpu {

using bf16 = __nv_bfloat16;

namespace {

// Timeline tracks: the all-to-alls of each exchange, and the compute stream's `beside` work.
enum Track : int { kCountsTrack = 0, kDispatchTrack, kCombineTrack, kBusyTrack, kTracks };

// -1: follow the environment; 0 / 1: overridden.
std::atomic<int> overlap_override{-1}, stats_override{-1};

bool environment_flag(const char* name, bool unset) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return unset;
  return std::strcmp(value, "0") != 0;
}

// The live dispatchers (take_ep_overlap_stats reads their timelines). Never destroyed: a
// dispatcher may be destroyed during static destruction.
std::mutex& registry_mutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}
std::vector<GpuExpertDispatch*>& registry() {
  static auto* dispatchers = new std::vector<GpuExpertDispatch*>;
  return *dispatchers;
}

// Everything take_ep_overlap_stats() returned since the last reset (under registry_mutex()).
ExchangeOverlap& taken_total() {
  static ExchangeOverlap total;
  return total;
}

}  // namespace

bool ep_overlap_enabled() {
  static const bool from_environment = environment_flag("FRUGAL_EP_OVERLAP", true);
  const int forced = overlap_override.load();
  return forced >= 0 ? forced == 1 : from_environment;
}

void set_ep_overlap(std::optional<bool> on) {
  overlap_override.store(on.has_value() ? static_cast<int>(*on) : -1);
}

bool ep_overlap_stats_enabled() {
  static const bool from_environment = environment_flag("FRUGAL_OVERLAP_STATS", false);
  const int forced = stats_override.load();
  return forced >= 0 ? forced == 1 : from_environment;
}

void set_ep_overlap_stats(std::optional<bool> on) {
  stats_override.store(on.has_value() ? static_cast<int>(*on) : -1);
}

ExchangeOverlap take_ep_overlap_stats() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  ExchangeOverlap sum;
  for (GpuExpertDispatch* dispatcher : registry()) sum += dispatcher->take_overlap_stats();
  taken_total() += sum;
  return sum;
}

ExchangeOverlap ep_overlap_stats_total() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  return taken_total();
}

void reset_ep_overlap_stats_total() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  taken_total() = ExchangeOverlap{};
}

// The timeline of one dispatcher, and the op timer that puts the communicator's operations on it.
struct GpuExpertDispatch::Timing
#ifdef FRUGAL_HAVE_NCCL
    : public OpTimer
#endif
{
  EventTimeline timeline;
  int track = kCountsTrack;  // of the operation in flight
#ifdef FRUGAL_HAVE_NCCL
  void op_started(cudaStream_t stream) override { timeline.start(track, stream); }
  void op_finished(cudaStream_t stream) override { timeline.stop(track, stream); }
#endif
};

// One exchange's stream: the side stream, after the context stream's work so far (`forked`), when
// overlapping; else the context's stream. join() (or, on an exception, the destructor) makes the
// context's stream wait for everything enqueued on the side stream (`joined`).
class GpuExpertDispatch::Fork {
 public:
  explicit Fork(GpuExpertDispatch& owner) : owner_(owner), stream_(owner.ctx_.stream) {
    if (owner.side_ != nullptr && ep_overlap_enabled()) {
      FRUGAL_CUDA_CHECK(cudaEventRecord(owner.forked_, owner.ctx_.stream));
      FRUGAL_CUDA_CHECK(cudaStreamWaitEvent(owner.side_, owner.forked_, 0));
      stream_ = owner.side_;
    }
  }
  ~Fork() {
    if (joined_ || stream_ == owner_.ctx_.stream) return;
    // Unwinding: order the context's stream after the side stream anyway (errors ignored), so no
    // block the side stream uses is handed out again while it runs.
    if (cudaEventRecord(owner_.joined_, stream_) == cudaSuccess)
      cudaStreamWaitEvent(owner_.ctx_.stream, owner_.joined_, 0);
    else
      cudaStreamSynchronize(stream_);
  }
  Fork(const Fork&) = delete;
  Fork& operator=(const Fork&) = delete;

  cudaStream_t stream() const { return stream_; }
  void join() {
    if (joined_) return;
    joined_ = true;
    if (stream_ == owner_.ctx_.stream) return;
    FRUGAL_CUDA_CHECK(cudaEventRecord(owner_.joined_, stream_));
    FRUGAL_CUDA_CHECK(cudaStreamWaitEvent(owner_.ctx_.stream, owner_.joined_, 0));
  }

 private:
  GpuExpertDispatch& owner_;
  cudaStream_t stream_;
  bool joined_ = false;
};

GpuExpertDispatch::GpuExpertDispatch(cuda::DeviceContext& ctx, Communicator& comm,
                                     int64_t n_experts, int64_t hidden)
    : ctx_(ctx), comm_(comm), n_experts_(n_experts), hidden_(hidden), ep_(comm.size()) {
  FRUGAL_CHECK(n_experts_ > 0 && hidden_ > 0,
               "GpuExpertDispatch: {} experts and hidden size {} must be positive", n_experts_,
               hidden_);
  FRUGAL_CHECK(n_experts_ % ep_ == 0,
               "GpuExpertDispatch: {} routed experts do not split evenly over {} EP ranks",
               n_experts_, ep_);
  local_experts_ = n_experts_ / ep_;
  first_local_expert_ = comm.rank() * local_experts_;
  expert_offsets_ = cuda::DeviceArray<int64_t>(ctx_, n_experts_ + 1);
  expert_counts_ = cuda::DeviceArray<int64_t>(ctx_, n_experts_);
  send_rows_.assign(static_cast<size_t>(ep_), 0);
  recv_rows_.assign(static_cast<size_t>(ep_), 0);
  local_offsets_.assign(static_cast<size_t>(local_experts_ + 1), 0);
  timing_ = std::make_unique<Timing>();
#ifdef FRUGAL_HAVE_NCCL
  nccl_ = is_nccl_communicator(comm_);
#endif
  if (nccl_) {  // the side stream, on the context's device, ahead of the compute kernels
    int current = -1;
    FRUGAL_CUDA_CHECK(cudaGetDevice(&current));
    if (current != ctx_.device) FRUGAL_CUDA_CHECK(cudaSetDevice(ctx_.device));
    int least = 0, greatest = 0;
    FRUGAL_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    FRUGAL_CUDA_CHECK(cudaStreamCreateWithPriority(&side_, cudaStreamNonBlocking, greatest));
    FRUGAL_CUDA_CHECK(cudaEventCreateWithFlags(&forked_, cudaEventDisableTiming));
    FRUGAL_CUDA_CHECK(cudaEventCreateWithFlags(&joined_, cudaEventDisableTiming));
    if (current != ctx_.device) FRUGAL_CUDA_CHECK(cudaSetDevice(current));
  }
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry().push_back(this);
}

GpuExpertDispatch::~GpuExpertDispatch() {
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    std::erase(registry(), this);
  }
  // Every exchange ended with the context's stream waiting on the side stream; the side stream
  // may still be running only if the context's work is too. Errors are ignored (the CUDA context
  // may be gone at exit).
  if (side_ != nullptr) {
    cudaStreamSynchronize(side_);
    cudaStreamDestroy(side_);
  }
  if (forked_ != nullptr) cudaEventDestroy(forked_);
  if (joined_ != nullptr) cudaEventDestroy(joined_);
}

ExchangeOverlap GpuExpertDispatch::take_overlap_stats() {
  ExchangeOverlap overlap;
  if (timing_->timeline.empty()) return overlap;
  const std::vector<std::vector<TimeInterval>> tracks = timing_->timeline.resolve(kTracks);
  const std::vector<TimeInterval>& busy = tracks[kBusyTrack];
  overlap.counts = measure_overlap(tracks[kCountsTrack], busy);
  overlap.dispatch = measure_overlap(tracks[kDispatchTrack], busy);
  overlap.combine = measure_overlap(tracks[kCombineTrack], busy);
  return overlap;
}

void GpuExpertDispatch::all_to_all(int track, cudaStream_t stream, void* recv,
                                   const std::vector<int64_t>& recv_counts, const void* send,
                                   const std::vector<int64_t>& send_counts, CommType type) {
#ifdef FRUGAL_HAVE_NCCL
  if (nccl_) {
    // The communicator reads `stream` (and reports to the timeline) for this call only.
    const cudaStream_t previous = input_stream(comm_);
    const bool timed = ep_overlap_stats_enabled();
    timing_->track = track;
    set_input_stream(comm_, stream);
    if (timed) set_op_timing(comm_, timing_.get());
    try {
      comm_.all_to_all_v(recv, recv_counts, send, send_counts, type);
    } catch (...) {
      set_op_timing(comm_, nullptr);
      set_input_stream(comm_, previous);
      throw;
    }
    set_op_timing(comm_, nullptr);
    set_input_stream(comm_, previous);
    return;
  }
#endif
  (void)track;
  (void)stream;
  comm_.all_to_all_v(recv, recv_counts, send, send_counts, type);
}

void GpuExpertDispatch::run_beside(const BesideWork& beside) {
  if (!beside) return;
  const bool timed = nccl_ && ep_overlap_stats_enabled();
  if (timed) timing_->timeline.start(kBusyTrack, ctx_.stream);
  beside();
  if (timed) timing_->timeline.stop(kBusyTrack, ctx_.stream);
}

void GpuExpertDispatch::plan(const int32_t* topk_idx, int64_t tokens, int64_t top_k,
                             int64_t* load) {
  FRUGAL_CHECK(tokens >= 0 && top_k > 0 && top_k <= n_experts_,
               "GpuExpertDispatch::plan: {} tokens, top_k {} of {} experts", tokens, top_k,
               n_experts_);
  const int64_t assignments = tokens * top_k, E = n_experts_, EL = local_experts_;
  FRUGAL_CHECK(assignments < std::numeric_limits<int32_t>::max(),
               "GpuExpertDispatch::plan: {} assignments exceed int32 row indices", assignments);
  const cudaStream_t stream = ctx_.stream;
  if (tokens != tokens_ || top_k != top_k_) {
    assignment_row_ = cuda::DeviceArray<int32_t>(ctx_, std::max<int64_t>(assignments, 1));
    row_assignment_ = cuda::DeviceArray<int32_t>(ctx_, std::max<int64_t>(assignments, 1));
    tokens_ = tokens;
    top_k_ = top_k;
  }
  if (assignments > 0) {
    cuda::DeviceArray<uint8_t> workspace(
        ctx_, static_cast<int64_t>(cuda::expert_permutation_workspace_bytes(tokens, top_k, E)));
    cuda::build_expert_permutation(expert_offsets_.data(), expert_counts_.data(), load,
                                   assignment_row_.data(), row_assignment_.data(), topk_idx, tokens,
                                   top_k, E, /*row_align=*/1, workspace.data(), stream);
  } else {
    FRUGAL_CUDA_CHECK(cudaMemsetAsync(expert_counts_.data(), 0, expert_counts_.bytes(), stream));
  }

  // Counts of the experts each rank owns go to that rank: [source][local expert] arrive.
  cuda::DeviceArray<int64_t> received_counts(ctx_, E);  // [ep][EL]
  const std::vector<int64_t> blocks(static_cast<size_t>(ep_), EL);
  all_to_all(kCountsTrack, stream, received_counts.data(), blocks, expert_counts_.data(), blocks,
             CommType::I64);
  std::vector<int64_t> sent(static_cast<size_t>(E)), got(static_cast<size_t>(E));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(sent.data(), expert_counts_.data(), expert_counts_.bytes(),
                                    cudaMemcpyDeviceToHost, stream));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(got.data(), received_counts.data(), received_counts.bytes(),
                                    cudaMemcpyDeviceToHost, stream));
  ctx_.synchronize();

  int64_t sent_total = 0;
  received_ = 0;
  std::fill(local_offsets_.begin(), local_offsets_.end(), 0);
  for (int64_t r = 0; r < ep_; ++r) {
    send_rows_[r] = recv_rows_[r] = 0;
    for (int64_t e = 0; e < EL; ++e) {
      const int64_t s = sent[r * EL + e], g = got[r * EL + e];
      FRUGAL_CHECK(s >= 0 && g >= 0, "GpuExpertDispatch::plan: negative row count from rank {}",
                   r);
      send_rows_[r] += s;
      recv_rows_[r] += g;
      local_offsets_[e + 1] += g;
    }
    sent_total += send_rows_[r];
    received_ += recv_rows_[r];
  }
  FRUGAL_CHECK(sent_total == assignments,
               "GpuExpertDispatch::plan: the permutation counts {} rows for {} assignments (an "
               "expert id outside [0, {})?)",
               sent_total, assignments, E);
  FRUGAL_CHECK(received_ < std::numeric_limits<int32_t>::max(),
               "GpuExpertDispatch::plan: {} received rows exceed int32 row indices", received_);
  for (int64_t e = 0; e < EL; ++e) local_offsets_[e + 1] += local_offsets_[e];

  // Source-major row sm (rank order, expert-major inside a source) <-> expert-major row em (local
  // expert order, sources in rank order inside an expert).
  std::vector<int32_t> to_expert_major(static_cast<size_t>(std::max<int64_t>(received_, 1)));
  std::vector<int32_t> to_source_major(to_expert_major.size());
  std::vector<int64_t> cursor(local_offsets_.begin(), local_offsets_.end() - 1);
  int64_t sm = 0;
  for (int64_t r = 0; r < ep_; ++r)
    for (int64_t e = 0; e < EL; ++e)
      for (int64_t i = 0; i < got[r * EL + e]; ++i, ++sm) {
        const int64_t em = cursor[e]++;
        to_expert_major[em] = static_cast<int32_t>(sm);
        to_source_major[sm] = static_cast<int32_t>(em);
      }
  to_expert_major_ = cuda::DeviceArray<int32_t>(ctx_, static_cast<int64_t>(to_expert_major.size()));
  to_source_major_ = cuda::DeviceArray<int32_t>(ctx_, static_cast<int64_t>(to_source_major.size()));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(to_expert_major_.data(), to_expert_major.data(),
                                    to_expert_major.size() * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, stream));
  FRUGAL_CUDA_CHECK(cudaMemcpyAsync(to_source_major_.data(), to_source_major.data(),
                                    to_source_major.size() * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, stream));
  combined_bytes_ = 0;
  ctx_.synchronize();  // the host index arrays are freed on return
}

void GpuExpertDispatch::reserve_staging(int64_t rows, size_t element_bytes) {
  const int64_t bytes = std::max<int64_t>(rows, 1) * hidden_ * static_cast<int64_t>(element_bytes);
  if (staging_.size() < bytes) {
    staging_ = cuda::DeviceArray<uint8_t>(ctx_, bytes);
    staging2_ = cuda::DeviceArray<uint8_t>(ctx_, bytes);
  }
}

namespace {

std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t hidden) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * hidden;
  return out;
}

template <class P>
constexpr CommType payload_type() {
  if constexpr (std::is_same_v<P, float>)
    return CommType::F32;
  else
    return CommType::BF16;
}

}  // namespace

// Each exchange: staging sized on the context's stream (before the fork: the allocator rule of
// the header), then the fork; the side stream's kernels are enqueued before `beside`, so they start
// at once, and `beside` before the all-to-all, in which the host blocks.

template <class P>
void GpuExpertDispatch::dispatch_t(P* received, const P* x, const BesideWork& beside) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::dispatch before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  P* staging = reinterpret_cast<P*>(staging_.data());
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  Fork fork(*this);
  const cudaStream_t stream = fork.stream();
  if (assignments > 0)  // xp [assignments, hidden], owner-major
    cuda::permute_rows<P>(staging, x, row_assignment_.data(), assignments, top_k_, H, stream);
  run_beside(beside);
  // [received, hidden] source-major
  all_to_all(kDispatchTrack, stream, staging2, times(recv_rows_, H), staging, times(send_rows_, H),
             payload_type<P>());
  if (received_ > 0)  // [received, hidden] expert-major
    cuda::permute_rows<P>(received, staging2, to_expert_major_.data(), received_, 1, H, stream);
  fork.join();
}

void GpuExpertDispatch::dispatch_fp8(uint8_t* received_q, float* received_scales, const bf16* x,
                                     bool power_of_two_scale, const BesideWork& beside) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::dispatch_fp8 before plan");
  FRUGAL_CHECK(hidden_ % kFp8BlockSize == 0,
               "GpuExpertDispatch::dispatch_fp8: hidden size {} is not a multiple of {} (use the "
               "BF16 dispatch)",
               hidden_, kFp8BlockSize);
  const int64_t assignments = tokens_ * top_k_, H = hidden_, tiles = H / kFp8BlockSize;
  const int64_t record = fp8_record_bytes();  // per row: H codes, then `tiles` fp32 scales
  static_assert(sizeof(float) == 4);
  // staging_: the permuted BF16 rows [assignments, H], then (once quantized) the received records
  // [received, record]; staging2_: the records sent [assignments, record]. record <= 2*H bytes.
  reserve_staging(std::max(assignments, received_), sizeof(bf16));
  // Allocated before the fork and released after the join (the header's allocator rule).
  cuda::DeviceArray<uint8_t> q(ctx_, std::max<int64_t>(assignments, 1) * H);  // [assignments, H]
  cuda::DeviceArray<float> scales(ctx_, std::max<int64_t>(assignments, 1) * tiles);  // [tiles][A]
  bf16* permuted = reinterpret_cast<bf16*>(staging_.data());
  uint8_t* sent = staging2_.data();
  uint8_t* arrived = staging_.data();
  Fork fork(*this);
  const cudaStream_t stream = fork.stream();
  if (assignments > 0) {  // records [assignments, record], owner-major
    cuda::permute_rows<bf16>(permuted, x, row_assignment_.data(), assignments, top_k_, H, stream);
    cuda::quantize_act_1x128<bf16>(q.data(), scales.data(), permuted, assignments, H,
                                   power_of_two_scale, stream);
    cuda::gather_byte_rows(sent, record, q.data(), H, nullptr, assignments, H, stream);
    cuda::gather_scales(reinterpret_cast<float*>(sent + H), record / 4, 1, scales.data(), 1,
                        assignments, nullptr, assignments, tiles, 0.0f, stream);
  }
  run_beside(beside);
  // [received, record] source-major
  all_to_all(kDispatchTrack, stream, arrived, times(recv_rows_, record), sent,
             times(send_rows_, record), CommType::U8);
  if (received_ > 0) {  // expert-major: codes [received, H], scales [tiles][received]
    cuda::gather_byte_rows(received_q, H, arrived, record, to_expert_major_.data(), received_, H,
                           stream);
    cuda::gather_scales(received_scales, 1, received_,
                        reinterpret_cast<const float*>(arrived + H), record / 4, 1,
                        to_expert_major_.data(), received_, tiles, 0.0f, stream);
  }
  fork.join();
}

template <class P>
void GpuExpertDispatch::combine_t(P* y, const P* expert_out, const float* weights, bool accumulate,
                                  const BesideWork& beside) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::combine before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  const int64_t returned_bytes =
      std::max<int64_t>(assignments, 1) * H * static_cast<int64_t>(sizeof(P));
  if (returned_.size() < returned_bytes)
    returned_ = cuda::DeviceArray<uint8_t>(ctx_, returned_bytes);
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  P* returned = reinterpret_cast<P*>(returned_.data());
  Fork fork(*this);
  const cudaStream_t stream = fork.stream();
  if (received_ > 0)  // [received, hidden] source-major
    cuda::permute_rows<P>(staging2, expert_out, to_source_major_.data(), received_, 1, H, stream);
  run_beside(beside);
  // [assignments, hidden] back in this rank's owner-major order
  all_to_all(kCombineTrack, stream, returned, times(send_rows_, H), staging2, times(recv_rows_, H),
             payload_type<P>());
  fork.join();
  // After `beside` on the context's stream: y may hold what it wrote (the shared experts).
  if (tokens_ > 0)
    cuda::combine_fwd<P>(y, returned, weights, assignment_row_.data(), tokens_, top_k_, H,
                         accumulate, ctx_.stream);
  combined_bytes_ = sizeof(P);
}

template <class P>
void GpuExpertDispatch::dispatch_backward_t(P* dx, const P* d_received, bool accumulate,
                                            const BesideWork& beside) {
  FRUGAL_CHECK(tokens_ >= 0, "GpuExpertDispatch::dispatch_backward before plan");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  P* staging = reinterpret_cast<P*>(staging_.data());
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  Fork fork(*this);
  const cudaStream_t stream = fork.stream();
  if (received_ > 0)  // [received, hidden] source-major
    cuda::permute_rows<P>(staging2, d_received, to_source_major_.data(), received_, 1, H, stream);
  run_beside(beside);
  // [assignments, hidden] in this rank's owner-major order
  all_to_all(kDispatchTrack, stream, staging, times(send_rows_, H), staging2, times(recv_rows_, H),
             payload_type<P>());
  fork.join();
  // After `beside` on the context's stream (which may have written dx).
  if (tokens_ > 0)
    cuda::unpermute_sum<P>(dx, staging, assignment_row_.data(), tokens_, top_k_, H, accumulate,
                           ctx_.stream);
}

template <class P>
void GpuExpertDispatch::combine_backward_t(P* d_expert_out, float* d_weights, const P* dy,
                                           const float* weights, const BesideWork& beside) {
  FRUGAL_CHECK(combined_bytes_ == sizeof(P),
               "GpuExpertDispatch::combine_backward needs the combine of this plan, in the same "
               "payload type");
  const int64_t assignments = tokens_ * top_k_, H = hidden_;
  reserve_staging(std::max(assignments, received_), sizeof(P));
  P* staging = reinterpret_cast<P*>(staging_.data());
  P* staging2 = reinterpret_cast<P*>(staging2_.data());
  Fork fork(*this);
  const cudaStream_t stream = fork.stream();
  if (tokens_ > 0)  // [assignments, hidden] owner-major, d_weights [tokens, K]
    cuda::combine_bwd<P>(staging, d_weights, dy, reinterpret_cast<const P*>(returned_.data()),
                         weights, assignment_row_.data(), row_assignment_.data(), assignments,
                         tokens_, top_k_, H, stream);
  run_beside(beside);
  // [received, hidden] source-major at the owners
  all_to_all(kCombineTrack, stream, staging2, times(recv_rows_, H), staging, times(send_rows_, H),
             payload_type<P>());
  if (received_ > 0)  // expert-major
    cuda::permute_rows<P>(d_expert_out, staging2, to_expert_major_.data(), received_, 1, H,
                          stream);
  fork.join();
}

template void GpuExpertDispatch::dispatch_t<bf16>(bf16*, const bf16*, const BesideWork&);
template void GpuExpertDispatch::dispatch_t<float>(float*, const float*, const BesideWork&);
template void GpuExpertDispatch::combine_t<bf16>(bf16*, const bf16*, const float*, bool,
                                                 const BesideWork&);
template void GpuExpertDispatch::combine_t<float>(float*, const float*, const float*, bool,
                                                  const BesideWork&);
template void GpuExpertDispatch::dispatch_backward_t<bf16>(bf16*, const bf16*, bool,
                                                          const BesideWork&);
template void GpuExpertDispatch::dispatch_backward_t<float>(float*, const float*, bool,
                                                           const BesideWork&);
template void GpuExpertDispatch::combine_backward_t<bf16>(bf16*, float*, const bf16*, const float*,
                                                          const BesideWork&);
template void GpuExpertDispatch::combine_backward_t<float>(float*, float*, const float*,
                                                           const float*, const BesideWork&);

}  // namespace frugal::gpu

#endif  // FRUGAL_HAVE_CUDA
