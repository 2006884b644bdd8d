// MPI communicator (mpi_communicator.h): deterministic rank-order sums over point-to-point
// messages, errors as frugal::Error, abort through MPI_Abort.
#include "parallel/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace frugal {
namespace {

constexpr int64_t kMaxMessageBytes = int64_t{1} << 30;
constexpr int kCollectiveTag = 7;

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return fmt::format("MPI error {}", code);
  return std::string(text, static_cast<size_t>(length));
}

int world_rank() {
  int flag = 0, rank = -1;
  MPI_Initialized(&flag);
  if (flag) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// dst[i] = parts[0][i] + parts[1][i] + ... (rank order). Floats: one rounding per addition;
// BF16: fp32 accumulation rounded to BF16 once; integers: two's-complement wrap-around.
template <class T>
void sum_parts(T* dst, const std::vector<const void*>& parts, int64_t n) {
  std::memcpy(dst, parts[0], static_cast<size_t>(n) * sizeof(T));
  for (size_t r = 1; r < parts.size(); ++r) {
    const T* src = static_cast<const T*>(parts[r]);
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }
}

template <class T>
void sum_parts_wrapping(T* dst, const std::vector<const void*>& parts, int64_t n) {
  using U = std::make_unsigned_t<T>;
  std::memcpy(dst, parts[0], static_cast<size_t>(n) * sizeof(T));
  for (size_t r = 1; r < parts.size(); ++r) {
    const T* src = static_cast<const T*>(parts[r]);
    for (int64_t i = 0; i < n; ++i)
      dst[i] = static_cast<T>(static_cast<U>(dst[i]) + static_cast<U>(src[i]));
  }
}

void sum_in_rank_order(void* dst, const std::vector<const void*>& parts, int64_t n,
                       CommType type) {
  switch (type) {
    case CommType::F32: return sum_parts(static_cast<float*>(dst), parts, n);
    case CommType::F64: return sum_parts(static_cast<double*>(dst), parts, n);
    case CommType::I32: return sum_parts_wrapping(static_cast<int32_t*>(dst), parts, n);
    case CommType::I64: return sum_parts_wrapping(static_cast<int64_t*>(dst), parts, n);
    case CommType::U8: return sum_parts_wrapping(static_cast<uint8_t*>(dst), parts, n);
    case CommType::BF16: {
      uint16_t* out = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        float acc = bf16_bits_to_float(static_cast<const uint16_t*>(parts[0])[i]);
        for (size_t r = 1; r < parts.size(); ++r)
          acc += bf16_bits_to_float(static_cast<const uint16_t*>(parts[r])[i]);
        out[i] = float_to_bf16_bits(acc);
      }
      return;
    }
  }
}

// One side of a point-to-point transfer: `bytes` bytes to or from `peer`.
struct Transfer {
  const void* send = nullptr;  // for sends
  void* recv = nullptr;        // for receives
  int64_t bytes = 0;
  int peer = 0;
};

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` when `owned` (freed on destruction); uses a duplicate for send/recv.
  MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "create", "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(comm_, &rank_), "create", "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "create", "MPI_Comm_size");
    check(MPI_Comm_dup(comm_, &p2p_comm_), "create", "MPI_Comm_dup");
    check(MPI_Comm_set_errhandler(p2p_comm_, MPI_ERRORS_RETURN), "create",
          "MPI_Comm_set_errhandler");
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;  // MPI already released every communicator
    MPI_Comm_free(&p2p_comm_);
    if (owned_) MPI_Comm_free(&comm_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum(void* data, int64_t count, CommType type) override {
    check_count(count, "all_reduce_sum");
    if (size_ == 1 || count == 0) return;
    const int64_t ts = static_cast<int64_t>(comm_type_size(type));
    const int64_t block_max = kReducePieceBytes / ts;  // elements of one rank's block per piece
    const int64_t piece_max = block_max * size_;
    std::vector<char> staging(static_cast<size_t>(block_max * size_ * ts));
    std::vector<char> reduced(static_cast<size_t>(block_max * ts));
    char* bytes = static_cast<char*>(data);
    for (int64_t offset = 0; offset < count; offset += piece_max) {
      const int64_t length = std::min(piece_max, count - offset);
      auto block_begin = [&](int r) { return offset + length * r / size_; };
      const int64_t mine = block_begin(rank_ + 1) - block_begin(rank_);
      // Phase 1: block r of every rank goes to rank r, which sums the blocks in rank order.
      std::vector<Transfer> sends, recvs;
      for (int r = 0; r < size_; ++r) {
        if (r == rank_) continue;
        sends.push_back({bytes + block_begin(r) * ts, nullptr,
                         (block_begin(r + 1) - block_begin(r)) * ts, r});
        recvs.push_back({nullptr, staging.data() + r * block_max * ts, mine * ts, r});
      }
      std::memcpy(staging.data() + rank_ * block_max * ts, bytes + block_begin(rank_) * ts,
                  static_cast<size_t>(mine * ts));
      exchange("all_reduce_sum", sends, recvs, comm_, kCollectiveTag);
      std::vector<const void*> parts;
      for (int r = 0; r < size_; ++r) parts.push_back(staging.data() + r * block_max * ts);
      sum_in_rank_order(reduced.data(), parts, mine, type);
      // Phase 2: every rank's summed block goes to every rank.
      sends.clear();
      recvs.clear();
      for (int r = 0; r < size_; ++r) {
        if (r == rank_) continue;
        sends.push_back({reduced.data(), nullptr, mine * ts, r});
        recvs.push_back({nullptr, bytes + block_begin(r) * ts,
                         (block_begin(r + 1) - block_begin(r)) * ts, r});
      }
      std::memcpy(bytes + block_begin(rank_) * ts, reduced.data(), static_cast<size_t>(mine * ts));
      exchange("all_reduce_sum", sends, recvs, comm_, kCollectiveTag);
    }
  }

  void reduce_scatter_sum(void* recv, const void* send, int64_t count, CommType type) override {
    check_count(count, "reduce_scatter_sum");
    const int64_t ts = static_cast<int64_t>(comm_type_size(type));
    const char* in = static_cast<const char*>(send);
    char* out = static_cast<char*>(recv);
    if (size_ == 1) {
      if (out != in) std::memmove(out, in, static_cast<size_t>(count * ts));
      return;
    }
    const int64_t piece_max = kReducePieceBytes / ts;
    std::vector<char> staging(static_cast<size_t>(std::min(piece_max, count) * size_ * ts));
    for (int64_t offset = 0; offset < count; offset += piece_max) {
      const int64_t length = std::min(piece_max, count - offset);
      std::vector<Transfer> sends, recvs;
      for (int r = 0; r < size_; ++r) {
        if (r == rank_) continue;
        sends.push_back({in + (r * count + offset) * ts, nullptr, length * ts, r});
        recvs.push_back({nullptr, staging.data() + r * length * ts, length * ts, r});
      }
      std::memcpy(staging.data() + rank_ * length * ts, in + (rank_ * count + offset) * ts,
                  static_cast<size_t>(length * ts));
      exchange("reduce_scatter_sum", sends, recvs, comm_, kCollectiveTag);
      std::vector<const void*> parts;
      for (int r = 0; r < size_; ++r) parts.push_back(staging.data() + r * length * ts);
      sum_in_rank_order(out + offset * ts, parts, length, type);
    }
  }

  void all_gather(void* recv, const void* send, int64_t count, CommType type) override {
    check_count(count, "all_gather");
    const int64_t bytes = count * static_cast<int64_t>(comm_type_size(type));
    char* out = static_cast<char*>(recv);
    std::vector<Transfer> sends, recvs;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      sends.push_back({send, nullptr, bytes, r});
      recvs.push_back({nullptr, out + r * bytes, bytes, r});
    }
    if (out + rank_ * bytes != send) std::memmove(out + rank_ * bytes, send, static_cast<size_t>(bytes));
    exchange("all_gather", sends, recvs, comm_, kCollectiveTag);
  }

  void all_to_all_v(void* recv, std::span<const int64_t> recv_counts, const void* send,
                    std::span<const int64_t> send_counts, CommType type) override {
    FRUGAL_CHECK(static_cast<int>(recv_counts.size()) == size_ &&
                     static_cast<int>(send_counts.size()) == size_,
                 "all_to_all_v: {} receive and {} send counts for a group of {} ranks",
                 recv_counts.size(), send_counts.size(), size_);
    const int64_t ts = static_cast<int64_t>(comm_type_size(type));
    const char* in = static_cast<const char*>(send);
    char* out = static_cast<char*>(recv);
    std::vector<Transfer> sends, recvs;
    int64_t send_offset = 0, recv_offset = 0;
    for (int r = 0; r < size_; ++r) {
      check_count(send_counts[r], "all_to_all_v");
      check_count(recv_counts[r], "all_to_all_v");
      if (r == rank_) {
        FRUGAL_CHECK(send_counts[r] == recv_counts[r],
                     "all_to_all_v: rank {} sends itself {} elements but expects {}", rank_,
                     send_counts[r], recv_counts[r]);
        std::memmove(out + recv_offset * ts, in + send_offset * ts,
                     static_cast<size_t>(send_counts[r] * ts));
      } else {
        sends.push_back({in + send_offset * ts, nullptr, send_counts[r] * ts, r});
        recvs.push_back({nullptr, out + recv_offset * ts, recv_counts[r] * ts, r});
      }
      send_offset += send_counts[r];
      recv_offset += recv_counts[r];
    }
    exchange("all_to_all_v", sends, recvs, comm_, kCollectiveTag);
  }

  void send(const void* data, int64_t count, CommType type, int peer, int tag) override {
    check_peer(peer, tag, "send");
    const int64_t bytes = count * static_cast<int64_t>(comm_type_size(type));
    check_count(count, "send");
    exchange("send", {{data, nullptr, bytes, peer}}, {}, p2p_comm_, tag);
  }

  void recv(void* data, int64_t count, CommType type, int peer, int tag) override {
    check_peer(peer, tag, "recv");
    const int64_t bytes = count * static_cast<int64_t>(comm_type_size(type));
    check_count(count, "recv");
    exchange("recv", {}, {{nullptr, data, bytes, peer}}, p2p_comm_, tag);
  }

  void broadcast(void* data, int64_t count, CommType type, int root) override {
    FRUGAL_CHECK(root >= 0 && root < size_, "broadcast: root {} outside the group of {} ranks",
                 root, size_);
    check_count(count, "broadcast");
    const int64_t bytes = count * static_cast<int64_t>(comm_type_size(type));
    char* p = static_cast<char*>(data);
    for (int64_t offset = 0; offset < bytes; offset += kMaxMessageBytes) {
      const int length = static_cast<int>(std::min(kMaxMessageBytes, bytes - offset));
      check(MPI_Bcast(p + offset, length, MPI_BYTE, root, comm_), "broadcast", "MPI_Bcast");
    }
  }

  void barrier() override { check(MPI_Barrier(comm_), "barrier", "MPI_Barrier"); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    FRUGAL_CHECK(color >= 0, "split: color {} must be >= 0", color);
    MPI_Comm sub = MPI_COMM_NULL;
    check(MPI_Comm_split(comm_, color, key, &sub), "split", "MPI_Comm_split");
    return std::make_unique<MpiCommunicator>(sub, /*owned=*/true);
  }

  [[noreturn]] void abort(const std::string& message) override {
    std::fflush(stdout);
    std::fprintf(stderr, "frugal: rank %d: %s\n", world_rank(), message.c_str());
    std::fprintf(stderr, "frugal: rank %d: ending every rank of the job (MPI_Abort)\n",
                 world_rank());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; if it did, still end this rank
  }

 private:
  void check(int rc, const char* op, const char* function) const {
    if (rc == MPI_SUCCESS) return;
    fail("MPI {} failed on rank {} of {} (world rank {}) in {}: {}", op, rank_, size_,
         world_rank(), function, mpi_error_text(rc));
  }
  void check_count(int64_t count, const char* op) const {
    FRUGAL_CHECK(count >= 0, "{}: negative element count {} on rank {}", op, count, rank_);
  }
  void check_peer(int peer, int tag, const char* op) const {
    FRUGAL_CHECK(peer >= 0 && peer < size_ && peer != rank_,
                 "{}: peer {} is not another rank of this group of {} (this rank is {})", op,
                 peer, size_, rank_);
    FRUGAL_CHECK(tag >= 0 && tag <= 32767, "{}: tag {} outside [0, 32767]", op, tag);
  }

  // Posts every receive, then every send (each cut into messages of at most 1 GiB; MPI keeps the
  // order of messages between two ranks with one tag), waits for all and checks that each
  // received message had the expected size.
  void exchange(const char* op, const std::vector<Transfer>& sends,
                const std::vector<Transfer>& recvs, MPI_Comm comm, int tag) {
    std::vector<MPI_Request> requests;
    std::vector<int64_t> expected;  // bytes of each receive message, in request order
    for (const Transfer& t : recvs)
      for (int64_t offset = 0; offset < t.bytes; offset += kMaxMessageBytes) {
        const int length = static_cast<int>(std::min(kMaxMessageBytes, t.bytes - offset));
        requests.emplace_back();
        check(MPI_Irecv(static_cast<char*>(t.recv) + offset, length, MPI_BYTE, t.peer, tag, comm,
                        &requests.back()),
              op, "MPI_Irecv");
        expected.push_back(length);
      }
    const size_t receives = requests.size();
    for (const Transfer& t : sends)
      for (int64_t offset = 0; offset < t.bytes; offset += kMaxMessageBytes) {
        const int length = static_cast<int>(std::min(kMaxMessageBytes, t.bytes - offset));
        requests.emplace_back();
        check(MPI_Isend(static_cast<const char*>(t.send) + offset, length, MPI_BYTE, t.peer, tag,
                        comm, &requests.back()),
              op, "MPI_Isend");
      }
    if (requests.empty()) return;
    std::vector<MPI_Status> statuses(requests.size());
    const int rc = MPI_Waitall(static_cast<int>(requests.size()), requests.data(), statuses.data());
    if (rc == MPI_ERR_IN_STATUS)
      for (const MPI_Status& s : statuses)
        if (s.MPI_ERROR != MPI_SUCCESS && s.MPI_ERROR != MPI_ERR_PENDING)
          check(s.MPI_ERROR, op, "MPI_Waitall");
    check(rc, op, "MPI_Waitall");
    for (size_t i = 0; i < receives; ++i) {
      int got = 0;
      check(MPI_Get_count(&statuses[i], MPI_BYTE, &got), op, "MPI_Get_count");
      FRUGAL_CHECK(got == expected[i],
                   "MPI {}: rank {} expected a message of {} bytes from rank {} and got {} (the "
                   "ranks disagree on the counts)",
                   op, rank_, expected[i], statuses[i].MPI_SOURCE, got);
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm p2p_comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0, size_ = 1;
};

int env_int(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::atoi(value) : 0;
}

void finalize_at_exit() { mpi_finalize(); }

}  // namespace

bool launched_with_several_ranks() {
  return env_int("OMPI_COMM_WORLD_SIZE") > 1 || env_int("PMI_SIZE") > 1 ||
         env_int("PMIX_SIZE") > 1 || env_int("SLURM_STEP_NUM_TASKS") > 1;
}

void mpi_init(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  FRUGAL_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed: {}", mpi_error_text(rc));
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit(finalize_at_exit);
}

bool mpi_initialized() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

void mpi_finalize() {
  if (mpi_initialized()) MPI_Finalize();
}

std::unique_ptr<Communicator> mpi_world_communicator() {
  FRUGAL_CHECK(mpi_initialized(), "mpi_world_communicator: MPI is not initialised (mpi_init)");
  MPI_Comm world = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &world);
  FRUGAL_CHECK(rc == MPI_SUCCESS, "MPI_Comm_dup(MPI_COMM_WORLD) failed: {}", mpi_error_text(rc));
  return std::make_unique<MpiCommunicator>(world, /*owned=*/true);
}

}  // namespace frugal
