// CUDA absorbed-MLA decode attention (kernels/attention/mla_decode_cuda.h) against the CPU
// reference (kernels/attention/mla_decode.h) on fresh random bf16 inputs: the bench-1b
// (16 heads, kv_lora 256), V2-Lite (16, 512) and V3 (128, 512) shapes, rope 64; rows 1, 3, 64;
// lengths 1, 17, 300, 4096 and mixed per row (rows sharing a sequence included); page sizes 16
// and 64 with shuffled page tables; a pool of 3 layers read at layer 1 or 2 (the other layers and
// unused pages hold other values); output and workspace poisoned with NaN before each run. Also:
// run-to-run identical bits, and the argument checks (heads, dims, alignment, workspace size).
// One line "CHECK | op | shape | ..." per case.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <future>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "kernels/attention/mla_decode.h"
#include "kernels/attention/mla_decode_cuda.h"
#include "test_util.h"

namespace frugal {
namespace {

using testing::CudaTest;
using testing::DeviceArray;

struct ModelDims {
  const char* name;
  int64_t heads, kv_lora, rope;
};
constexpr ModelDims kBench1b{"bench-1b", 16, 256, 64};
constexpr ModelDims kV2Lite{"V2-Lite", 16, 512, 64};
constexpr ModelDims kV3{"V3", 128, 512, 64};

struct Inputs {
  MlaDecodeShape shape;
  std::vector<int32_t> row_sequence, lengths, page_table;
  std::vector<uint16_t> q_bits, pool_bits;  // bf16
  std::vector<float> q, pool;               // the same values as float
  int64_t max_length = 0;
  std::string label;
};

// rows with the given lengths; row_sequence[r] names each row's sequence (sequences may repeat:
// their rows then share the entries). Every sequence gets the pages of its longest row,
// scattered over a shuffled pool with spare pages.
Inputs make_inputs(const ModelDims& dims, std::vector<int32_t> lengths,
                   std::vector<int32_t> row_sequence, int64_t page_size, int64_t layer,
                   const std::string& label) {
  Inputs in;
  in.label = label;
  in.lengths = std::move(lengths);
  in.row_sequence = std::move(row_sequence);
  in.max_length = *std::max_element(in.lengths.begin(), in.lengths.end());
  const int64_t sequences =
      *std::max_element(in.row_sequence.begin(), in.row_sequence.end()) + int64_t{1};
  MlaDecodeShape& s = in.shape;
  s.rows = static_cast<int64_t>(in.lengths.size());
  s.heads = dims.heads;
  s.kv_lora = dims.kv_lora;
  s.rope = dims.rope;
  s.layers = 3;
  s.layer = layer;
  s.page_size = page_size;
  // Room for max_length plus a page in every page table row.
  s.max_pages = (in.max_length + page_size - 1) / page_size + 1;
  s.softmax_scale = 0.1352338f;  // V3's (spec 1.4)
  const uint64_t seed = testing::case_seed("mla_decode " + label);
  std::mt19937_64 gen(seed);
  // Each sequence owns the pages its longest row needs; the rest of its page table row is -1.
  std::vector<int64_t> pages_needed(static_cast<size_t>(sequences), 0);
  for (int64_t r = 0; r < s.rows; ++r) {
    int64_t& needed = pages_needed[in.row_sequence[r]];
    needed = std::max(needed, (in.lengths[r] + page_size - 1) / page_size);
  }
  const int64_t used_pages = std::accumulate(pages_needed.begin(), pages_needed.end(), int64_t{0});
  const int64_t num_pages = used_pages + 5;
  std::vector<int32_t> order(static_cast<size_t>(num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), gen);
  in.page_table.assign(static_cast<size_t>(sequences * s.max_pages), -1);
  int64_t next = 0;
  for (int64_t seq = 0; seq < sequences; ++seq)
    for (int64_t i = 0; i < pages_needed[seq]; ++i)
      in.page_table[seq * s.max_pages + i] = order[next++];
  const int64_t pool_count = num_pages * s.layers * s.page_size * s.entry_dim();
  in.pool = testing::round_bf16(testing::random_normal(pool_count, seed ^ 1));
  in.q = testing::round_bf16(testing::random_normal(s.rows * s.heads * s.entry_dim(), seed ^ 2));
  in.pool_bits = testing::to_bf16_bits(in.pool);
  in.q_bits = testing::to_bf16_bits(in.q);
  return in;
}

// The CPU reference, rows in parallel (each row is independent).
std::vector<float> reference(const Inputs& in) {
  const MlaDecodeShape& s = in.shape;
  std::vector<float> out(static_cast<size_t>(s.rows * s.heads * s.kv_lora));
  std::vector<std::future<void>> jobs;
  for (int64_t r = 0; r < s.rows; ++r)
    jobs.push_back(std::async(std::launch::async, [&, r] {
      MlaDecodeShape one = s;
      one.rows = 1;
      cpu::mla_decode_attention(out.data() + r * s.heads * s.kv_lora,
                                in.q.data() + r * s.heads * s.entry_dim(), in.pool.data(),
                                in.page_table.data(), in.row_sequence.data() + r,
                                in.lengths.data() + r, one);
    }));
  for (auto& job : jobs) job.get();
  return out;
}

class MlaDecodeCuda : public CudaTest {
 public:
  // The GPU output as float, from poisoned output and workspace.
  std::vector<float> run_gpu(const Inputs& in) {
    const MlaDecodeShape& s = in.shape;
    DeviceArray<uint16_t> q(static_cast<int64_t>(in.q_bits.size()));
    DeviceArray<uint16_t> pool(static_cast<int64_t>(in.pool_bits.size()));
    DeviceArray<int32_t> page_table(static_cast<int64_t>(in.page_table.size()));
    DeviceArray<int32_t> row_sequence(s.rows), lengths(s.rows);
    DeviceArray<uint16_t> out(s.rows * s.heads * s.kv_lora);
    q.upload(in.q_bits);
    pool.upload(in.pool_bits);
    page_table.upload(in.page_table);
    row_sequence.upload(in.row_sequence);
    lengths.upload(in.lengths);
    out.poison();
    const size_t workspace_bytes = cuda::mla_decode_workspace_bytes(s, in.max_length);
    DeviceArray<uint8_t> workspace(static_cast<int64_t>(workspace_bytes) + 16);
    workspace.poison();
    cuda::mla_decode_attention(testing::as_bf16(out.get()), testing::as_bf16(q.get()),
                               testing::as_bf16(pool.get()), page_table.get(), row_sequence.get(),
                               lengths.get(), s, in.max_length,
                               workspace_bytes > 0 ? workspace.get() : nullptr, workspace_bytes,
                               stream_);
    sync();
    return testing::from_bf16_bits(out.download());
  }

  void check(const Inputs& in) {
    const std::vector<float> gpu = run_gpu(in);
    const std::vector<float> cpu = reference(in);
    const size_t workspace = cuda::mla_decode_workspace_bytes(in.shape, in.max_length);
    testing::expect_close("mla_decode", in.label + (workspace > 0 ? " split" : " nosplit"), gpu,
                          cpu, testing::kBf16Tolerance);
  }
};

std::vector<int32_t> mixed_lengths(int64_t rows, int32_t longest, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> length(1, longest);
  std::vector<int32_t> lengths(static_cast<size_t>(rows));
  for (auto& l : lengths) l = length(gen);
  lengths[0] = 1;
  if (rows > 2) lengths[1] = longest;
  return lengths;
}

std::vector<int32_t> own_sequences(int64_t rows) {
  std::vector<int32_t> sequences(static_cast<size_t>(rows));
  std::iota(sequences.rbegin(), sequences.rend(), 0);  // row r reads sequence rows-1-r
  return sequences;
}

void run_shape_cases(MlaDecodeCuda& test, const ModelDims& dims, int32_t mixed_longest) {
  const std::string name = dims.name;
  for (int64_t page_size : {16, 64}) {
    const std::string page = " p" + std::to_string(page_size);
    test.check(make_inputs(dims, {1}, {0}, page_size, 1, name + " r1 L1" + page));
    test.check(make_inputs(dims, {17}, {0}, page_size, 2, name + " r1 L17" + page));
    test.check(make_inputs(dims, {4096}, {0}, page_size, 1, name + " r1 L4096" + page));
    // Rows 1 and 2 share sequence 1 (verify / prefill rows at different lengths).
    test.check(make_inputs(dims, {1, 17, 300}, {0, 1, 1}, page_size, 2,
                           name + " r3 L1,17,300" + page));
    test.check(make_inputs(dims, {4096, 17, 1}, {2, 0, 1}, page_size, 1,
                           name + " r3 L4096,17,1" + page));
    test.check(make_inputs(dims, mixed_lengths(64, mixed_longest, page_size), own_sequences(64),
                           page_size, 2,
                           name + " r64 L1.." + std::to_string(mixed_longest) + page));
  }
}

TEST_F(MlaDecodeCuda, Bench1bShapeMatchesCpu) { run_shape_cases(*this, kBench1b, 2000); }
TEST_F(MlaDecodeCuda, V2LiteShapeMatchesCpu) { run_shape_cases(*this, kV2Lite, 1200); }
TEST_F(MlaDecodeCuda, V3ShapeMatchesCpu) { run_shape_cases(*this, kV3, 300); }

TEST_F(MlaDecodeCuda, SixtyFourRowsOf300AndSmallHeadCount) {
  // All rows 300 long (many splits of equal size), and 32 heads (two head groups).
  check(make_inputs(kV2Lite, std::vector<int32_t>(64, 300), own_sequences(64), 16, 1,
                    "V2-Lite r64 L300 p16"));
  const ModelDims heads32{"h32", 32, 512, 64};
  check(make_inputs(heads32, {300, 1, 4096}, {0, 1, 2}, 64, 2, "h32 r3 L300,1,4096 p64"));
  const ModelDims lora128{"lora128", 16, 128, 64};
  check(make_inputs(lora128, {17, 300, 1}, {0, 0, 1}, 16, 1, "lora128 r3 L17,300,1 p16"));
}

TEST_F(MlaDecodeCuda, OtherShapesRunThePlainKernel) {
  // Not tensor-core shapes: small test models and unusual dims.
  const ModelDims tiny{"tiny h4 lora32 rope16", 4, 32, 16};
  check(make_inputs(tiny, {1, 17, 300}, {0, 1, 1}, 4, 2, "tiny r3 L1,17,300 p4"));
  const ModelDims odd{"h24 lora384 rope64", 24, 384, 64};
  check(make_inputs(odd, mixed_lengths(8, 700, 5), own_sequences(8), 16, 2, "h24 r8 L1..700 p16"));
}

TEST_F(MlaDecodeCuda, RepeatedRunsGiveSameBits) {
  for (const auto& in : {make_inputs(kV2Lite, {4096, 17, 300}, {0, 1, 2}, 64, 1, "V2-Lite rerun"),
                         make_inputs(kV3, mixed_lengths(64, 300, 3), own_sequences(64), 16, 2,
                                     "V3 rerun")}) {
    const std::vector<float> first = run_gpu(in), second = run_gpu(in);
    testing::expect_same_bits("mla_decode", in.label, first, second);
  }
}

TEST_F(MlaDecodeCuda, RejectsUnsupportedArguments) {
  const Inputs in = make_inputs(kBench1b, {5, 9}, {0, 1}, 16, 1, "errors");
  DeviceArray<uint16_t> q(static_cast<int64_t>(in.q_bits.size()) + 8, true);
  DeviceArray<uint16_t> pool(static_cast<int64_t>(in.pool_bits.size()));
  DeviceArray<int32_t> table(static_cast<int64_t>(in.page_table.size())), rows(2), lengths(2);
  DeviceArray<uint16_t> out(in.shape.rows * in.shape.heads * in.shape.kv_lora);
  DeviceArray<uint8_t> workspace(1 << 20);
  auto attempt = [&](const MlaDecodeShape& shape, const uint16_t* q_pointer, size_t bytes) {
    return testing::error_message([&] {
      cuda::mla_decode_attention(testing::as_bf16(out.get()), testing::as_bf16(q_pointer),
                                 testing::as_bf16(pool.get()), table.get(), rows.get(),
                                 lengths.get(), shape, in.max_length, workspace.get(), bytes,
                                 stream_);
    });
  };
  int failures = 0;
  auto expect_message = [&](const std::string& message, const char* part, const char* what) {
    const bool ok = message.find(part) != std::string::npos;
    if (!ok) ++failures;
    EXPECT_TRUE(ok) << what << ": got \"" << message << "\"";
  };
  MlaDecodeShape s = in.shape;
  s.heads = 24;
  s.kv_lora = 1024;  // entry_dim 1088: beyond the plain kernel, and not a tensor-core shape
  expect_message(attempt(s, q.get(), 1 << 20), "entry dims above 1024", "24 heads, kv_lora 1024");
  s = in.shape;
  s.layer = 3;
  expect_message(attempt(s, q.get(), 1 << 20), "layer outside", "layer 3 of 3");
  // q one element past a 16-byte boundary.
  expect_message(attempt(in.shape, q.get(), 1 << 20), "16-byte aligned", "misaligned q");
  // A long row over few rows splits: then a workspace of 0 bytes is too small.
  MlaDecodeShape long_shape = in.shape;
  long_shape.max_pages = 4096 / 16 + 1;
  const int64_t long_length = 4096;
  ASSERT_GT(cuda::mla_decode_workspace_bytes(long_shape, long_length), 0u);
  const std::string message = testing::error_message([&] {
    cuda::mla_decode_attention(testing::as_bf16(out.get()), testing::as_bf16(q.get() - 1),
                               testing::as_bf16(pool.get()), table.get(), rows.get(),
                               lengths.get(), long_shape, long_length, workspace.get(), 0,
                               stream_);
  });
  expect_message(message, "workspace", "workspace too small");
  std::printf("CHECK | %-28s | %-22s | %d wrong messages | %s\n", "mla_decode arguments", "5 cases",
              failures, failures == 0 ? "ok" : "FAIL");
}

}  // namespace
}  // namespace frugal
