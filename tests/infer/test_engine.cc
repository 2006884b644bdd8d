// The generation engine (infer/engine.h):
//   - greedy tokens equal those of the training forward (Transformer::last_logits) wherever the
//     training logits have a clear winner;
//   - continuous batching: requests of different lengths and settings, joining and leaving a
//     batch of 2, give exactly the tokens each gives alone; so do preempted ones (tiny cache);
//   - speculative decoding gives exactly the plain tokens, greedy and sampled; drafts are both
//     accepted and rejected (a model whose MTP module nearly knows the next token), and every
//     cache page comes back after a run (rollback frees what it should);
//   - EOS, stop strings, max_new_tokens, the context limit, suppressed tokens; bad requests and
//     options are errors;
//   - cancel() drops a waiting, active or finished request, frees its cache pages at once, and
//     leaves the other requests' tokens unchanged.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "infer/engine.h"
#include "infer/infer_test_util.h"
#include "test_util.h"

namespace frugal {
namespace {

using infer::Completion;
using infer::Engine;
using infer::EngineOptions;
using infer::FinishReason;
using infer::Request;

Request make_request(std::vector<int32_t> prompt, int64_t max_new, double temperature = 0.0,
                     uint64_t seed = 0) {
  Request r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.sampling.temperature = temperature;
  r.sampling.top_k = temperature > 0 ? 20 : 0;
  r.sampling.top_p = temperature > 0 ? 0.95 : 1.0;
  r.seed = seed;
  return r;
}

std::vector<Completion> run_all(const Transformer<float>& model, const std::vector<Request>& requests,
                                EngineOptions options, infer::EngineStats* stats = nullptr) {
  Engine engine(model, std::move(options));
  for (const Request& r : requests) engine.submit(r);
  std::vector<Completion> out = engine.run();
  EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
  if (stats) *stats = engine.stats();
  return out;
}

std::vector<Request> mixed_requests(int64_t vocab) {
  std::vector<Request> rs;
  rs.push_back(make_request(testing::random_tokens(5, vocab, 1), 12));
  rs.push_back(make_request(testing::random_tokens(17, vocab, 2), 6, 0.8, 7));
  rs.push_back(make_request(testing::random_tokens(2, vocab, 3), 20));
  rs.push_back(make_request(testing::random_tokens(9, vocab, 4), 15, 1.2, 9));
  rs.push_back(make_request(testing::random_tokens(1, vocab, 5), 9, 0.5, 11));
  for (Request& r : rs) r.eos_tokens = {static_cast<int32_t>(vocab - 1)};
  return rs;
}

void expect_same_tokens(const std::vector<Completion>& a, const std::vector<Completion>& b,
                        const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].id, b[i].id) << what;
    EXPECT_EQ(a[i].tokens, b[i].tokens) << what << ": request " << i;
    EXPECT_EQ(a[i].reason, b[i].reason) << what << ": request " << i;
  }
}

TEST(Engine, GreedyMatchesTheTrainingForward) {
  const ModelConfig cfg = testing::infer_config();
  Transformer<float> model(cfg);
  testing::randomize(model, 31);
  std::vector<int32_t> tokens = testing::random_tokens(6, cfg.vocab_size, 8);
  Request r = make_request(tokens, 24);
  r.eos_tokens = {static_cast<int32_t>(cfg.vocab_size - 1)};
  EngineOptions options;
  options.max_batch = 1;
  const Completion c = run_all(model, {r}, options).at(0);
  ASSERT_FALSE(c.tokens.empty());
  int64_t compared = 0;
  for (int32_t generated : c.tokens) {
    std::vector<float> logits = model.last_logits(tokens.data(), static_cast<int64_t>(tokens.size()));
    std::vector<float> sorted = logits;
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] < 1e-4f) break;  // a near tie: rounding may decide either way
    const int32_t best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    ASSERT_EQ(generated, best) << "token " << compared;
    tokens.push_back(generated);
    ++compared;
  }
  EXPECT_GE(compared, 10);
}

TEST(Engine, ContinuousBatchingEqualsRunningAlone) {
  const ModelConfig cfg = testing::infer_config();
  Transformer<float> model(cfg);
  testing::randomize(model, 12);
  const std::vector<Request> requests = mixed_requests(cfg.vocab_size);
  EngineOptions alone_options;
  alone_options.max_batch = 1;
  std::vector<Completion> alone;
  for (const Request& r : requests) {
    Completion c = run_all(model, {r}, alone_options).at(0);
    c.id = static_cast<int64_t>(alone.size());
    alone.push_back(c);
  }
  EngineOptions batched;
  batched.max_batch = 2;
  batched.page_size = 3;
  infer::EngineStats stats;
  expect_same_tokens(run_all(model, requests, batched, &stats), alone, "batch of 2");
  EXPECT_EQ(stats.max_active, 2);
  EXPECT_EQ(stats.preemptions, 0);

  // Requests arriving while others run.
  Engine engine(model, batched);
  engine.submit(requests[0]);
  engine.submit(requests[1]);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine.step());
  for (size_t i = 2; i < requests.size(); ++i) {
    engine.submit(requests[i]);
    engine.step();
  }
  expect_same_tokens(engine.run(), std::vector<Completion>(alone.begin(), alone.end()), "late arrivals");

  // A cache too small for everyone at once: sequences are preempted and recomputed.
  EngineOptions tight;
  tight.max_batch = 4;
  tight.page_size = 4;
  tight.cache_tokens = 40;
  tight.max_context = 40;
  expect_same_tokens(run_all(model, requests, tight, &stats), alone, "preempted");
  EXPECT_GT(stats.preemptions, 0);
}

// A model whose MTP module nearly knows the main model's next prediction. The head maps each
// token's embedding direction to a fixed successor, pi(t) = (7t + 3) mod (V-1) (the last token,
// the requests' EOS, maps to itself and is never predicted), the attention and FFN branches are
// damped so the residual stream stays near the newest token's embedding, and eh_proj reads
// mostly the embedding part of [enorm(e) ; hnorm(h)] (plus noise, so some drafts miss).
void make_predictable(Transformer<float>& model) {
  const ModelConfig& cfg = model.config();
  const int64_t d = cfg.hidden_size, V = cfg.vocab_size;
  const std::string mtp = "model.layers." + std::to_string(cfg.num_hidden_layers);
  for (auto& p : model.params().all()) {
    if (p->name.find("o_proj") != std::string::npos || p->name.find("down_proj") != std::string::npos)
      for (float& v : p->value) v *= 0.1f;
    if (p->name == mtp + ".enorm.weight" || p->name == mtp + ".hnorm.weight")
      std::fill(p->value.begin(), p->value.end(), 1.0f);
  }
  const auto& embedding = model.params().get("model.embed_tokens.weight").value;
  auto& head = model.params().get("lm_head.weight").value;
  for (int64_t t = 0; t < V; ++t) {
    const int64_t successor = t == V - 1 ? t : (7 * t + 3) % (V - 1);
    double squares = 0;
    for (int64_t c = 0; c < d; ++c) squares += embedding[t * d + c] * embedding[t * d + c];
    const double rms = std::sqrt(squares / static_cast<double>(d));
    for (int64_t c = 0; c < d; ++c)
      head[successor * d + c] = static_cast<float>(2.0 * embedding[t * d + c] / rms);
  }
  auto& eh = model.params().get(mtp + ".eh_proj.weight").value;
  for (int64_t r = 0; r < d; ++r)
    for (int64_t c = 0; c < 2 * d; ++c)
      eh[r * 2 * d + c] = (c == r ? 1.0f : 0.0f) + 0.3f * eh[r * 2 * d + c];
  model.params().get(mtp + ".shared_head.norm.weight").value =
      model.params().get("model.norm.weight").value;
}

TEST(Engine, SpeculativeDecodingGivesThePlainTokens) {
  const ModelConfig cfg = testing::infer_config();
  for (bool predictable : {false, true}) {
    Transformer<float> model(cfg);
    testing::randomize(model, 40);
    if (predictable) make_predictable(model);
    const std::vector<Request> requests = mixed_requests(cfg.vocab_size);
    EngineOptions plain;
    plain.max_batch = 3;
    plain.page_size = 5;
    infer::EngineStats plain_stats, spec_stats;
    const std::vector<Completion> expected = run_all(model, requests, plain, &plain_stats);
    EngineOptions spec = plain;
    spec.speculative = true;
    const std::vector<Completion> got = run_all(model, requests, spec, &spec_stats);
    expect_same_tokens(got, expected, predictable ? "predictable model" : "random model");
    EXPECT_GT(spec_stats.drafted, 20);
    EXPECT_EQ(spec_stats.generated, plain_stats.generated);
    int64_t drafted = 0, accepted = 0;
    for (const Completion& c : got) {
      drafted += c.drafted;
      accepted += c.accepted;
    }
    EXPECT_EQ(drafted, spec_stats.drafted);
    EXPECT_EQ(accepted, spec_stats.accepted);
    std::printf("%s model: %lld drafts, %lld accepted (%.0f%%), %lld vs %lld steps\n",
                predictable ? "predictable" : "random", static_cast<long long>(spec_stats.drafted),
                static_cast<long long>(spec_stats.accepted), 100 * spec_stats.acceptance(),
                static_cast<long long>(spec_stats.steps), static_cast<long long>(plain_stats.steps));
    if (predictable) {
      // Both branches of the verification run: accepted drafts and rolled-back ones.
      EXPECT_GT(spec_stats.accepted, spec_stats.drafted / 4);
      EXPECT_LT(spec_stats.accepted, spec_stats.drafted);
      EXPECT_LT(spec_stats.steps, plain_stats.steps);
    }
    // Preemption under speculation: the same tokens again.
    spec.cache_tokens = 40;
    spec.max_context = 40;
    spec.page_size = 4;
    spec.max_batch = 4;
    expect_same_tokens(run_all(model, requests, spec, &spec_stats), expected, "speculative, preempted");
    EXPECT_GT(spec_stats.preemptions, 0);
  }
}

TEST(Engine, RejectedDraftsAreRolledBack) {
  // One position per page: the pages in use are exactly the positions cached. After every step
  // the main cache holds the prompt and the generated tokens except the newest (fed next step),
  // so a rejected draft's entry must have been given back.
  const ModelConfig cfg = testing::infer_config();
  Transformer<float> model(cfg);
  testing::randomize(model, 40);
  EngineOptions options;
  options.speculative = true;
  options.page_size = 1;
  int64_t generated = 0;
  options.on_token = [&](int64_t, int32_t) { ++generated; };
  Engine engine(model, options);
  Request r = make_request(testing::random_tokens(5, cfg.vocab_size, 2), 12);
  r.eos_tokens = {static_cast<int32_t>(cfg.vocab_size - 1)};
  engine.submit(r);
  int64_t steps = 0;
  while (engine.active() + engine.waiting() > 0) {
    engine.step();
    ++steps;
    if (engine.active() == 0) break;
    const int64_t used = engine.cache().total_pages() - engine.cache().free_pages();
    EXPECT_EQ(used, 5 + generated - 1) << "after step " << steps;
  }
  EXPECT_GT(engine.stats().drafted - engine.stats().accepted, 5);  // rejections happened
  EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
}

std::string letters(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += static_cast<char>('a' + id % 26);
  return s;
}

TEST(Engine, StopConditions) {
  const ModelConfig cfg = testing::infer_config();
  Transformer<float> model(cfg);
  testing::randomize(model, 50);
  EngineOptions options;
  options.detokenize = letters;
  const std::vector<int32_t> prompt = testing::random_tokens(4, cfg.vocab_size, 6);
  Request base = make_request(prompt, 16);
  base.eos_tokens = {static_cast<int32_t>(cfg.vocab_size - 1)};
  const Completion plain = run_all(model, {base}, options).at(0);
  ASSERT_EQ(plain.tokens.size(), 16u) << "expected no EOS in the plain run";
  EXPECT_EQ(plain.reason, FinishReason::kLength);
  EXPECT_EQ(plain.text, letters(plain.tokens));

  // EOS: the first occurrence of the 6th token ends the output just before it.
  Request eos = base;
  eos.eos_tokens = {plain.tokens[5]};
  const size_t first = std::find(plain.tokens.begin(), plain.tokens.end(), plain.tokens[5]) - plain.tokens.begin();
  Completion c = run_all(model, {eos}, options).at(0);
  EXPECT_EQ(c.reason, FinishReason::kEos);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + first));

  // A stop string spanning tokens 7-8: the text stops before it, the tokens include token 8.
  Request stop = base;
  const std::string text = letters(plain.tokens);
  stop.stop = {"zzzz", text.substr(7, 2)};
  const size_t at = text.find(stop.stop[1]);
  c = run_all(model, {stop}, options).at(0);
  EXPECT_EQ(c.reason, FinishReason::kStop);
  EXPECT_EQ(c.text, text.substr(0, at));
  EXPECT_EQ(c.tokens, std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + at + 2));

  // The context limit counts the prompt.
  options.max_context = static_cast<int64_t>(prompt.size()) + 3;
  c = run_all(model, {base}, options).at(0);
  EXPECT_EQ(c.reason, FinishReason::kContext);
  EXPECT_EQ(c.tokens, std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + 3));
  options.max_context = 0;

  // Suppressed tokens are never produced.
  Request suppressed = base;
  suppressed.suppressed_tokens = {plain.tokens[0], plain.tokens[1]};
  c = run_all(model, {suppressed}, options).at(0);
  ASSERT_FALSE(c.tokens.empty());
  for (int32_t t : c.tokens) EXPECT_TRUE(t != plain.tokens[0] && t != plain.tokens[1]);

  // Zero new tokens and a prompt that fills the context finish at once.
  Engine engine(model, options);
  Request none = base;
  none.max_new_tokens = 0;
  engine.submit(none);
  Request full = base;
  full.prompt = testing::random_tokens(cfg.max_position_embeddings, cfg.vocab_size, 1);
  engine.submit(full);
  EXPECT_FALSE(engine.step());
  const auto done = engine.take_finished();
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].reason, FinishReason::kLength);
  EXPECT_EQ(done[1].reason, FinishReason::kContext);
}

TEST(Engine, CancelDropsARequestAndFreesItsPages) {
  const ModelConfig cfg = testing::infer_config();
  Transformer<float> model(cfg);
  testing::randomize(model, 61);
  for (bool speculative : {false, true}) {
    EngineOptions options;
    options.max_batch = 2;
    options.speculative = speculative;
    const std::vector<Request> requests = mixed_requests(cfg.vocab_size);
    const std::vector<Completion> alone = run_all(model, requests, options);
    Engine engine(model, options);
    for (const Request& r : requests) engine.submit(r);
    ASSERT_TRUE(engine.step());  // 0 and 1 active, 2.. waiting
    ASSERT_TRUE(engine.step());
    ASSERT_EQ(engine.active(), 2);
    const int64_t free_before = engine.cache().free_pages();
    EXPECT_TRUE(engine.cancel(1));  // active: its pages come back at once
    EXPECT_EQ(engine.active(), 1);
    EXPECT_GT(engine.cache().free_pages(), free_before);
    EXPECT_TRUE(engine.cancel(3));  // waiting
    EXPECT_EQ(engine.waiting(), 2);
    EXPECT_FALSE(engine.cancel(3));
    EXPECT_FALSE(engine.cancel(99));
    while (engine.step()) {
    }
    EXPECT_TRUE(engine.cancel(4));  // finished, not taken
    const std::vector<Completion> rest = engine.take_finished();
    ASSERT_EQ(rest.size(), 2u);
    expect_same_tokens({rest[0], rest[1]}, {alone[0], alone[2]}, "after cancelling");
    EXPECT_FALSE(engine.cancel(0));  // already taken
    EXPECT_EQ(engine.cache().free_pages(), engine.cache().total_pages());
  }
}

TEST(Engine, BadRequestsAndOptions) {
  ModelConfig cfg = testing::infer_config_v2();  // no MTP module
  Transformer<float> model(cfg);
  testing::randomize(model, 1);
  EngineOptions options;
  options.speculative = true;
  EXPECT_NE(testing::error_message([&] { Engine e(model, options); }).find("MTP"), std::string::npos);
  options.speculative = false;
  options.cache_tokens = 10;
  EXPECT_NE(testing::error_message([&] { Engine e(model, options); }).find("cannot hold"), std::string::npos);
  options.cache_tokens = 0;
  Engine engine(model, options);
  EXPECT_NE(testing::error_message([&] { engine.submit(make_request({}, 3)); }).find("no tokens"),
            std::string::npos);
  EXPECT_NE(testing::error_message([&] { engine.submit(make_request({1, 99}, 3)); }).find("99"),
            std::string::npos);
  Request r = make_request({1, 2}, 3);
  r.stop = {"x"};
  EXPECT_NE(testing::error_message([&] { engine.submit(r); }).find("tokenizer"), std::string::npos);
  r = make_request({1, 2}, 3, 0.5);
  r.sampling.top_p = 0;
  EXPECT_NE(testing::error_message([&] { engine.submit(r); }).find("top_p"), std::string::npos);
  EXPECT_EQ(engine.waiting(), 0);
}

}  // namespace
}  // namespace frugal
