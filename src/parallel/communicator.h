// The communicator: the collective and point-to-point operations of data, expert and pipeline
// parallelism, over one group of ranks. Two implementations: MPI for host (CPU) buffers and
// NCCL for device buffers (bootstrapped through MPI, its own stream). Buffers are raw pointers
// plus an element count and type; every rank of the group must make the same calls in the same
// order (the usual collective contract). Reductions are sums.
//
// Determinism: the MPI implementation reduces in rank order (rank 0 + rank 1 + ...), whatever the
// transport does, so a run's results do not depend on message timing.
//
// Failure: an error on any rank (an exception, a signal, a lost peer) ends every rank of the job
// with a message naming the failing rank within a bounded time; see abort().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace frugal {

enum class CommType { F32, F64, BF16, U8, I32, I64 };
size_t comm_type_size(CommType type);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: data[count] = sum over ranks.
  virtual void all_reduce_sum(void* data, int64_t count, CommType type) = 0;
  // send [count * size()] -> recv [count]: rank r receives the sum of every rank's r-th chunk.
  virtual void reduce_scatter_sum(void* recv, const void* send, int64_t count, CommType type) = 0;
  // send [count] -> recv [count * size()], rank r's block at r * count.
  virtual void all_gather(void* recv, const void* send, int64_t count, CommType type) = 0;
  // All-to-all with per-peer counts (elements): send_counts[r] elements go to rank r, taken
  // contiguously from send in rank order; recv_counts[r] arrive from rank r, stored in rank order.
  virtual void all_to_all_v(void* recv, std::span<const int64_t> recv_counts, const void* send,
                            std::span<const int64_t> send_counts, CommType type) = 0;
  virtual void send(const void* data, int64_t count, CommType type, int peer, int tag) = 0;
  virtual void recv(void* data, int64_t count, CommType type, int peer, int tag) = 0;
  // Broadcast from `root` in place.
  virtual void broadcast(void* data, int64_t count, CommType type, int root) = 0;
  virtual void barrier() = 0;
  // Splits into sub-groups: ranks with the same `color` form one group, ordered by `key`.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // Ends the whole job now with `message` (every rank exits, nobody hangs).
  [[noreturn]] virtual void abort(const std::string& message) = 0;
};

}  // namespace frugal
