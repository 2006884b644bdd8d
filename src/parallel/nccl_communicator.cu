// NCCL communicator (nccl_communicator.h): non-blocking NCCL with a polling watchdog, its own
// stream, ids bootstrapped through the host communicator.
#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda_check.h"

namespace frugal {
namespace {

// frugal::Error without core/error.h, which nvcc cannot compile (fmt).
[[noreturn]] void throw_error(const std::string& message) {
  detail::throw_communicator_error(message);
}

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(CommType type) {
  switch (type) {
    case CommType::F32: return ncclFloat32;
    case CommType::F64: return ncclFloat64;
    case CommType::BF16: return ncclBfloat16;
    case CommType::U8: return ncclUint8;
    case CommType::I32: return ncclInt32;
    case CommType::I64: return ncclInt64;
  }
  throw_error("NCCL: unknown element type " + std::to_string(static_cast<int>(type)));
}

void check_cuda_call(cudaError_t status, const char* what, const char* op) {
  if (status != cudaSuccess)
    throw_error(std::string("NCCL ") + op + ": " + what + " failed: " + cudaGetErrorString(status));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, int device, const NcclOptions& options)
      : bootstrap_(bootstrap), device_(device), options_(options) {
    rank_ = bootstrap.rank();
    size_ = bootstrap.size();
    setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);  // unless the user chose otherwise
    check_cuda_call(cudaSetDevice(device_), "cudaSetDevice", "init");
    ncclUniqueId id;
    if (rank_ == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess)
        throw_error(std::string("NCCL init: ncclGetUniqueId failed: ") + ncclGetErrorString(r));
    }
    bootstrap.broadcast(&id, static_cast<int64_t>(sizeof(id)), CommType::U8, 0);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t result = ncclCommInitRankConfig(&comm_, size_, id, rank_, &config);
    call(result, "init", "ncclCommInitRankConfig");
    wait_ready("init");
    create_stream_and_event();
  }

  // A communicator made by ncclCommSplit (already initialised and ready).
  NcclCommunicator(Communicator& bootstrap, int device, const NcclOptions& options, ncclComm_t comm)
      : bootstrap_(bootstrap), device_(device), options_(options), comm_(comm) {
    wait_ready("split");  // a non-blocking split finishes asynchronously
    int count = 0, rank = 0;
    call(ncclCommCount(comm_, &count), "split", "ncclCommCount");
    call(ncclCommUserRank(comm_, &rank), "split", "ncclCommUserRank");
    size_ = count;
    rank_ = rank;
    create_stream_and_event();
  }

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      // Finalize flushes pending work; if it cannot finish in time, abort instead of hanging.
      const ncclResult_t r = ncclCommFinalize(comm_);
      ncclResult_t state = r == ncclSuccess || r == ncclInProgress ? ncclInProgress : r;
      const auto deadline = Clock::now() + std::chrono::seconds(10);
      while (state == ncclInProgress && Clock::now() < deadline) {
        if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
        if (state == ncclInProgress) std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      if (state == ncclSuccess)
        ncclCommDestroy(comm_);
      else
        ncclCommAbort(comm_);
    }
    if (barrier_buffer_) cudaFree(barrier_buffer_);
    if (done_) cudaEventDestroy(done_);
    if (input_ready_) cudaEventDestroy(input_ready_);
    if (enqueued_done_) cudaEventDestroy(enqueued_done_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void set_input(cudaStream_t stream) { input_stream_ = stream; }
  cudaStream_t input() const { return input_stream_; }
  void set_timer(OpTimer* timer) { timer_ = timer; }

  void all_reduce_sum(void* data, int64_t count, CommType type) override {
    begin("all_reduce_sum", count, data, nullptr);
    call(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_type(type), ncclSum, comm_,
                       stream_),
         "all_reduce_sum", "ncclAllReduce");
    finish("all_reduce_sum");
  }

  void reduce_scatter_sum(void* recv, const void* send, int64_t count, CommType type) override {
    begin("reduce_scatter_sum", count, recv, send);
    call(ncclReduceScatter(send, recv, static_cast<size_t>(count), nccl_type(type), ncclSum, comm_,
                           stream_),
         "reduce_scatter_sum", "ncclReduceScatter");
    finish("reduce_scatter_sum");
  }

  // reduce_scatter_sum without the completion wait (enqueue_reduce_scatter_sum in the header).
  void reduce_scatter_sum_enqueued(void* recv, const void* send, int64_t count, CommType type) {
    begin("reduce_scatter_sum (enqueued)", count, recv, send);
    call(ncclReduceScatter(send, recv, static_cast<size_t>(count), nccl_type(type), ncclSum, comm_,
                           stream_),
         "reduce_scatter_sum (enqueued)", "ncclReduceScatter");
    if (timer_ != nullptr) timer_->op_finished(stream_);
  }
  // `stream` waits on the device for everything enqueued on this communicator's stream so far.
  void make_stream_wait(cudaStream_t stream) {
    if (comm_ == nullptr) throw_error(where("stream wait") + ": the communicator was aborted");
    check_cuda_call(cudaSetDevice(device_), "cudaSetDevice", "stream wait");
    check_cuda_call(cudaEventRecord(enqueued_done_, stream_), "cudaEventRecord", "stream wait");
    check_cuda_call(cudaStreamWaitEvent(stream, enqueued_done_, 0), "cudaStreamWaitEvent",
                    "stream wait");
  }
  // The host waits (watchdog) for everything enqueued so far.
  void complete_enqueued() {
    if (comm_ == nullptr) throw_error(where("complete") + ": the communicator was aborted");
    check_cuda_call(cudaSetDevice(device_), "cudaSetDevice", "complete");
    wait_stream("enqueued operations");
  }

  void all_gather(void* recv, const void* send, int64_t count, CommType type) override {
    begin("all_gather", count, recv, send);
    call(ncclAllGather(send, recv, static_cast<size_t>(count), nccl_type(type), comm_, stream_),
         "all_gather", "ncclAllGather");
    finish("all_gather");
  }

  void all_to_all_v(void* recv, std::span<const int64_t> recv_counts, const void* send,
                    std::span<const int64_t> send_counts, CommType type) override {
    if (static_cast<int>(recv_counts.size()) != size_ || static_cast<int>(send_counts.size()) != size_)
      throw_error("NCCL all_to_all_v: " + std::to_string(recv_counts.size()) + " receive and " +
                  std::to_string(send_counts.size()) + " send counts for a group of " +
                  std::to_string(size_) + " ranks");
    int64_t total_send = 0, total_recv = 0;
    for (int r = 0; r < size_; ++r) {
      if (send_counts[r] < 0 || recv_counts[r] < 0)
        throw_error("NCCL all_to_all_v: negative count for peer " + std::to_string(r));
      total_send += send_counts[r];
      total_recv += recv_counts[r];
    }
    begin("all_to_all_v", 0, total_recv > 0 ? recv : nullptr, total_send > 0 ? send : nullptr);
    const size_t bytes = comm_type_size(type);
    const char* in = static_cast<const char*>(send);
    char* out = static_cast<char*>(recv);
    call(ncclGroupStart(), "all_to_all_v", "ncclGroupStart");
    int64_t send_offset = 0, recv_offset = 0;
    for (int r = 0; r < size_; ++r) {
      if (send_counts[r] > 0)
        call(ncclSend(in + send_offset * bytes, static_cast<size_t>(send_counts[r]), nccl_type(type),
                      r, comm_, stream_),
             "all_to_all_v", "ncclSend");
      if (recv_counts[r] > 0)
        call(ncclRecv(out + recv_offset * bytes, static_cast<size_t>(recv_counts[r]),
                      nccl_type(type), r, comm_, stream_),
             "all_to_all_v", "ncclRecv");
      send_offset += send_counts[r];
      recv_offset += recv_counts[r];
    }
    call(ncclGroupEnd(), "all_to_all_v", "ncclGroupEnd");
    finish("all_to_all_v");
  }

  void send(const void* data, int64_t count, CommType type, int peer, int tag) override {
    check_peer(peer, tag, "send");
    begin("send", count, nullptr, data);
    call(ncclSend(data, static_cast<size_t>(count), nccl_type(type), peer, comm_, stream_), "send",
         "ncclSend");
    finish("send");
  }

  void recv(void* data, int64_t count, CommType type, int peer, int tag) override {
    check_peer(peer, tag, "recv");
    begin("recv", count, data, nullptr);
    call(ncclRecv(data, static_cast<size_t>(count), nccl_type(type), peer, comm_, stream_), "recv",
         "ncclRecv");
    finish("recv");
  }

  void broadcast(void* data, int64_t count, CommType type, int root) override {
    if (root < 0 || root >= size_)
      throw_error("NCCL broadcast: root " + std::to_string(root) + " outside the group of " +
                  std::to_string(size_) + " ranks");
    begin("broadcast", count, data, nullptr);
    call(ncclBroadcast(data, data, static_cast<size_t>(count), nccl_type(type), root, comm_,
                       stream_),
         "broadcast", "ncclBroadcast");
    finish("broadcast");
  }

  void barrier() override {
    if (!barrier_buffer_)
      check_cuda_call(cudaMalloc(&barrier_buffer_, sizeof(int32_t)), "cudaMalloc", "barrier");
    all_reduce_sum(barrier_buffer_, 1, CommType::I32);
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    if (color < 0) throw_error("NCCL split: color " + std::to_string(color) + " must be >= 0");
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t sub = nullptr;
    call(ncclCommSplit(comm_, color, key, &sub, &config), "split", "ncclCommSplit");
    // Non-blocking mode: the split completes like a collective of the parent, and the new
    // handle is filled in only once the parent's state leaves ncclInProgress (even when the call
    // itself returned ncclSuccess), so wait on the parent before reading it.
    wait_ready("split");
    if (sub == nullptr) fail_and_abort("split", "ncclCommSplit returned no communicator");
    return std::make_unique<NcclCommunicator>(bootstrap_, device_, options_, sub);
  }

  [[noreturn]] void abort(const std::string& message) override {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    bootstrap_.abort(message);
    std::abort();  // not reached: the bootstrap's abort ends the process
  }

 private:
  void create_stream_and_event() {
    check_cuda_call(cudaSetDevice(device_), "cudaSetDevice", "init");
    check_cuda_call(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                    "cudaStreamCreateWithFlags", "init");
    check_cuda_call(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate",
                    "init");
    check_cuda_call(cudaEventCreateWithFlags(&input_ready_, cudaEventDisableTiming),
                    "cudaEventCreate", "init");
    check_cuda_call(cudaEventCreateWithFlags(&enqueued_done_, cudaEventDisableTiming),
                    "cudaEventCreate", "init");
  }

  std::string where(const char* op) const {
    return std::string("NCCL ") + op + " (rank " + std::to_string(rank_) + " of " +
           std::to_string(size_) + ")";
  }

  [[noreturn]] void fail_and_abort(const char* op, const std::string& why) {
    if (comm_ != nullptr) ncclCommAbort(comm_);  // frees peers blocked on this rank too
    comm_ = nullptr;
    throw_error(where(op) + ": " + why);
  }

  // A non-blocking NCCL call returns ncclSuccess or ncclInProgress (then the communicator must be
  // ready before the next call); anything else is an error.
  void call(ncclResult_t result, const char* op, const char* function) {
    if (result == ncclInProgress) wait_ready(op);
    if (result == ncclSuccess || result == ncclInProgress) return;
    std::string detail = ncclGetErrorString(result);
    if (comm_ != nullptr) detail += std::string(" (") + ncclGetLastError(comm_) + ")";
    fail_and_abort(op, std::string(function) + " failed: " + detail);
  }

  // Watchdog: polls the communicator's state until it is ready, an error, or the deadline.
  void wait_ready(const char* op) {
    if (comm_ == nullptr) fail_and_abort(op, "the communicator was aborted");
    const auto deadline = Clock::now() + std::chrono::duration<double>(options_.timeout_seconds);
    for (;;) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) fail_and_abort(op, std::string("ncclCommGetAsyncError failed: ") + ncclGetErrorString(r));
      if (state == ncclSuccess) return;
      if (state != ncclInProgress)
        fail_and_abort(op, std::string("asynchronous error: ") + ncclGetErrorString(state) + " (" +
                               ncclGetLastError(comm_) + ")");
      if (Clock::now() > deadline)
        fail_and_abort(op, "not ready after " + std::to_string(options_.timeout_seconds) +
                               " s (a peer died or called another operation); aborted");
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void check_device_pointer(const void* p, const char* op, const char* which) {
    if (p == nullptr) return;
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error of a failed query
      throw_error(where(op) + ": the " + which + " buffer is not a CUDA allocation");
    }
    if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
      throw_error(where(op) + ": the " + which + " buffer is host memory; NCCL needs device memory");
  }

  // Argument checks, then orders the operation after the input stream's pending work.
  void begin(const char* op, int64_t count, const void* out, const void* in) {
    if (comm_ == nullptr) throw_error(where(op) + ": the communicator was aborted");
    if (count < 0) throw_error(where(op) + ": negative element count " + std::to_string(count));
    check_device_pointer(out, op, "output");
    check_device_pointer(in, op, "input");
    check_cuda_call(cudaSetDevice(device_), "cudaSetDevice", op);
    if (input_stream_ != nullptr) {
      check_cuda_call(cudaEventRecord(input_ready_, input_stream_), "cudaEventRecord", op);
      check_cuda_call(cudaStreamWaitEvent(stream_, input_ready_, 0), "cudaStreamWaitEvent", op);
    }
    if (timer_ != nullptr) timer_->op_started(stream_);
  }

  // Watchdog: waits for the enqueued work to finish on the device, watching NCCL's state.
  void finish(const char* op) {
    if (timer_ != nullptr) timer_->op_finished(stream_);
    wait_stream(op);
  }

  // The host waits (watchdog) for everything enqueued on the communicator's stream so far.
  void wait_stream(const char* op) {
    check_cuda_call(cudaEventRecord(done_, stream_), "cudaEventRecord", op);
    const auto deadline = Clock::now() + std::chrono::duration<double>(options_.timeout_seconds);
    for (;;) {
      const cudaError_t status = cudaEventQuery(done_);
      if (status == cudaSuccess) return;
      if (status != cudaErrorNotReady)
        fail_and_abort(op, std::string("the device reported ") + cudaGetErrorString(status));
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state != ncclSuccess &&
          state != ncclInProgress)
        fail_and_abort(op, std::string("asynchronous error: ") + ncclGetErrorString(state) + " (" +
                               ncclGetLastError(comm_) + ")");
      if (Clock::now() > deadline)
        fail_and_abort(op, "did not complete within " + std::to_string(options_.timeout_seconds) +
                               " s (a peer died or called another operation); aborted");
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  void check_peer(int peer, int tag, const char* op) const {
    if (peer < 0 || peer >= size_ || peer == rank_)
      throw_error(where(op) + ": peer " + std::to_string(peer) + " is not another rank");
    if (tag < 0 || tag > 32767) throw_error(where(op) + ": tag " + std::to_string(tag) + " outside [0, 32767]");
  }

  Communicator& bootstrap_;
  int device_ = 0;
  NcclOptions options_;
  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
  cudaStream_t input_stream_ = nullptr;
  OpTimer* timer_ = nullptr;  // set_op_timing
  cudaEvent_t done_ = nullptr, input_ready_ = nullptr;
  cudaEvent_t enqueued_done_ = nullptr;  // make_stream_wait
  void* barrier_buffer_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device,
                                                     const NcclOptions& options) {
  FRUGAL_CUDA_REQUIRE(options.timeout_seconds > 0, "NCCL: the watchdog timeout must be positive");
  return std::make_unique<NcclCommunicator>(bootstrap, device, options);
}

namespace {
// comm as the NCCL communicator it must be; `caller` names the function in the error.
NcclCommunicator& as_nccl(Communicator& comm, const char* caller) {
  auto* nccl = dynamic_cast<NcclCommunicator*>(&comm);
  if (nccl == nullptr)
    cuda::throw_requirement((std::string(caller) + ": not an NCCL communicator").c_str(),
                      "comm is an NcclCommunicator", __FILE__, __LINE__);
  return *nccl;
}
}  // namespace

void set_input_stream(Communicator& comm, cudaStream_t stream) {
  as_nccl(comm, "set_input_stream").set_input(stream);
}

cudaStream_t input_stream(Communicator& comm) {
  return as_nccl(comm, "input_stream").input();
}

void set_op_timing(Communicator& comm, OpTimer* timer) {
  as_nccl(comm, "set_op_timing").set_timer(timer);
}

void enqueue_reduce_scatter_sum(Communicator& comm, void* recv, const void* send, int64_t count,
                                CommType type) {
  as_nccl(comm, "enqueue_reduce_scatter_sum").reduce_scatter_sum_enqueued(recv, send, count, type);
}

void stream_wait_for_operations(Communicator& comm, cudaStream_t stream) {
  as_nccl(comm, "stream_wait_for_operations").make_stream_wait(stream);
}

void complete_enqueued(Communicator& comm) {
  as_nccl(comm, "complete_enqueued").complete_enqueued();
}

bool is_nccl_communicator(const Communicator& comm) {
  return dynamic_cast<const NcclCommunicator*>(&comm) != nullptr;
}

}  // namespace frugal
