// The NCCL communicator: the Communicator interface (communicator.h) for device (GPU) buffers,
// for builds with CUDA and NCCL (FRUGAL_HAVE_NCCL).
//
// Bootstrap: rank 0 of a host communicator (MPI, same ranks) creates the NCCL unique id and
// broadcasts it; every rank then joins with ncclCommInitRankConfig on the given device. NVLink
// SHARP (NVLS) is switched off through NCCL_NVLS_ENABLE=0 when the variable is unset (the lent
// machines do not support NVLink multicast).
//
// Streams and completion: every operation is enqueued on the communicator's own stream. If an
// input stream is set (set_input_stream), that stream's work so far is waited for on the device
// (an event, no host synchronisation) before the operation; the call then returns when the
// operation is complete, so its result may be used by any stream or the host.
//
// Watchdog: the communicator is non-blocking (ncclConfig blocking = 0); every NCCL call and every
// operation's completion is polled against a deadline (timeout_seconds). An asynchronous NCCL
// error, or a deadline passed (a peer died or diverged), aborts the NCCL communicator
// (ncclCommAbort) and throws frugal::Error naming the operation and the rank; abort() aborts NCCL
// and then the whole job through the host communicator (MPI_Abort).
//
// Enqueued operations (ZeRO-1's reduce-scatter during the backward, parallel/gpu_zero1.h):
// enqueue_reduce_scatter_sum is reduce_scatter_sum (the same checks, the same wait for the input
// stream, the same NCCL call on the communicator's stream) but returns once the operation is
// enqueued, not complete. Its buffers belong to the operation until the host has called
// complete_enqueued (waits, under the watchdog, for everything enqueued so far) or until a stream
// has been made to wait for it (stream_wait_for_operations: a device-side wait, no host
// synchronisation). Any later blocking operation of the communicator also completes it (one
// stream, in order).
//
// Timing (overlap measurement, parallel/overlap_stats.h): while an OpTimer is set
// (set_op_timing), every operation calls timer->op_started(stream) once its wait for the input
// stream is enqueued and timer->op_finished(stream) after its NCCL work, `stream` being the
// communicator's own; the timer enqueues its timing events there, so they mark when the operation
// ran on the device.
//
// Sums use NCCL's reduction order (fixed for a given topology and algorithm, not rank order).
// send/recv: NCCL has no tags; messages between two ranks match in order (the tag is only
// range-checked). All buffers must be device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace frugal {

struct NcclOptions {
  double timeout_seconds = 600;  // watchdog deadline of one operation (and of the set-up)
};

// Collective over `bootstrap`: an NCCL communicator over the same ranks on CUDA device `device`.
// `bootstrap` must outlive the result (abort() uses it).
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device,
                                                     const NcclOptions& options = {});

// The stream whose pending work every later operation of `comm` (an NCCL communicator) waits for;
// nullptr for none. Throws when `comm` is not an NCCL communicator.
void set_input_stream(Communicator& comm, cudaStream_t stream);

// Receives the start and end of every operation of a communicator (see "Timing" above).
class OpTimer {
 public:
  virtual ~OpTimer() = default;
  virtual void op_started(cudaStream_t stream) = 0;
  virtual void op_finished(cudaStream_t stream) = 0;
};

// The stream set by set_input_stream (nullptr: none). Throws when `comm` is not NCCL.
cudaStream_t input_stream(Communicator& comm);
// Every later operation of `comm` reports to `timer` (nullptr: none; the caller keeps it alive
// while set). Throws when `comm` is not an NCCL communicator.
void set_op_timing(Communicator& comm, OpTimer* timer);
// See "Enqueued operations" above. Each throws when `comm` is not an NCCL communicator.
void enqueue_reduce_scatter_sum(Communicator& comm, void* recv, const void* send, int64_t count,
                                CommType type);
void stream_wait_for_operations(Communicator& comm, cudaStream_t stream);
void complete_enqueued(Communicator& comm);
// Whether `comm` is an NCCL communicator (made by make_nccl_communicator or its split).
bool is_nccl_communicator(const Communicator& comm);

namespace detail {
// Throws frugal::Error(message); defined in communicator.cc for CUDA sources, which cannot include
// core/error.h (nvcc does not compile fmt).
[[noreturn]] void throw_communicator_error(const std::string& message);
}  // namespace detail

}  // namespace frugal
