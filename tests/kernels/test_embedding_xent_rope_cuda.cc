// CUDA embedding, fused cross-entropy and RoPE against the CPU references, on fresh random inputs
// with poisoned (0xFF) outputs, fp32 and bf16, odd sizes and pointers off a 16-byte boundary:
//   embedding_fwd         bit-identical rows (fp32 copy, or the bf16 rounding of the table)
//   embedding_bwd_weight  bit-identical to the CPU: both add each id's rows in token order in fp32
//                         (long runs of one id, many ids, ids outside [0, vocab) skipped)
//   xent_fwd / xent_bwd   losses, loss sum (fixed order) and dlogits <= 1e-5 against the CPU in
//                         double (bf16 logits: bf16 dlogits <= 1e-2); valid count exact; ignored
//                         targets; -inf logits; vocab up to 131072 (V3: 129280); in-place backward
//   rope_fwd / rope_bwd   <= 1e-5 (fp32; products rounded as on the CPU, so usually the same bits)
//                         and <= 1e-2 (bf16); MLA layouts (rotated tail of a 192-wide head) and odd
//                         strides/offsets; YaRN table with an attention factor != 1
// and two runs giving the same bits. Each check prints a CHECK line.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "cuda_test_util.h"
#include "kernels/embedding/embedding.h"
#include "kernels/embedding/embedding_cuda.h"
#include "kernels/rope/rope.h"
#include "kernels/rope/rope_cuda.h"
#include "kernels/xent/xent.h"
#include "kernels/xent/xent_cuda.h"
#include "yarn_test_config.h"

namespace frugal {
namespace {

using namespace testing;

class KernelsCuda : public CudaTest {};

template <class H>
constexpr bool kIsBf16 = std::is_same_v<H, uint16_t>;

template <class H>
auto device_ptr(H* p) {
  if constexpr (kIsBf16<H>)
    return as_bf16(p);
  else
    return p;
}
template <class H>
std::vector<H> encode(const std::vector<float>& x) {
  if constexpr (kIsBf16<H>)
    return to_bf16_bits(x);
  else
    return x;
}
template <class H>
std::vector<float> decode(const std::vector<H>& x) {
  if constexpr (kIsBf16<H>)
    return from_bf16_bits(x);
  else
    return x;
}
template <class H>
std::vector<float> input(int64_t count, uint64_t seed, float stddev = 1.0f) {
  std::vector<float> x = random_normal(count, seed, 0.0f, stddev);
  return kIsBf16<H> ? round_bf16(x) : x;
}
template <class H>
const char* type_name() {
  return kIsBf16<H> ? "bf16" : "fp32";
}

// ---- embedding ---------------------------------------------------------------------------------

enum class IdPattern { kUniform, kOneId, kFewIds, kWithInvalid };

std::vector<int32_t> make_ids(IdPattern pattern, int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) {
    switch (pattern) {
      case IdPattern::kUniform: ids[i] = static_cast<int32_t>(gen() % vocab); break;
      case IdPattern::kOneId: ids[i] = static_cast<int32_t>(vocab / 2); break;
      case IdPattern::kFewIds: ids[i] = static_cast<int32_t>((gen() % 3) * (vocab / 3)); break;
      case IdPattern::kWithInvalid: {
        const uint64_t r = gen() % 10;
        ids[i] = r == 0 ? -1 : r == 1 ? static_cast<int32_t>(vocab) : static_cast<int32_t>(gen() % vocab);
        break;
      }
    }
  }
  return ids;
}

template <class H>
void check_embedding(cudaStream_t stream, int64_t vocab, int64_t n, int64_t d, IdPattern pattern,
                     bool misaligned) {
  const std::string shape = std::string(type_name<H>()) + " V" + std::to_string(vocab) + " n" +
                            std::to_string(n) + " d" + std::to_string(d) + " ids" +
                            std::to_string(static_cast<int>(pattern)) + (misaligned ? " +1" : "");
  const uint64_t seed = case_seed("embedding " + shape);
  const std::vector<int32_t> ids = make_ids(pattern, n, vocab, seed);
  const std::vector<float> table = random_normal(vocab * d, seed + 1);
  DeviceArray<float> table_d(vocab * d, misaligned), dtable_d(vocab * d, misaligned);
  DeviceArray<int32_t> ids_d(n);
  DeviceArray<H> out_d(n * d, misaligned), dout_d(n * d, misaligned);
  table_d.upload(table);
  ids_d.upload(ids);

  if (pattern != IdPattern::kWithInvalid) {  // the forward has no vocab to check ids against
    std::vector<float> expected(n * d);
    cpu::embedding_fwd(expected.data(), table.data(), ids.data(), n, d);
    out_d.poison();
    cuda::embedding_fwd(device_ptr(out_d.get()), table_d.get(), ids_d.get(), n, d, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    expect_equal("embedding_fwd bits", shape, bit_patterns(out_d.download()),
                 bit_patterns(encode<H>(expected)));
  }

  // Weight gradient: the CPU adds the valid tokens' rows in token order, as the GPU does.
  const std::vector<float> dout = input<H>(n * d, seed + 2);
  const std::vector<float> dtable_start = random_normal(vocab * d, seed + 3, 0.0f, 0.1f);
  std::vector<int32_t> valid_ids;
  std::vector<float> valid_dout;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) continue;
    valid_ids.push_back(ids[i]);
    valid_dout.insert(valid_dout.end(), dout.begin() + i * d, dout.begin() + (i + 1) * d);
  }
  std::vector<float> expected = dtable_start;
  cpu::embedding_bwd_weight(expected.data(), valid_dout.data(), valid_ids.data(),
                            static_cast<int64_t>(valid_ids.size()), d);
  DeviceArray<uint8_t> workspace_d(static_cast<int64_t>(cuda::embedding_bwd_workspace_bytes(n, vocab)));
  dout_d.upload(encode<H>(dout));
  for (int run = 0; run < 2; ++run) {
    dtable_d.upload(dtable_start);
    workspace_d.poison();
    cuda::embedding_bwd_weight(dtable_d.get(), device_ptr(dout_d.get()), ids_d.get(), n, d, vocab,
                               workspace_d.get(), stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> dtable = dtable_d.download();
    if (run == 0) {
      expect_close("embedding_bwd_weight", shape, dtable, expected, kFp32Tolerance);
      expect_equal("embedding_bwd_weight bits", shape, bit_patterns(dtable), bit_patterns(expected));
    } else {
      expect_equal("embedding_bwd_weight rerun", shape, bit_patterns(dtable), bit_patterns(expected));
    }
  }
}

TEST_F(KernelsCuda, EmbeddingMatchesCpu) {
  struct Case {
    int64_t vocab, n, d;
    IdPattern pattern;
    bool misaligned;
  };
  const Case cases[] = {
      {1, 1, 1, IdPattern::kUniform, false},         {50, 3, 7, IdPattern::kUniform, false},
      {50, 257, 64, IdPattern::kUniform, false},     {1000, 257, 1030, IdPattern::kUniform, false},
      {32768, 4096, 1024, IdPattern::kUniform, false}, {128, 300, 1024, IdPattern::kUniform, true},
      {9, 3000, 130, IdPattern::kOneId, false},      {1000, 2049, 1024, IdPattern::kFewIds, false},
      {1000, 700, 96, IdPattern::kWithInvalid, false}, {129280, 513, 256, IdPattern::kUniform, false},
  };
  for (const Case& c : cases) {
    check_embedding<float>(stream_, c.vocab, c.n, c.d, c.pattern, c.misaligned);
    check_embedding<uint16_t>(stream_, c.vocab, c.n, c.d, c.pattern, c.misaligned);
  }
}

// ---- cross-entropy -----------------------------------------------------------------------------

template <class H>
void check_xent(cudaStream_t stream, int64_t n, int64_t vocab, bool misaligned) {
  const std::string shape = std::string(type_name<H>()) + " n" + std::to_string(n) + " V" +
                            std::to_string(vocab) + (misaligned ? " +1" : "");
  const uint64_t seed = case_seed("xent " + shape);
  std::mt19937_64 gen(seed);
  std::vector<float> logits = input<H>(n * vocab, seed + 1, 2.0f);
  std::vector<int32_t> targets(n);
  for (int64_t r = 0; r < n; ++r) {
    targets[r] = r % 5 == 4 ? -1 : static_cast<int32_t>(gen() % vocab);
    logits[r * vocab + gen() % vocab] = 15.0f;  // a late maximum makes the running sums rescale
    if (r % 3 == 1 && vocab > 2)                 // -inf logits away from the target
      for (int k = 0; k < 2; ++k) {
        const int64_t j = static_cast<int64_t>(gen() % vocab);
        if (j != targets[r]) logits[r * vocab + j] = -INFINITY;
      }
  }
  const std::vector<double> logits_ref = to_double(logits);
  std::vector<double> losses_ref(n);
  int64_t valid_ref = 0;
  const double sum_ref =
      cpu::xent_fwd(losses_ref.data(), logits_ref.data(), targets.data(), n, vocab, &valid_ref);

  DeviceArray<H> logits_d(n * vocab, misaligned), dlogits_d(n * vocab, misaligned);
  DeviceArray<float> losses_d(n), scale_d(1);
  DeviceArray<double> sum_d(1);
  DeviceArray<int64_t> count_d(1);
  DeviceArray<int32_t> targets_d(n);
  logits_d.upload(encode<H>(logits));
  targets_d.upload(targets);
  double first_sum = 0;
  for (int run = 0; run < 2; ++run) {
    losses_d.poison();
    sum_d.poison();
    count_d.poison();
    cuda::xent_fwd(losses_d.get(), sum_d.get(), count_d.get(), device_ptr(logits_d.get()),
                   targets_d.get(), n, vocab, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const double sum = sum_d.download()[0];
    if (run == 0) {
      first_sum = sum;
      expect_close("xent_fwd losses", shape, losses_d.download(), losses_ref, kFp32Tolerance);
      expect_close("xent_fwd loss_sum", shape, std::vector<double>{sum},
                   std::vector<double>{sum_ref}, kFp32Tolerance);
      expect_equal("xent_fwd valid_count", shape, count_d.download(),
                   std::vector<int64_t>{valid_ref});
    } else {
      expect_same_bits("xent_fwd loss_sum", shape, std::vector<double>{first_sum},
                       std::vector<double>{sum});
    }
  }

  const float scale = valid_ref > 0 ? 1.0f / static_cast<float>(valid_ref) : 1.0f;
  scale_d.upload(std::vector<float>{scale});
  std::vector<double> dlogits_ref(n * vocab);
  cpu::xent_bwd(dlogits_ref.data(), logits_ref.data(), targets.data(), n, vocab, double{scale});
  const double tol = kIsBf16<H> ? kBf16Tolerance : kFp32Tolerance;
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    dlogits_d.poison();
    cuda::xent_bwd(device_ptr(dlogits_d.get()), device_ptr(logits_d.get()), targets_d.get(), n,
                   vocab, scale_d.get(), stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> dlogits = decode(dlogits_d.download());
    if (run == 0) {
      first = dlogits;
      expect_close("xent_bwd", shape, dlogits, dlogits_ref, tol);
    } else {
      expect_same_bits("xent_bwd", shape, first, dlogits);
    }
  }
  // In place: dlogits overwrites the logits.
  cuda::xent_bwd(device_ptr(logits_d.get()), device_ptr(logits_d.get()), targets_d.get(), n, vocab,
                 scale_d.get(), stream);
  FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_same_bits("xent_bwd in place", shape, first, decode(logits_d.download()));
}

TEST_F(KernelsCuda, CrossEntropyMatchesCpu) {
  struct Case {
    int64_t n, vocab;
    bool misaligned;
  };
  const Case cases[] = {{1, 1, false},       {3, 5, false},      {257, 1000, false},
                        {33, 1001, true},    {64, 32768, false}, {17, 129280, false},
                        {5, 131072, false},  {9, 50001, true},   {300, 4096, false}};
  for (const Case& c : cases) {
    check_xent<float>(stream_, c.n, c.vocab, c.misaligned);
    check_xent<uint16_t>(stream_, c.n, c.vocab, c.misaligned);
  }
  // No rows: the sum and the count are written as 0.
  DeviceArray<double> sum_d(1);
  DeviceArray<int64_t> count_d(1);
  sum_d.poison();
  count_d.poison();
  cuda::xent_fwd<float>(nullptr, sum_d.get(), count_d.get(), nullptr, nullptr, 0, 100, stream_);
  sync();
  EXPECT_EQ(sum_d.download()[0], 0.0);
  EXPECT_EQ(count_d.download()[0], 0);
}

// ---- RoPE --------------------------------------------------------------------------------------

template <class H>
void check_rope(cudaStream_t stream, int64_t tokens, int64_t heads, int64_t head_stride,
                int64_t rope_offset, int64_t rope_dim) {
  const std::string shape = std::string(type_name<H>()) + " t" + std::to_string(tokens) + " h" +
                            std::to_string(heads) + " stride" + std::to_string(head_stride) +
                            " off" + std::to_string(rope_offset) + " dim" + std::to_string(rope_dim);
  const uint64_t seed = case_seed("rope " + shape);
  const int64_t positions_count = 5000;
  const RopeTable table = make_rope_table(testing::v3_yarn_config(rope_dim, 0.8), positions_count);
  const std::vector<float> cos(table.cos.begin(), table.cos.end()),
      sin(table.sin.begin(), table.sin.end());
  std::mt19937_64 gen(seed);
  std::vector<int32_t> positions(tokens);
  for (int32_t& p : positions) p = static_cast<int32_t>(gen() % positions_count);
  positions[0] = positions_count - 1;  // the table's last row

  DeviceArray<float> cos_d(static_cast<int64_t>(cos.size())), sin_d(static_cast<int64_t>(sin.size()));
  DeviceArray<int32_t> positions_d(tokens);
  DeviceArray<H> x_d(tokens * heads * head_stride);
  cos_d.upload(cos);
  sin_d.upload(sin);
  positions_d.upload(positions);
  const double tol = kIsBf16<H> ? kBf16Tolerance : kFp32Tolerance;
  for (bool backward : {false, true}) {
    const std::vector<float> x = input<H>(tokens * heads * head_stride, seed + (backward ? 2 : 1));
    std::vector<float> expected = x;
    if (backward)
      cpu::rope_bwd(expected.data(), table, positions.data(), tokens, heads, head_stride,
                    rope_offset);
    else
      cpu::rope_fwd(expected.data(), table, positions.data(), tokens, heads, head_stride,
                    rope_offset);
    x_d.upload(encode<H>(x));
    if (backward)
      cuda::rope_bwd(device_ptr(x_d.get()), cos_d.get(), sin_d.get(), rope_dim, positions_d.get(),
                     tokens, heads, head_stride, rope_offset, stream);
    else
      cuda::rope_fwd(device_ptr(x_d.get()), cos_d.get(), sin_d.get(), rope_dim, positions_d.get(),
                     tokens, heads, head_stride, rope_offset, stream);
    FRUGAL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> got = decode(x_d.download());
    expect_close(backward ? "rope_bwd" : "rope_fwd", shape, got, expected, tol);
    if (!kIsBf16<H>) {  // information only: products and sums are rounded as on the CPU
      int64_t differing = 0;
      for (size_t i = 0; i < got.size(); ++i) differing += got[i] != expected[i];
      std::printf("  %s %s: %lld of %zu values differ in their bits from the CPU's\n",
                  backward ? "rope_bwd" : "rope_fwd", shape.c_str(),
                  static_cast<long long>(differing), got.size());
    }
  }
}

TEST_F(KernelsCuda, RopeMatchesCpu) {
  struct Case {
    int64_t tokens, heads, head_stride, rope_offset, rope_dim;
  };
  const Case cases[] = {{1, 1, 64, 0, 64},    {3, 3, 192, 128, 64},  {257, 16, 192, 128, 64},
                        {257, 1, 64, 0, 64},  {5, 2, 67, 3, 2},      {33, 4, 70, 5, 64},
                        {1000, 128, 192, 128, 64}};
  for (const Case& c : cases) {
    check_rope<float>(stream_, c.tokens, c.heads, c.head_stride, c.rope_offset, c.rope_dim);
    check_rope<uint16_t>(stream_, c.tokens, c.heads, c.head_stride, c.rope_offset, c.rope_dim);
  }
}

TEST_F(KernelsCuda, LaunchersRejectBadArguments) {
  EXPECT_THROW(cuda::embedding_fwd<float>(nullptr, nullptr, nullptr, 4, 0, stream_), Error);
  EXPECT_THROW(cuda::embedding_bwd_workspace_bytes(4, 0), Error);
  EXPECT_THROW(cuda::xent_bwd<float>(nullptr, nullptr, nullptr, -1, 10, nullptr, stream_), Error);
  EXPECT_THROW(cuda::rope_fwd<float>(nullptr, nullptr, nullptr, 3, nullptr, 1, 1, 64, 0, stream_),
               Error);  // odd rope_dim
  EXPECT_THROW(cuda::rope_fwd<float>(nullptr, nullptr, nullptr, 64, nullptr, 1, 1, 64, 8, stream_),
               Error);  // rotated range past the head
  // Empty shapes launch nothing and succeed.
  cuda::embedding_fwd<float>(nullptr, nullptr, nullptr, 0, 16, stream_);
  cuda::rope_bwd<float>(nullptr, nullptr, nullptr, 64, nullptr, 0, 4, 64, 0, stream_);
  sync();
}

}  // namespace
}  // namespace frugal
