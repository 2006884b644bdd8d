// The NCCL communicator on GPUs (label "cuda"; run under mpirun with one rank per GPU, e.g.
// `mpirun -np 2 build/test_parallel_nccl_cuda` on a 2-GPU machine). Each rank uses GPU
// rank % device_count; with fewer GPUs than ranks every test is skipped (NCCL refuses two ranks on
// one GPU). Every collective against values computed on the host, on device buffers poisoned first,
// with odd counts: all_reduce (F32 exactly when the sum has 2 terms, which any order gives; F64,
// I64, BF16 within one BF16 rounding), reduce_scatter, all_gather, all_to_all_v with uneven counts
// (zeros included), send/recv, broadcast, barrier, split; a host pointer is refused with a clear
// error; and the watchdog: when rank 0 waits in an all-reduce that rank 1 never joins, rank 0's
// call ends with an error naming the operation within the timeout instead of hanging.
// GradientAllReducer (gpu_data_parallel.h): tensors laid out in a different address order on each
// rank (reversed on odd ranks) are still summed tensor by tensor, in place and bucketed alike, the
// gaps between them untouched; ranks listing different tensors are refused; merge_device_spans
// merges overlaps, keeps touching arrays apart and keeps the caller's order, not the address order.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/device_context.h"
#include "core/dtype.h"
#include "parallel/mpi_communicator.h"
#include "parallel/gpu_data_parallel.h"
#include "parallel/nccl_communicator.h"
#include "test_util.h"

namespace frugal {
namespace {

using ::frugal::testing::error_message;

template <class T>
class Device {
 public:
  explicit Device(size_t n) : n_(n) {
    EXPECT_EQ(cudaMalloc(&p_, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemset(p_, 0xCD, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess);  // poison
  }
  ~Device() { cudaFree(p_); }
  T* get() { return p_; }
  void upload(const std::vector<T>& v) {
    ASSERT_EQ(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> download() {
    std::vector<T> v(n_);
    EXPECT_EQ(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

double value(int rank, int64_t i) { return std::sin(0.1 * static_cast<double>(i) + rank) * (1 + i % 5); }

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    host = mpi_world_communicator();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < host->size())
      GTEST_SKIP() << "needs one GPU per rank (" << devices << " GPUs, " << host->size() << " ranks)";
    rank = host->rank();
    size = host->size();
    ASSERT_EQ(cudaSetDevice(rank % devices), cudaSuccess);
    nccl = make_nccl_communicator(*host, rank % devices);
  }
  std::unique_ptr<Communicator> host, nccl;
  int rank = 0, size = 1;
};

TEST_F(NcclTest, AllReduceSumsEveryType) {
  EXPECT_EQ(nccl->rank(), rank);
  EXPECT_EQ(nccl->size(), size);
  const int64_t n = 1000003;  // odd
  std::vector<float> f(n);
  std::vector<double> d(n);
  std::vector<int64_t> i64(n);
  std::vector<uint16_t> bf(n);
  for (int64_t i = 0; i < n; ++i) {
    f[i] = static_cast<float>(value(rank, i));
    d[i] = value(rank, i);
    i64[i] = (int64_t{1} << 36) * rank + i;
    bf[i] = float_to_bf16_bits(static_cast<float>(value(rank, i)));
  }
  Device<float> df(n);
  Device<double> dd(n);
  Device<int64_t> di(n);
  Device<uint16_t> db(n);
  df.upload(f);
  dd.upload(d);
  di.upload(i64);
  db.upload(bf);
  nccl->all_reduce_sum(df.get(), n, CommType::F32);
  nccl->all_reduce_sum(dd.get(), n, CommType::F64);
  nccl->all_reduce_sum(di.get(), n, CommType::I64);
  nccl->all_reduce_sum(db.get(), n, CommType::BF16);
  const auto rf = df.download();
  const auto rd = dd.download();
  const auto ri = di.download();
  const auto rb = db.download();
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0, bf_sum = 0;
    float fsum = 0;
    int64_t isum = 0;
    for (int r = 0; r < size; ++r) {
      sum += value(r, i);
      fsum += static_cast<float>(value(r, i));
      isum += (int64_t{1} << 36) * r + i;
      bf_sum += bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(value(r, i))));
    }
    if (size == 2 && rf[i] != fsum) ++bad;  // a + b: the same in any order
    if (std::fabs(rf[i] - sum) > 1e-5 * (1 + std::fabs(sum))) ++bad;
    if (std::fabs(rd[i] - sum) > 1e-12 * (1 + std::fabs(sum))) ++bad;
    if (ri[i] != isum) ++bad;
    if (std::fabs(bf16_bits_to_float(rb[i]) - bf_sum) > 0.01 * (1 + std::fabs(bf_sum))) ++bad;
  }
  EXPECT_EQ(bad, 0);
}

TEST_F(NcclTest, ReduceScatterAllGatherBroadcast) {
  const int64_t count = 4099;
  std::vector<double> send(static_cast<size_t>(count * size));
  for (int64_t i = 0; i < count * size; ++i) send[i] = value(rank, i);
  Device<double> dsend(send.size()), drecv(count);
  dsend.upload(send);
  nccl->reduce_scatter_sum(drecv.get(), dsend.get(), count, CommType::F64);
  auto got = drecv.download();
  for (int64_t i = 0; i < count; ++i) {
    double sum = 0;
    for (int r = 0; r < size; ++r) sum += value(r, rank * count + i);
    ASSERT_NEAR(got[i], sum, 1e-12 * (1 + std::fabs(sum))) << i;
  }

  Device<double> all(static_cast<size_t>(count * size));
  nccl->all_gather(all.get(), drecv.get(), count, CommType::F64);
  auto gathered = all.download();
  for (int r = 0; r < size; ++r)
    for (int64_t i = 0; i < count; ++i) {
      double sum = 0;
      for (int s = 0; s < size; ++s) sum += value(s, r * count + i);
      ASSERT_NEAR(gathered[r * count + i], sum, 1e-12 * (1 + std::fabs(sum)));
    }

  std::vector<int32_t> b(77, rank == size - 1 ? 42 : -1);
  Device<int32_t> db(b.size());
  db.upload(b);
  nccl->broadcast(db.get(), 77, CommType::I32, size - 1);
  EXPECT_EQ(db.download(), std::vector<int32_t>(77, 42));
  nccl->barrier();
}

TEST_F(NcclTest, AllToAllVSendRecvSplit) {
  auto count = [](int s, int r) { return int64_t{(3 * s + 5 * r) % 7} * 1000; };
  std::vector<int64_t> send_counts(size), recv_counts(size);
  std::vector<int32_t> send;
  for (int r = 0; r < size; ++r) {
    send_counts[r] = count(rank, r);
    recv_counts[r] = count(r, rank);
    for (int64_t i = 0; i < send_counts[r]; ++i) send.push_back(100000 * rank + 1000 * r + static_cast<int32_t>(i % 1000));
  }
  const int64_t total = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  Device<int32_t> dsend(send.size()), drecv(static_cast<size_t>(total));
  dsend.upload(send);
  nccl->all_to_all_v(drecv.get(), recv_counts, dsend.get(), send_counts, CommType::I32);
  auto got = drecv.download();
  int64_t at = 0, bad = 0;
  for (int s = 0; s < size; ++s)
    for (int64_t i = 0; i < recv_counts[s]; ++i, ++at)
      if (got[at] != 100000 * s + 1000 * rank + i % 1000) ++bad;
  EXPECT_EQ(bad, 0);

  // A ring of send/recv (even ranks send first).
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;
  Device<float> out(5), in(5);
  out.upload(std::vector<float>(5, static_cast<float>(rank)));
  if (size > 1) {
    if (rank % 2 == 0) {
      nccl->send(out.get(), 5, CommType::F32, next, 0);
      nccl->recv(in.get(), 5, CommType::F32, prev, 0);
    } else {
      nccl->recv(in.get(), 5, CommType::F32, prev, 0);
      nccl->send(out.get(), 5, CommType::F32, next, 0);
    }
    EXPECT_EQ(in.download(), std::vector<float>(5, static_cast<float>(prev)));
  }

  auto group = nccl->split(rank % 2, rank);
  EXPECT_EQ(group->size(), (size + 1 - rank % 2) / 2);
  Device<int64_t> one(1);
  one.upload({rank});
  group->all_reduce_sum(one.get(), 1, CommType::I64);
  int64_t expected = 0;
  for (int r = rank % 2; r < size; r += 2) expected += r;
  EXPECT_EQ(one.download()[0], expected);
}

TEST_F(NcclTest, HostPointersAreRefused) {
  std::vector<float> host_buffer(8, 1.0f);
  const std::string message =
      error_message([&] { nccl->all_reduce_sum(host_buffer.data(), 8, CommType::F32); });
  EXPECT_NE(message.find("NCCL all_reduce_sum"), std::string::npos) << message;
  EXPECT_NE(message.find("device memory"), std::string::npos) << message;
  nccl->barrier();  // the communicator is still usable
}

TEST_F(NcclTest, WatchdogEndsAnOperationAPeerNeverJoins) {
  if (size < 2) GTEST_SKIP() << "needs 2 ranks";
  int devices = 0;
  cudaGetDeviceCount(&devices);
  NcclOptions options;
  options.timeout_seconds = 3;
  auto short_fuse = make_nccl_communicator(*host, rank % devices, options);
  Device<float> x(16);
  if (rank == 0) {
    const auto start = std::chrono::steady_clock::now();
    const std::string message =
        error_message([&] { short_fuse->all_reduce_sum(x.get(), 16, CommType::F32); });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_NE(message.find("NCCL all_reduce_sum (rank 0 of"), std::string::npos) << message;
    EXPECT_NE(message.find("aborted"), std::string::npos) << message;
    EXPECT_LT(seconds, 30.0);
  }
  host->barrier();
}

// Host pointers stand in for device ones: merge_device_spans only compares addresses.
TEST(MergeDeviceSpans, MergesOverlapsKeepsTouchingApartAndTheCallersOrder) {
  std::vector<float> memory(100);
  float* base = memory.data();
  const std::vector<gpu::DeviceSpan> merged = gpu::merge_device_spans({
      {base + 60, 10},  // 0: alone (touches 1 at 70, stays apart)
      {base + 70, 5},   // 1: alone
      {base + 10, 20},  // 2: overlaps 3 -> [5, 30)
      {nullptr, 4},     // dropped
      {base + 5, 10},   // 3
      {base + 40, 0},   // dropped (empty)
      {base + 0, 2},    // 4: alone, lowest address but last in the list
  });
  ASSERT_EQ(merged.size(), 4u);
  EXPECT_EQ(merged[0].data, base + 60);
  EXPECT_EQ(merged[0].count, 10);
  EXPECT_EQ(merged[1].data, base + 70);
  EXPECT_EQ(merged[1].count, 5);
  EXPECT_EQ(merged[2].data, base + 5);
  EXPECT_EQ(merged[2].count, 25);
  EXPECT_EQ(merged[3].data, base + 0);
  EXPECT_EQ(merged[3].count, 2);
}

// Tensors of `sizes` placed in one device block with a 3-element gap after each, in list order on
// even ranks and reversed on odd ranks (so the address order differs between ranks); the spans are
// listed in tensor order on every rank.
struct Placed {
  std::vector<int64_t> offsets;  // per tensor
  int64_t total = 0;
};
Placed place(const std::vector<int64_t>& sizes, bool reversed) {
  Placed out;
  out.offsets.resize(sizes.size());
  for (size_t k = 0; k < sizes.size(); ++k) {
    const size_t t = reversed ? sizes.size() - 1 - k : k;
    out.offsets[t] = out.total;
    out.total += sizes[t] + 3;
  }
  return out;
}

TEST_F(NcclTest, GradientAllReducerSumsTensorByTensorWhateverTheAddressOrder) {
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  cuda::DeviceContext ctx(rank % devices);
  set_input_stream(*nccl, ctx.stream);
  // With a bucket of 100 elements: 1000 and 4097 in place, the others in three bucket flushes.
  const std::vector<int64_t> sizes = {7, 1000, 33, 61, 4097, 90};
  const Placed placed = place(sizes, rank % 2 == 1);
  const float poison = -12345.0f;
  std::vector<float> host(static_cast<size_t>(placed.total), poison);
  auto element = [](int r, size_t t, int64_t i) {
    return static_cast<float>(value(r, static_cast<int64_t>(t) * 10007 + i));
  };
  for (size_t t = 0; t < sizes.size(); ++t)
    for (int64_t i = 0; i < sizes[t]; ++i) host[placed.offsets[t] + i] = element(rank, t, i);
  cuda::DeviceArray<float> block(ctx, placed.total);
  ASSERT_EQ(cudaMemcpy(block.data(), host.data(), host.size() * sizeof(float),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  std::vector<gpu::DeviceSpan> arrays;
  for (size_t t = 0; t < sizes.size(); ++t)
    arrays.push_back({block.data() + placed.offsets[t], sizes[t]});
  gpu::GradientAllReducer reducer(ctx, *nccl, arrays, /*bucket_elements=*/100);
  EXPECT_EQ(reducer.spans(), static_cast<int64_t>(sizes.size()));
  EXPECT_EQ(reducer.collectives_per_call(), 5);
  reducer.all_reduce();
  ctx.synchronize();
  std::vector<float> result(host.size());
  ASSERT_EQ(cudaMemcpy(result.data(), block.data(), result.size() * sizeof(float),
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  for (size_t t = 0; t < sizes.size(); ++t) {
    int64_t wrong = 0;
    for (int64_t i = 0; i < sizes[t]; ++i) {
      float expected = 0;  // exact for 2 ranks (a + b in any order); NCCL's order for more
      for (int r = 0; r < size; ++r) expected += element(r, t, i);
      const float got = result[placed.offsets[t] + i];
      if (std::fabs(got - expected) > 1e-5f * (1.0f + std::fabs(expected))) ++wrong;
    }
    EXPECT_EQ(wrong, 0) << "tensor " << t << " (" << sizes[t] << " elements) on rank " << rank
                        << ": another tensor's gradient was summed into it";
    for (int64_t g = 0; g < 3; ++g)
      EXPECT_EQ(result[placed.offsets[t] + sizes[t] + g], poison) << "gap after tensor " << t;
  }
  set_input_stream(*nccl, nullptr);
}

TEST_F(NcclTest, GradientAllReducerRefusesRanksListingOtherTensors) {
  if (size < 2) GTEST_SKIP() << "needs 2 ranks";
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess);
  cuda::DeviceContext ctx(rank % devices);
  set_input_stream(*nccl, ctx.stream);
  cuda::DeviceArray<float> a(ctx, 10), b(ctx, 20);
  std::vector<gpu::DeviceSpan> arrays = {{a.data(), 10}, {b.data(), 20}};
  if (rank == 1) std::swap(arrays[0], arrays[1]);
  const std::string message =
      error_message([&] { gpu::GradientAllReducer reducer(ctx, *nccl, arrays, 100); });
  EXPECT_NE(message.find("same tensors in the same order"), std::string::npos) << message;
  set_input_stream(*nccl, nullptr);
}

}  // namespace
}  // namespace frugal
