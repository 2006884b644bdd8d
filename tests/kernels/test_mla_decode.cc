// CPU absorbed-MLA decode attention (kernels/attention/mla_decode.h) against a naive direct
// formula over logically contiguous per-sequence entries, the pool built from them through
// shuffled page tables: several rows per sequence with different lengths, length 1, page sizes
// that do not divide the lengths, a layer other than 0 of a multi-layer pool; and the checks on
// bad shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "core/error.h"
#include "kernels/attention/mla_decode.h"
#include "test_util.h"

namespace frugal {
namespace {

struct Case {
  MlaDecodeShape shape;
  int64_t sequences = 0;
  std::vector<int32_t> row_sequence, lengths;
  std::vector<std::vector<float>> logical;  // per sequence [max_pages * page_size, entry_dim]
  std::vector<float> pool, q;              // pool [num_pages, layers, page_size, entry_dim]
  std::vector<int32_t> page_table;          // [sequences, max_pages]
};

// Random entries per sequence, placed on shuffled pages of a pool with `layers` layers (other
// layers and unused pages hold different random values, so reading a wrong place shows).
Case make_case(MlaDecodeShape shape, int64_t sequences, std::vector<int32_t> row_sequence,
               std::vector<int32_t> lengths, uint64_t seed) {
  Case c;
  shape.rows = static_cast<int64_t>(row_sequence.size());
  c.shape = shape;
  c.sequences = sequences;
  c.row_sequence = std::move(row_sequence);
  c.lengths = std::move(lengths);
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t entry = shape.entry_dim(), capacity = shape.max_pages * shape.page_size;
  const int64_t num_pages = sequences * shape.max_pages + 3;  // a few pages nobody uses
  c.pool.resize(static_cast<size_t>(num_pages * shape.layers * shape.page_size * entry));
  for (float& v : c.pool) v = 5.0f * normal(gen);  // garbage: must never be read
  std::vector<int32_t> order(static_cast<size_t>(num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), gen);
  c.page_table.assign(order.begin(), order.begin() + sequences * shape.max_pages);
  c.logical.resize(static_cast<size_t>(sequences));
  for (int64_t s = 0; s < sequences; ++s) {
    auto& entries = c.logical[s];
    entries.resize(static_cast<size_t>(capacity * entry));
    for (float& v : entries) v = normal(gen);
    for (int64_t j = 0; j < capacity; ++j) {
      const int64_t page = c.page_table[s * shape.max_pages + j / shape.page_size];
      float* slot = c.pool.data() + ((page * shape.layers + shape.layer) * shape.page_size +
                                     j % shape.page_size) * entry;
      std::copy(entries.begin() + j * entry, entries.begin() + (j + 1) * entry, slot);
    }
  }
  c.q.resize(static_cast<size_t>(shape.rows * shape.heads * entry));
  for (float& v : c.q) v = normal(gen);
  return c;
}

// exp(s_j) / sum exp(s) straight from the definition (no max subtraction; scores stay small).
std::vector<double> naive(const Case& c) {
  const MlaDecodeShape& s = c.shape;
  const int64_t entry = s.entry_dim();
  std::vector<double> out(static_cast<size_t>(s.rows * s.heads * s.kv_lora), 0.0);
  for (int64_t r = 0; r < s.rows; ++r) {
    const auto& entries = c.logical[c.row_sequence[r]];
    for (int64_t h = 0; h < s.heads; ++h) {
      const float* qh = c.q.data() + (r * s.heads + h) * entry;
      std::vector<double> weights(static_cast<size_t>(c.lengths[r]));
      double total = 0;
      for (int64_t j = 0; j < c.lengths[r]; ++j) {
        double dot = 0;
        for (int64_t i = 0; i < entry; ++i) dot += double(qh[i]) * entries[j * entry + i];
        weights[j] = std::exp(dot * s.softmax_scale);
        total += weights[j];
      }
      for (int64_t j = 0; j < c.lengths[r]; ++j)
        for (int64_t i = 0; i < s.kv_lora; ++i)
          out[(r * s.heads + h) * s.kv_lora + i] += weights[j] / total * entries[j * entry + i];
    }
  }
  return out;
}

std::vector<float> run(const Case& c) {
  std::vector<float> out(static_cast<size_t>(c.shape.rows * c.shape.heads * c.shape.kv_lora), NAN);
  cpu::mla_decode_attention(out.data(), c.q.data(), c.pool.data(), c.page_table.data(),
                            c.row_sequence.data(), c.lengths.data(), c.shape);
  return out;
}

void expect_matches_naive(const Case& c) {
  const std::vector<float> got = run(c);
  const std::vector<double> want = naive(c);
  ASSERT_EQ(got.size(), want.size());
  double max_error = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << "element " << i;
    max_error = std::max(max_error, std::fabs(got[i] - want[i]));
  }
  EXPECT_LT(max_error, 2e-6) << "rows " << c.shape.rows << " heads " << c.shape.heads;
}

MlaDecodeShape base_shape() {
  MlaDecodeShape s;
  s.heads = 3;
  s.kv_lora = 12;
  s.rope = 4;
  s.layers = 3;
  s.layer = 2;
  s.page_size = 5;
  s.max_pages = 6;
  s.softmax_scale = 0.25f;
  return s;
}

TEST(MlaDecode, MatchesNaiveFormulaOnShuffledPages) {
  // Rows of sequence 1 at several lengths (prefill / verify), length 1, lengths not multiples
  // of the page size, one row at full capacity.
  const Case c = make_case(base_shape(), 3, {0, 1, 1, 1, 2, 2}, {7, 1, 13, 30, 5, 11}, 11);
  expect_matches_naive(c);
}

TEST(MlaDecode, LayerZeroAndPageSizeOne) {
  MlaDecodeShape s = base_shape();
  s.layer = 0;
  s.page_size = 1;
  s.max_pages = 9;
  expect_matches_naive(make_case(s, 2, {1, 0}, {9, 4}, 12));
}

TEST(MlaDecode, NoRopePartAndOneHead) {
  MlaDecodeShape s = base_shape();
  s.rope = 0;
  s.heads = 1;
  expect_matches_naive(make_case(s, 2, {0, 1}, {3, 17}, 13));
}

TEST(MlaDecode, LengthOneReturnsTheEntry) {
  const Case c = make_case(base_shape(), 2, {1, 0}, {1, 1}, 14);
  const std::vector<float> out = run(c);
  const MlaDecodeShape& s = c.shape;
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.kv_lora; ++i)
        EXPECT_FLOAT_EQ(out[(r * s.heads + h) * s.kv_lora + i],
                        c.logical[c.row_sequence[r]][i])
            << "row " << r << " head " << h << " element " << i;
}

TEST(MlaDecode, LargeScoresStayFinite) {
  // Scores in the thousands: the naive formula overflows, the reference subtracts the max.
  MlaDecodeShape s = base_shape();
  s.softmax_scale = 2000.0f;
  const Case c = make_case(s, 1, {0}, {23}, 15);
  const std::vector<float> out = run(c);
  for (float v : out) EXPECT_TRUE(std::isfinite(v));
  // With such scores the softmax is one-hot on each head's best position.
  const int64_t entry = s.entry_dim();
  for (int64_t h = 0; h < s.heads; ++h) {
    double best = -INFINITY;
    int64_t best_j = 0;
    for (int64_t j = 0; j < 23; ++j) {
      double dot = 0;
      for (int64_t i = 0; i < entry; ++i)
        dot += double(c.q[h * entry + i]) * c.logical[0][j * entry + i];
      if (dot > best) best = dot, best_j = j;
    }
    for (int64_t i = 0; i < s.kv_lora; ++i)
      EXPECT_NEAR(out[h * s.kv_lora + i], c.logical[0][best_j * entry + i], 1e-3);
  }
}

TEST(MlaDecode, RejectsBadShapes) {
  Case c = make_case(base_shape(), 2, {0, 1}, {4, 6}, 16);
  auto expect_error = [&](const MlaDecodeShape& shape, std::vector<int32_t> lengths,
                          const char* what) {
    std::vector<float> out(static_cast<size_t>(shape.rows * std::max<int64_t>(shape.heads, 1) *
                                               std::max<int64_t>(shape.kv_lora, 1)));
    const std::string message = testing::error_message([&] {
      cpu::mla_decode_attention(out.data(), c.q.data(), c.pool.data(), c.page_table.data(),
                                c.row_sequence.data(), lengths.data(), shape);
    });
    EXPECT_NE(message.find("mla_decode_attention"), std::string::npos) << what << ": " << message;
  };
  MlaDecodeShape s = c.shape;
  expect_error(s, {0, 6}, "length 0");
  expect_error(s, {4, 31}, "length past the page table");
  s.layer = 3;
  expect_error(s, {4, 6}, "layer past the pool");
  s = c.shape;
  s.heads = 0;
  expect_error(s, {4, 6}, "no heads");
  s = c.shape;
  s.page_size = 0;
  expect_error(s, {4, 6}, "page size 0");
}

}  // namespace
}  // namespace frugal
