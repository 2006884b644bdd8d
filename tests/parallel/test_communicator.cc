// The MPI communicator at 2, 4 and 8 ranks: every collective against sums each rank computes
// itself in rank order (bitwise: the communicator promises rank-order sums), for every element
// type, with counts that do not divide evenly, span several staged pieces, or are zero; in-place
// variants; all_to_all_v with uneven per-peer counts (zeros included); send/recv, broadcast,
// split (membership and key order); and the errors a caller can make (bad spans, self sends,
// a receiver expecting another count than was sent).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "core/dtype.h"
#include "parallel/mpi_communicator.h"
#include "test_util.h"

namespace frugal {
namespace {

using ::frugal::testing::error_message;

// The value rank r contributes at index i: varied magnitudes, so that the order of the additions
// changes the rounding.
double contribution(int r, int64_t i) {
  return std::sin(0.37 * static_cast<double>(i) + 1.3 * r) * std::pow(10.0, (i + r) % 7 - 3);
}

template <class T>
std::vector<T> values_of(int r, int64_t n, int64_t offset = 0) {
  std::vector<T> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(contribution(r, i + offset));
  return out;
}

template <class T>
std::vector<T> rank_order_sum(int size, int64_t n, int64_t offset = 0) {
  std::vector<T> sum = values_of<T>(0, n, offset);
  for (int r = 1; r < size; ++r) {
    std::vector<T> v = values_of<T>(r, n, offset);
    for (int64_t i = 0; i < n; ++i) sum[i] += v[i];
  }
  return sum;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Elements in one staged piece of all_reduce at this group size (mpi_communicator.h).
int64_t all_reduce_piece(int size, size_t element_bytes) {
  return kReducePieceBytes / static_cast<int64_t>(element_bytes) * size;
}

class CommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override { world = mpi_world_communicator(); }
  std::unique_ptr<Communicator> world;
};

TEST_F(CommunicatorTest, AllReduceSumsInRankOrderForFloats) {
  const int size = world->size(), rank = world->rank();
  // Small and uneven, then more than one staged piece (blocks of unequal length).
  for (int64_t n : {int64_t{1}, int64_t{size + 3}, all_reduce_piece(size, 4) + 1001}) {
    std::vector<float> f = values_of<float>(rank, n);
    world->all_reduce_sum(f.data(), n, CommType::F32);
    EXPECT_TRUE(bitwise_equal(f, rank_order_sum<float>(size, n))) << "F32 n=" << n;
  }
  const int64_t n = all_reduce_piece(size, 8) + 17;
  std::vector<double> d = values_of<double>(rank, n);
  world->all_reduce_sum(d.data(), n, CommType::F64);
  EXPECT_TRUE(bitwise_equal(d, rank_order_sum<double>(size, n)));
  world->all_reduce_sum(d.data(), 0, CommType::F64);  // nothing to do, must not hang
}

TEST_F(CommunicatorTest, AllReduceSumsIntegersAndBf16) {
  const int size = world->size(), rank = world->rank();
  const int64_t n = 37;
  std::vector<int32_t> i32(n);
  std::vector<int64_t> i64(n);
  std::vector<uint8_t> u8(n);
  std::vector<uint16_t> bf16(n);
  for (int64_t i = 0; i < n; ++i) {
    i32[i] = static_cast<int32_t>(i * 1000 - rank * 77);
    i64[i] = (int64_t{1} << 40) * (rank + 1) + i;
    u8[i] = static_cast<uint8_t>(100 + rank * 50 + i);  // wraps around
    bf16[i] = float_to_bf16_bits(static_cast<float>(contribution(rank, i)));
  }
  world->all_reduce_sum(i32.data(), n, CommType::I32);
  world->all_reduce_sum(i64.data(), n, CommType::I64);
  world->all_reduce_sum(u8.data(), n, CommType::U8);
  world->all_reduce_sum(bf16.data(), n, CommType::BF16);
  for (int64_t i = 0; i < n; ++i) {
    int64_t e32 = 0, e64 = 0;
    uint32_t e8 = 0;
    float ebf = 0;
    for (int r = 0; r < size; ++r) {
      e32 += i * 1000 - r * 77;
      e64 += (int64_t{1} << 40) * (r + 1) + i;
      e8 += static_cast<uint8_t>(100 + r * 50 + i);
      ebf += bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(contribution(r, i))));
    }
    EXPECT_EQ(i32[i], e32);
    EXPECT_EQ(i64[i], e64);
    EXPECT_EQ(u8[i], static_cast<uint8_t>(e8));
    EXPECT_EQ(bf16[i], float_to_bf16_bits(ebf)) << "BF16 accumulates in fp32, rounds once";
  }
}

TEST_F(CommunicatorTest, ReduceScatterGivesEachRankItsChunkSum) {
  const int size = world->size(), rank = world->rank();
  for (int64_t count : {int64_t{0}, int64_t{5}, kReducePieceBytes / 4 + 3}) {
    // send [size][count]: chunk r of rank s holds values_of(s, count, r * count).
    std::vector<float> send(static_cast<size_t>(count * size));
    for (int r = 0; r < size; ++r) {
      auto v = values_of<float>(rank, count, r * count);
      std::copy(v.begin(), v.end(), send.begin() + r * count);
    }
    std::vector<float> recv(static_cast<size_t>(count), -1.0f);
    world->reduce_scatter_sum(recv.data(), send.data(), count, CommType::F32);
    EXPECT_TRUE(bitwise_equal(recv, rank_order_sum<float>(size, count, rank * count)))
        << "count " << count;
    // In place: the result lands in this rank's own chunk of the send buffer.
    world->reduce_scatter_sum(send.data() + rank * count, send.data(), count, CommType::F32);
    EXPECT_TRUE(std::equal(recv.begin(), recv.end(), send.begin() + rank * count));
  }
}

TEST_F(CommunicatorTest, AllGatherPlacesBlocksInRankOrder) {
  const int size = world->size(), rank = world->rank();
  const int64_t count = 11;
  std::vector<double> mine = values_of<double>(rank, count);
  std::vector<double> all(static_cast<size_t>(count * size), 0.0);
  world->all_gather(all.data(), mine.data(), count, CommType::F64);
  for (int r = 0; r < size; ++r)
    EXPECT_TRUE(bitwise_equal(std::vector<double>(all.begin() + r * count, all.begin() + (r + 1) * count),
                              values_of<double>(r, count)))
        << "block " << r;
  // In place (send is this rank's block of recv).
  std::vector<double> inplace(static_cast<size_t>(count * size), 0.0);
  std::copy(mine.begin(), mine.end(), inplace.begin() + rank * count);
  world->all_gather(inplace.data(), inplace.data() + rank * count, count, CommType::F64);
  EXPECT_TRUE(bitwise_equal(inplace, all));
}

TEST_F(CommunicatorTest, AllToAllVWithUnevenCounts) {
  const int size = world->size(), rank = world->rank();
  // Rank s sends (3s + 5r) % 7 elements to rank r (zeros included), valued 1000*s + 100*r + i.
  auto count = [](int s, int r) { return int64_t{(3 * s + 5 * r) % 7}; };
  std::vector<int64_t> send_counts(size), recv_counts(size);
  std::vector<int32_t> send;
  for (int r = 0; r < size; ++r) {
    send_counts[r] = count(rank, r);
    recv_counts[r] = count(r, rank);
    for (int64_t i = 0; i < send_counts[r]; ++i) send.push_back(1000 * rank + 100 * r + static_cast<int32_t>(i));
  }
  const int64_t total = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  std::vector<int32_t> recv(static_cast<size_t>(total), -1);
  world->all_to_all_v(recv.data(), recv_counts, send.data(), send_counts, CommType::I32);
  int64_t at = 0;
  for (int s = 0; s < size; ++s)
    for (int64_t i = 0; i < recv_counts[s]; ++i, ++at)
      EXPECT_EQ(recv[at], 1000 * s + 100 * rank + i) << "from rank " << s;
}

TEST_F(CommunicatorTest, SendRecvBroadcastBarrier) {
  const int size = world->size(), rank = world->rank();
  // A ring: each rank sends to the next with tag 3 and receives from the previous.
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  std::vector<int64_t> out = {rank, rank * 10, -rank}, in(3, 0);
  if (rank % 2 == 0) {
    world->send(out.data(), 3, CommType::I64, next, 3);
    world->recv(in.data(), 3, CommType::I64, prev, 3);
  } else {
    world->recv(in.data(), 3, CommType::I64, prev, 3);
    world->send(out.data(), 3, CommType::I64, next, 3);
  }
  EXPECT_EQ(in, (std::vector<int64_t>{prev, prev * 10, -prev}));

  std::vector<float> b = rank == size - 1 ? values_of<float>(99, 9) : std::vector<float>(9, 0.0f);
  world->broadcast(b.data(), 9, CommType::F32, size - 1);
  EXPECT_TRUE(bitwise_equal(b, values_of<float>(99, 9)));
  world->barrier();
}

TEST_F(CommunicatorTest, SplitGroupsByColorAndOrdersByKey) {
  const int size = world->size(), rank = world->rank();
  // Even and odd ranks; keys reversed, so group rank 0 is the highest world rank of the color.
  auto group = world->split(rank % 2, size - rank);
  const int members = (size + 1 - rank % 2) / 2;
  EXPECT_EQ(group->size(), members);
  std::vector<int32_t> world_ranks(static_cast<size_t>(group->size()));
  const int32_t mine = rank;
  group->all_gather(world_ranks.data(), &mine, 1, CommType::I32);
  for (int g = 1; g < group->size(); ++g) EXPECT_GT(world_ranks[g - 1], world_ranks[g]);
  for (int32_t r : world_ranks) EXPECT_EQ(r % 2, rank % 2);
  EXPECT_EQ(world_ranks[group->rank()], rank);
  int64_t sum = rank;
  group->all_reduce_sum(&sum, 1, CommType::I64);
  int64_t expected = 0;
  for (int r = rank % 2; r < size; r += 2) expected += r;
  EXPECT_EQ(sum, expected);
}

TEST_F(CommunicatorTest, CallerErrorsThrowNamingTheOperation) {
  const int size = world->size(), rank = world->rank();
  std::vector<int64_t> counts(static_cast<size_t>(size) + 1, 0);
  EXPECT_NE(error_message([&] {
              world->all_to_all_v(nullptr, counts, nullptr, counts, CommType::F32);
            }).find("all_to_all_v"),
            std::string::npos);
  float x = 0;
  EXPECT_NE(error_message([&] { world->send(&x, 1, CommType::F32, rank, 0); }).find("send: peer"),
            std::string::npos);
  EXPECT_NE(error_message([&] { world->broadcast(&x, 1, CommType::F32, size); }).find("root"),
            std::string::npos);
  EXPECT_NE(error_message([&] { world->all_reduce_sum(&x, -1, CommType::F32); }).find("negative"),
            std::string::npos);

  // Rank 0 sends 3 floats to rank 1, which expects 5: rank 1's receive fails with a message
  // naming the sizes; rank 0's send completes.
  std::vector<float> buffer(5, 0.0f);
  if (rank == 0) world->send(buffer.data(), 3, CommType::F32, 1, 9);
  if (rank == 1) {
    const std::string message =
        error_message([&] { world->recv(buffer.data(), 5, CommType::F32, 0, 9); });
    EXPECT_NE(message.find("expected a message of 20 bytes from rank 0 and got 12"),
              std::string::npos)
        << message;
  }
  world->barrier();
}

}  // namespace
}  // namespace frugal
