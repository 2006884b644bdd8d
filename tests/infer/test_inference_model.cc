// The inference forward (absorbed MLA over the paged latent cache) against the training forward
// (Transformer<float>::forward, naive MLA) on the same weights:
//   - prefill logits of every position, and logits fed one token at a time, within 1e-5 relative;
//   - MTP depth-1 logits within 1e-5 of the training forward's MTP logits;
//   - row invariance: prefill, one-at-a-time, and batched with other sequences give the same
//     bits, whatever the page size (pages boundaries crossed);
//   - the paged cache: page tables, free list, truncate (rollback) and reuse of freed pages.
#include <gtest/gtest.h>

#include <cstring>

#include "infer/inference_model.h"
#include "infer/infer_test_util.h"
#include "test_util.h"

namespace frugal {
namespace {

using infer::InferenceModel;
using infer::PagedLatentCache;
using infer::Rows;

struct Reference {
  std::vector<float> logits;      // [seq, vocab]
  std::vector<float> mtp_logits;  // [seq - 1, vocab]
};

Reference training_forward(Transformer<float>& model, const std::vector<int32_t>& tokens) {
  const int64_t seq = static_cast<int64_t>(tokens.size());
  std::vector<int32_t> targets(tokens.size(), -1);
  for (int64_t i = 0; i + 1 < seq; ++i) targets[i] = tokens[i + 1];
  Transformer<float>::Ctx ctx;
  model.forward(ctx, tokens.data(), targets.data(), 1, seq, LossWeights{0.3, 0.0}, false);
  Reference ref;
  ref.logits = ctx.logits;
  if (!ctx.mtp.empty()) ref.mtp_logits = ctx.mtp[0].logits;
  return ref;
}

// Prefill of all tokens at once: logits of every row and the hidden states.
void prefill(const InferenceModel& im, PagedLatentCache& cache, int64_t seq,
             const std::vector<int32_t>& tokens, std::vector<float>& logits,
             std::vector<float>* hidden) {
  Rows rows;
  std::vector<int64_t> all;
  const int64_t start = cache.length(seq);
  ASSERT_TRUE(cache.grow(seq, start + static_cast<int64_t>(tokens.size())));
  for (size_t i = 0; i < tokens.size(); ++i) {
    rows.add(tokens[i], start + static_cast<int64_t>(i), seq);
    all.push_back(static_cast<int64_t>(i));
  }
  im.forward(rows, cache, all, &logits, hidden);
}

void expect_close_per_position(const std::vector<float>& got, const std::vector<float>& want,
                               int64_t vocab, double tolerance, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  for (size_t p = 0; p < got.size() / vocab; ++p)
    worst = std::max(worst, testing::relative_error(got.data() + p * vocab, want.data() + p * vocab, vocab));
  std::printf("%s: worst relative error per position %.3e\n", what, worst);
  EXPECT_LT(worst, tolerance) << what;
}

class InferenceVsTraining : public ::testing::TestWithParam<int> {};

TEST_P(InferenceVsTraining, LogitsMatchTheTrainingForward) {
  const ModelConfig cfg = GetParam() == 0 ? testing::infer_config() : testing::infer_config_v2();
  Transformer<float> model(cfg);
  testing::randomize(model, 21 + GetParam());
  const std::vector<int32_t> tokens = testing::random_tokens(19, cfg.vocab_size, 3);
  const Reference ref = training_forward(model, tokens);
  const InferenceModel im(model);
  const int64_t V = cfg.vocab_size, T = static_cast<int64_t>(tokens.size());

  for (int64_t page_size : {1, 4, 7, 64}) {
    PagedLatentCache cache = im.make_cache(false, page_size, 64);
    const int64_t seq = cache.open_sequence();
    std::vector<float> logits, hidden;
    prefill(im, cache, seq, tokens, logits, &hidden);
    expect_close_per_position(logits, ref.logits, V, 1e-5, "prefill");

    // One token at a time: the same bits as the prefill.
    PagedLatentCache step_cache = im.make_cache(false, page_size, 64);
    const int64_t step_seq = step_cache.open_sequence();
    for (int64_t t = 0; t < T; ++t) {
      std::vector<float> one;
      prefill(im, step_cache, step_seq, {tokens[t]}, one, nullptr);
      ASSERT_EQ(std::memcmp(one.data(), logits.data() + t * V, V * sizeof(float)), 0)
          << "position " << t << " page size " << page_size;
    }
    EXPECT_EQ(step_cache.page_table(step_seq).size(), static_cast<size_t>((T + page_size - 1) / page_size));

    if (!im.has_mtp()) continue;
    // MTP row p: (token p + 1, h_p) -> the training forward's MTP logits of position p.
    PagedLatentCache mtp_cache = im.make_cache(true, page_size, 64);
    const int64_t mtp_seq = mtp_cache.open_sequence();
    ASSERT_TRUE(mtp_cache.grow(mtp_seq, T - 1));
    Rows rows;
    std::vector<int64_t> all;
    for (int64_t p = 0; p + 1 < T; ++p) {
      rows.add(tokens[p + 1], p, mtp_seq);
      all.push_back(p);
    }
    std::vector<float> mtp_logits;
    im.forward_mtp(rows, hidden.data(), mtp_cache, all, &mtp_logits);
    expect_close_per_position(mtp_logits, ref.mtp_logits, V, 1e-5, "mtp");
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, InferenceVsTraining, ::testing::Values(0, 1));

TEST(InferenceModel, BatchingNeverChangesABit) {
  const ModelConfig cfg = testing::infer_config();
  Transformer<float> model(cfg);
  testing::randomize(model, 8);
  const InferenceModel im(model);
  const int64_t V = cfg.vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {testing::random_tokens(9, V, 1),
                                                     testing::random_tokens(3, V, 2),
                                                     testing::random_tokens(14, V, 3)};
  // Alone: each prompt prefilled in its own cache.
  std::vector<std::vector<float>> alone;
  for (const auto& p : prompts) {
    PagedLatentCache cache = im.make_cache(false, 4, 16);
    std::vector<float> logits;
    prefill(im, cache, cache.open_sequence(), p, logits, nullptr);
    alone.push_back(logits);
  }
  // Together: the first two prompts' first halves, then everything left in one mixed batch.
  PagedLatentCache cache = im.make_cache(false, 4, 16);
  std::vector<int64_t> seqs;
  for (size_t i = 0; i < prompts.size(); ++i) seqs.push_back(cache.open_sequence());
  std::vector<std::vector<float>> together(prompts.size());
  Rows rows;
  std::vector<int64_t> wanted;
  for (size_t i = 0; i < 2; ++i) {
    const int64_t half = static_cast<int64_t>(prompts[i].size()) / 2;
    ASSERT_TRUE(cache.grow(seqs[i], half));
    for (int64_t t = 0; t < half; ++t) {
      wanted.push_back(rows.size());
      rows.add(prompts[i][t], t, seqs[i]);
    }
  }
  std::vector<float> logits;
  im.forward(rows, cache, wanted, &logits, nullptr);
  for (size_t r = 0; r < wanted.size(); ++r) {
    const size_t i = static_cast<size_t>(rows.sequences[r] == seqs[0] ? 0 : 1);
    together[i].insert(together[i].end(), logits.begin() + r * V, logits.begin() + (r + 1) * V);
  }
  rows.clear();
  wanted.clear();
  std::vector<size_t> owner;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t start = cache.length(seqs[i]);
    ASSERT_TRUE(cache.grow(seqs[i], static_cast<int64_t>(prompts[i].size())));
    for (int64_t t = start; t < static_cast<int64_t>(prompts[i].size()); ++t) {
      wanted.push_back(rows.size());
      owner.push_back(i);
      rows.add(prompts[i][t], t, seqs[i]);
    }
  }
  im.forward(rows, cache, wanted, &logits, nullptr);
  for (size_t r = 0; r < wanted.size(); ++r)
    together[owner[r]].insert(together[owner[r]].end(), logits.begin() + r * V,
                              logits.begin() + (r + 1) * V);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(together[i].size(), alone[i].size());
    EXPECT_EQ(std::memcmp(together[i].data(), alone[i].data(), alone[i].size() * sizeof(float)), 0)
        << "prompt " << i;
  }
}

TEST(PagedLatentCache, PagesFreeListAndRollback) {
  PagedLatentCache cache(2, 3, 4, 5);  // 2 layers, 3 floats, 4 positions per page, 5 pages
  EXPECT_EQ(cache.free_pages(), 5);
  const int64_t a = cache.open_sequence(), b = cache.open_sequence();
  ASSERT_TRUE(cache.grow(a, 6));  // 2 pages
  ASSERT_TRUE(cache.grow(b, 4));  // 1 page
  EXPECT_EQ(cache.free_pages(), 2);
  EXPECT_EQ(cache.page_table(a), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(cache.page_table(b), (std::vector<int32_t>{2}));
  for (int64_t p = 0; p < 6; ++p)
    for (int64_t layer = 0; layer < 2; ++layer) cache.entry(a, layer, p)[1] = static_cast<float>(10 * p + layer);
  EXPECT_EQ(cache.entry(a, 1, 5)[1], 51.0f);
  EXPECT_EQ(cache.entry(a, 0, 5), cache.page_entries(a, 0, 1) + 1 * 3);
  EXPECT_FALSE(cache.grow(b, 13));  // needs 3 more pages, 2 free: nothing changes
  EXPECT_EQ(cache.length(b), 4);
  EXPECT_EQ(cache.free_pages(), 2);
  cache.truncate(a, 4);  // roll back: page 1 freed, positions 0..3 kept
  EXPECT_EQ(cache.page_table(a), (std::vector<int32_t>{0}));
  EXPECT_EQ(cache.free_pages(), 3);
  EXPECT_EQ(cache.entry(a, 1, 3)[1], 31.0f);
  EXPECT_NE(testing::error_message([&] { cache.entry(a, 0, 4); }), "");
  EXPECT_NE(testing::error_message([&] { cache.truncate(a, 5); }), "");
  ASSERT_TRUE(cache.grow(b, 13));
  EXPECT_EQ(cache.free_pages(), 0);
  cache.close_sequence(b);
  EXPECT_EQ(cache.free_pages(), 4);
  EXPECT_NE(testing::error_message([&] { cache.length(b); }), "");
  EXPECT_EQ(cache.open_sequence(), b);  // the id is reused
  EXPECT_EQ(cache.open_sequences(), 2);
}

}  // namespace
}  // namespace frugal
