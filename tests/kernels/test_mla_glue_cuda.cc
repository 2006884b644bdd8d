// CUDA MLA glue and RoPE against the CPU references of kernels/attention/mla_glue.h, BIT FOR BIT,
// fp32 and bf16, on fresh random inputs with poisoned (0xFF) outputs:
//   mla_split_kv       k, v from kv_b and kv_a's un-rotated rope columns (read in place)
//   mla_merge_kv_grad  d_kv_b, and the rotated head sum written into d_kv_a's rope columns only
//                      (the other columns must keep their poison)
//   rope_fwd/rope_bwd  the vectorized and the per-pair paths against the fp32-table reference
// Shapes: the bench-1b layer (16 heads, nope 128, rope 64, v 128, kv_lora 256), nope 0, odd sizes
// (element paths), pointers one element off a 16-byte boundary, one row. Plus argument checks,
// rows = 0 and a second run giving the same bits.
// Each check prints a CHECK line.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "kernels/attention/mla_glue.h"
#include "kernels/attention/mla_glue_cuda.h"
#include "kernels/cast/cast_cuda.h"
#include "kernels/rope/rope.h"
#include "kernels/rope/rope_cuda.h"
#include "yarn_test_config.h"

namespace frugal {
namespace {

using namespace testing;

class MlaGlueCuda : public CudaTest {};

constexpr int64_t kTablePositions = 3000;

// The device's fp32 table and random positions (the table's last row included), on both sides.
struct RopeFixture {
  std::vector<float> cos, sin;
  std::vector<int32_t> positions;
  DeviceArray<float> cos_d, sin_d;
  DeviceArray<int32_t> positions_d;

  RopeFixture(int64_t rope_dim, int64_t rows, uint64_t seed)
      : cos_d(kTablePositions * rope_dim / 2),
        sin_d(kTablePositions * rope_dim / 2),
        positions_d(rows) {
    const RopeTable table = make_rope_table(testing::v3_yarn_config(rope_dim, 0.8), kTablePositions);
    cos.assign(table.cos.begin(), table.cos.end());  // double -> float, as the model uploads it
    sin.assign(table.sin.begin(), table.sin.end());
    std::mt19937_64 gen(seed);
    positions.resize(static_cast<size_t>(rows));
    for (int32_t& p : positions) p = static_cast<int32_t>(gen() % kTablePositions);
    if (rows > 0) positions[0] = kTablePositions - 1;
    cos_d.upload(cos);
    sin_d.upload(sin);
    positions_d.upload(positions);
  }
  MlaRope host() const {
    return MlaRope{cos.data(), sin.data(), kTablePositions, positions.data()};
  }
  MlaRope device() { return MlaRope{cos_d.get(), sin_d.get(), 0, positions_d.get()}; }
};

template <class T>
DType storage_of() {
  return std::is_same_v<T, float> ? DType::F32 : DType::BF16;
}

template <class T>
std::vector<float> random_input(int64_t count, uint64_t seed) {
  return representable<T>(random_normal(count, seed));
}

template <class T>
std::vector<float> download_float(DeviceArray<T>& a) {
  return to_float(a.download());
}

// Whether every element at the given flat indices still holds the 0xFF poison.
template <class T>
bool still_poisoned(const std::vector<T>& values, const std::vector<int64_t>& indices) {
  for (int64_t i : indices) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(&values[static_cast<size_t>(i)]);
    for (size_t b = 0; b < sizeof(T); ++b)
      if (bytes[b] != 0xFF) return false;
  }
  return true;
}

struct GlueCase {
  int64_t rows, heads, nope, rope, v, kv_lora;
  bool misaligned;
};

std::string case_text(const char* type, const GlueCase& c) {
  return std::string(type) + " r" + std::to_string(c.rows) + " h" + std::to_string(c.heads) + " n" +
         std::to_string(c.nope) + " p" + std::to_string(c.rope) + " v" + std::to_string(c.v) +
         " l" + std::to_string(c.kv_lora) + (c.misaligned ? " +1el" : "");
}

template <class T>
void check_split(cudaStream_t stream, const GlueCase& c) {
  const std::string shape = case_text(type_name<T>(), c);
  const uint64_t seed = case_seed("mla_split_kv " + shape);
  const MlaHeadDims dims{c.heads, c.nope, c.rope, c.v};
  const int64_t qk = c.nope + c.rope, kv_b_head = c.nope + c.v, kv_a_dim = c.kv_lora + c.rope;
  RopeFixture rope(c.rope, c.rows, seed);
  const std::vector<float> kv_b = random_input<T>(c.rows * c.heads * kv_b_head, seed + 1);
  const std::vector<float> kv_a = random_input<T>(c.rows * kv_a_dim, seed + 2);

  std::vector<float> k_ref(c.rows * c.heads * qk), v_ref(c.rows * c.heads * c.v);
  cpu::mla_split_kv(k_ref.data(), v_ref.data(), kv_b.data(), kv_a.data() + c.kv_lora, kv_a_dim,
                    rope.host(), c.rows, dims, storage_of<T>());

  DeviceArray<T> kv_b_d(kv_b.size(), c.misaligned), kv_a_d(kv_a.size(), c.misaligned);
  DeviceArray<T> k_d(k_ref.size(), c.misaligned), v_d(v_ref.size(), c.misaligned);
  kv_b_d.upload(host_values<T>(kv_b));
  kv_a_d.upload(host_values<T>(kv_a));
  k_d.poison();
  v_d.poison();
  cuda::mla_split_kv<T>(k_d.get(), v_d.get(), kv_b_d.get(), kv_a_d.get() + c.kv_lora, kv_a_dim,
                        rope.device(), c.rows, dims, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<T> k_first = k_d.download();
  expect_identical_bits("mla_split_kv k", shape, to_float(k_first), k_ref);
  expect_identical_bits("mla_split_kv v", shape, download_float(v_d), v_ref);

  // A second run gives the same bits.
  k_d.poison();
  cuda::mla_split_kv<T>(k_d.get(), v_d.get(), kv_b_d.get(), kv_a_d.get() + c.kv_lora, kv_a_dim,
                        rope.device(), c.rows, dims, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_same_bits("mla_split_kv k", shape, k_first, k_d.download());
}

template <class T>
void check_merge(cudaStream_t stream, const GlueCase& c) {
  const std::string shape = case_text(type_name<T>(), c);
  const uint64_t seed = case_seed("mla_merge_kv_grad " + shape);
  const MlaHeadDims dims{c.heads, c.nope, c.rope, c.v};
  const int64_t qk = c.nope + c.rope, kv_b_head = c.nope + c.v, kv_a_dim = c.kv_lora + c.rope;
  RopeFixture rope(c.rope, c.rows, seed);
  const std::vector<float> dk = random_input<T>(c.rows * c.heads * qk, seed + 1);
  const std::vector<float> dv = random_input<T>(c.rows * c.heads * c.v, seed + 2);

  std::vector<float> d_kv_b_ref(c.rows * c.heads * kv_b_head), d_kv_a_ref(c.rows * kv_a_dim, 0.0f);
  cpu::mla_merge_kv_grad(d_kv_b_ref.data(), d_kv_a_ref.data() + c.kv_lora, kv_a_dim, dk.data(),
                         dv.data(), rope.host(), c.rows, dims, storage_of<T>());

  DeviceArray<T> dk_d(dk.size(), c.misaligned), dv_d(dv.size(), c.misaligned);
  DeviceArray<T> d_kv_b_d(d_kv_b_ref.size(), c.misaligned),
      d_kv_a_d(d_kv_a_ref.size(), c.misaligned);
  dk_d.upload(host_values<T>(dk));
  dv_d.upload(host_values<T>(dv));
  d_kv_b_d.poison();
  d_kv_a_d.poison();
  cuda::mla_merge_kv_grad<T>(d_kv_b_d.get(), d_kv_a_d.get() + c.kv_lora, kv_a_dim, dk_d.get(),
                             dv_d.get(), rope.device(), c.rows, dims, stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  const std::vector<T> d_kv_a = d_kv_a_d.download();
  expect_identical_bits("mla_merge_kv_grad d_kv_b", shape, download_float(d_kv_b_d), d_kv_b_ref);
  std::vector<float> rope_got, rope_ref;  // d_kv_a's rope columns
  std::vector<int64_t> latent_columns;    // d_kv_a's other columns: must stay poisoned
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t j = 0; j < kv_a_dim; ++j) {
      const int64_t i = r * kv_a_dim + j;
      if (j < c.kv_lora) {
        latent_columns.push_back(i);
      } else {
        rope_got.push_back(to_float(std::vector<T>{d_kv_a[i]})[0]);
        rope_ref.push_back(d_kv_a_ref[i]);
      }
    }
  expect_identical_bits("mla_merge_kv_grad d_k_pe", shape, rope_got, rope_ref);
  const bool untouched = still_poisoned(d_kv_a, latent_columns);
  std::printf("CHECK | %-28s | %-22s | %s | %s\n", "mla_merge_kv_grad latent cols", shape.c_str(),
              untouched ? "untouched" : "written", untouched ? "ok" : "FAIL");
  EXPECT_TRUE(untouched) << shape << ": d_kv_a's first kv_lora columns were written";
}

const GlueCase kGlueCases[] = {
    {37, 16, 128, 64, 128, 256, false},  // bench-1b layer: 16-byte runs
    {37, 16, 128, 64, 128, 256, true},   // same sizes, pointers off 16 bytes: element path
    {1, 16, 128, 64, 128, 256, false},   // one row
    {29, 3, 0, 64, 32, 16, false},       // no nope part
    {23, 5, 7, 6, 9, 3, false},          // odd sizes: element path
    {19, 2, 8, 8, 16, 8, false},         // bf16: one run per part; fp32: two
    {300, 4, 16, 16, 8, 24, false},      // more rows than a block
};

TEST_F(MlaGlueCuda, SplitKvMatchesCpu) {
  for (const GlueCase& c : kGlueCases) {
    check_split<float>(stream_, c);
    check_split<__nv_bfloat16>(stream_, c);
  }
}

TEST_F(MlaGlueCuda, MergeKvGradMatchesCpu) {
  for (const GlueCase& c : kGlueCases) {
    check_merge<float>(stream_, c);
    check_merge<__nv_bfloat16>(stream_, c);
  }
}

template <class T>
void check_rope_bits(cudaStream_t stream, int64_t tokens, int64_t heads, int64_t head_stride,
                     int64_t rope_offset, int64_t rope_dim, bool misaligned) {
  const std::string shape = std::string(type_name<T>()) + " t" + std::to_string(tokens) + " h" +
                            std::to_string(heads) + " s" + std::to_string(head_stride) + " o" +
                            std::to_string(rope_offset) + " d" + std::to_string(rope_dim) +
                            (misaligned ? " +1el" : "");
  const uint64_t seed = case_seed("rope bits " + shape);
  RopeFixture rope(rope_dim, tokens, seed);
  DeviceArray<T> x_d(tokens * heads * head_stride, misaligned);
  for (bool backward : {false, true}) {
    const std::vector<float> x = random_input<T>(tokens * heads * head_stride, seed + backward);
    std::vector<float> expected = x;
    cpu::rope_rotate_fp32_table(expected.data(), rope.host(), tokens, heads, head_stride,
                                rope_offset, rope_dim, backward, storage_of<T>());
    x_d.upload(host_values<T>(x));
    if (backward)
      cuda::rope_bwd<T>(x_d.get(), rope.cos_d.get(), rope.sin_d.get(), rope_dim,
                        rope.positions_d.get(), tokens, heads, head_stride, rope_offset, stream);
    else
      cuda::rope_fwd<T>(x_d.get(), rope.cos_d.get(), rope.sin_d.get(), rope_dim,
                        rope.positions_d.get(), tokens, heads, head_stride, rope_offset, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    expect_identical_bits(backward ? "rope_bwd bits" : "rope_fwd bits", shape, download_float(x_d),
                          expected);
  }
}

TEST_F(MlaGlueCuda, RopeMatchesFp32TableReferenceBitwise) {
  struct Case {
    int64_t tokens, heads, head_stride, rope_offset, rope_dim;
    bool misaligned;
  };
  const Case cases[] = {
      {41, 16, 192, 128, 64, false},  // MLA queries: 16-byte runs
      {41, 16, 192, 128, 64, true},   // off 16 bytes: per-pair path
      {41, 1, 64, 0, 64, false},      // k_pe alone
      {13, 3, 13, 3, 6, false},       // odd stride and offset
      {7, 2, 20, 4, 12, false},       // fp32 runs of 4 fit, bf16 runs of 8 do not
      {300, 2, 24, 8, 16, false},
  };
  for (const Case& c : cases) {
    check_rope_bits<float>(stream_, c.tokens, c.heads, c.head_stride, c.rope_offset, c.rope_dim,
                           c.misaligned);
    check_rope_bits<__nv_bfloat16>(stream_, c.tokens, c.heads, c.head_stride, c.rope_offset,
                                   c.rope_dim, c.misaligned);
  }
}

TEST_F(MlaGlueCuda, RejectsBadArgumentsAndSkipsEmpty) {
  RopeFixture rope(8, 4, 1);
  DeviceArray<float> buffer(4 * 2 * 64);
  float* p = buffer.get();
  const MlaRope r = rope.device();
  EXPECT_THROW(cuda::mla_split_kv<float>(p, p, p, p, 8, r, 4, MlaHeadDims{2, 4, 7, 4}, stream_),
               Error);  // odd rope
  EXPECT_THROW(cuda::mla_split_kv<float>(p, p, p, p, 4, r, 4, MlaHeadDims{2, 4, 8, 4}, stream_),
               Error);  // k_pe row stride < rope
  EXPECT_THROW(
      cuda::mla_split_kv<float>(nullptr, p, p, p, 8, r, 4, MlaHeadDims{2, 4, 8, 4}, stream_),
      Error);
  EXPECT_THROW(
      cuda::mla_merge_kv_grad<float>(p, p, 8, p, p, MlaRope{}, 4, MlaHeadDims{2, 4, 8, 4}, stream_),
      Error);  // no table
  EXPECT_THROW(
      cuda::mla_merge_kv_grad<float>(p, p, 8, p, p, r, 4, MlaHeadDims{0, 4, 8, 4}, stream_),
      Error);  // no heads
  // rows = 0: nothing to do, null tensors accepted.
  cuda::mla_split_kv<float>(nullptr, nullptr, nullptr, nullptr, 8, r, 0, MlaHeadDims{2, 4, 8, 4},
                            stream_);
  cuda::mla_merge_kv_grad<float>(nullptr, nullptr, 8, nullptr, nullptr, r, 0,
                                 MlaHeadDims{2, 4, 8, 4}, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
