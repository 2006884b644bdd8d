// EngineService over tiny checkpoints:
//   - completions equal what the Engine alone gives for the same engine request (tokens, text,
//     finish reason, usage), greedy and seeded sampling, with and without speculative decoding;
//     when prompt + completion fill the window, frugal generate's context shift (last half kept,
//     counters going on) is followed exactly;
//   - greedy generation is deterministic and the deltas add up; max_tokens ends with "length";
//   - a stop string ends the text right before its first occurrence, with the engine's own stop
//     string handling giving the same text and token count;
//   - concurrent requests from several threads give the sequential results;
//   - cancelling (callback returning false) stops generation and frees the engine's slot, so a
//     request waiting behind it in a batch of one completes;
//   - a model rigged to always prefer one token: the end-of-sequence token ends with "stop"
//     (counted, not shown), masked special tokens are never sampled;
//   - invalid requests throw; the chat formats (DeepSeek special tokens with a tokenizer.json,
//     plain text with bytes) are exactly as documented.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "data/byte_tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "infer/serve_test_util.h"
#include "infer/engine_service.h"
#include "test_util.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

const std::string kDeepSeekTokenizer =
    std::string(FRUGAL_SOURCE_DIR) + "/tests/golden/tokenizers/en_deepseek_8k.tokenizer.json";

struct Result {
  std::string text;  // all deltas
  std::vector<std::string> pieces;
  std::vector<int32_t> tokens;  // delta.token of every non-done delta
  std::string finish_reason;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  int done_deltas = 0;
};

Result run(GenerationService& service, const GenerationRequest& request) {
  Result r;
  service.generate(request, [&](const GenerationDelta& d) {
    r.text += d.text;
    r.pieces.push_back(d.text);
    r.prompt_tokens = d.prompt_tokens;
    r.completion_tokens = d.completion_tokens;
    if (!d.done) r.tokens.push_back(d.token);
    if (d.done) {
      ++r.done_deltas;
      r.finish_reason = d.finish_reason;
    }
    return true;
  });
  return r;
}

GenerationRequest greedy(std::vector<int32_t> prompt, int64_t max_tokens) {
  GenerationRequest request;
  request.prompt = std::move(prompt);
  request.max_tokens = max_tokens;
  request.temperature = 0;
  return request;
}

class EngineServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("engine_service");
    make_test_checkpoint(dir_->path("bytes"));
    service_ = EngineService::load(dir_->path("bytes"), "", {.threads = 1, .max_batch = 4}).release();
    speculative_ = EngineService::load(dir_->path("bytes"), "",
                                       {.threads = 1, .max_batch = 4, .speculative = true})
                       .release();
  }
  static void TearDownTestSuite() {
    delete speculative_;
    delete service_;
    delete dir_;
  }
  static TempDir* dir_;
  static EngineService* service_;
  static EngineService* speculative_;  // the same checkpoint with MTP drafting
};

TempDir* EngineServiceTest::dir_ = nullptr;
EngineService* EngineServiceTest::service_ = nullptr;
EngineService* EngineServiceTest::speculative_ = nullptr;

std::string text_of(const EngineService& service, const std::vector<int32_t>& tokens) {
  std::string bytes;
  for (int32_t t : tokens) bytes += service.token_bytes(t);
  return tok::sanitize_utf8(bytes);
}

struct Alone {
  std::vector<int32_t> tokens;
  infer::FinishReason reason = infer::FinishReason::kLength;
  std::string text;  // the engine's own text (cut before a stop string)
  int submissions = 0;
};

// The request through an Engine of its own (batch of one, no speculation), with frugal
// generate's context shift when prompt + tokens fill the window.
Alone engine_alone(const EngineService& service, const GenerationRequest& request) {
  infer::EngineOptions options;
  options.max_batch = 1;
  options.max_context = service.window();
  options.detokenize = [&](const std::vector<int32_t>& tokens) { return text_of(service, tokens); };
  infer::Engine engine(service.model(), options);
  infer::Request r = service.engine_request(request);
  r.stop = request.stop;
  std::vector<int32_t> context = request.prompt;
  Alone alone;
  int64_t remaining = request.max_tokens;
  while (remaining > 0) {
    if (static_cast<int64_t>(context.size()) >= service.window())
      context.erase(context.begin(), context.end() - service.window() / 2);
    r.prompt = context;
    r.max_new_tokens = remaining;
    r.first_counter = alone.tokens.size();
    engine.submit(r);
    ++alone.submissions;
    const infer::Completion c = engine.run().at(0);
    alone.tokens.insert(alone.tokens.end(), c.tokens.begin(), c.tokens.end());
    alone.reason = c.reason;
    alone.text = c.text;
    remaining -= static_cast<int64_t>(c.tokens.size());
    if (c.reason != infer::FinishReason::kContext) break;
    context.insert(context.end(), c.tokens.begin(), c.tokens.end());
  }
  return alone;
}

void expect_same_as_alone(const EngineService& service, const Result& r, const Alone& alone,
                          const std::string& what) {
  EXPECT_EQ(r.tokens, alone.tokens) << what;
  EXPECT_EQ(r.text, text_of(service, alone.tokens)) << what;
  const bool eos = alone.reason == infer::FinishReason::kEos;
  EXPECT_EQ(r.finish_reason, eos ? "stop" : "length") << what;
  EXPECT_EQ(r.completion_tokens, static_cast<int64_t>(alone.tokens.size()) + (eos ? 1 : 0)) << what;
  EXPECT_EQ(r.done_deltas, 1) << what;
}

std::vector<GenerationRequest> varied_requests(const EngineService& service) {
  std::vector<GenerationRequest> requests;
  requests.push_back(greedy(service.encode("the cat"), 20));
  requests.push_back(greedy(service.encode(std::string(100, 'x')), 40));  // shifted at once
  requests.push_back(greedy(service.encode("a"), 60));                    // shifted when full
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    GenerationRequest sampled = greedy(service.encode("sampled"), 24);
    sampled.temperature = 1.0;
    sampled.seed = seed;
    requests.push_back(sampled);
  }
  GenerationRequest filtered = greedy(service.encode("filtered"), 30);
  filtered.temperature = 0.8;
  filtered.top_k = 20;
  filtered.top_p = 0.9;
  filtered.seed = 5;
  requests.push_back(filtered);
  return requests;
}

TEST_F(EngineServiceTest, LoadNamesTheModelAfterTheDirectory) {
  EXPECT_EQ(service_->model_name(), "bytes");
  const std::string checkpoint = resolve_checkpoint(dir_->path("bytes"));
  EXPECT_NE(checkpoint, dir_->path("bytes"));
  EXPECT_EQ(EngineService::load(checkpoint + "/")->model_name(), "bytes");
  EXPECT_EQ(service_->context_length(), 32);
  EXPECT_EQ(service_->vocab_size(), ByteTokenizer::kVocabSize);
  EXPECT_FALSE(service_->has_chat_tokens());
  const std::string missing = dir_->path("nope");
  EXPECT_NE(error_message([&] { EngineService::load(missing); }).find(missing), std::string::npos);
}

TEST_F(EngineServiceTest, CompletionsAreTheEngineAlones) {
  int shifted = 0;
  for (const GenerationRequest& request : varied_requests(*service_)) {
    const Alone alone = engine_alone(*service_, request);
    shifted += alone.submissions > 1;
    const std::string what = "prompt of " + std::to_string(request.prompt.size()) +
                             " tokens, seed " + std::to_string(request.seed);
    expect_same_as_alone(*service_, run(*service_, request), alone, what);
    expect_same_as_alone(*speculative_, run(*speculative_, request), alone, what + ", speculative");
  }
  EXPECT_GE(shifted, 1) << "no request exercised the context shift";
  const infer::EngineStats stats = speculative_->stats();
  EXPECT_GT(stats.drafted, 0);
  EXPECT_EQ(service_->stats().drafted, 0);
}

TEST_F(EngineServiceTest, GreedyIsDeterministicAndDeltasAddUp) {
  const GenerationRequest request = greedy(service_->encode("the cat"), 20);
  const Result a = run(*service_, request), b = run(*service_, request);
  EXPECT_EQ(a.text, b.text);
  EXPECT_EQ(a.done_deltas, 1);
  EXPECT_TRUE(tok::is_valid_utf8(a.text));
  EXPECT_EQ(a.prompt_tokens, 8);  // <|endoftext|> + 7 bytes
  if (a.finish_reason == "length") EXPECT_EQ(a.completion_tokens, 20);
  else EXPECT_LE(a.completion_tokens, 20);
  // One delta per sampled token (a final end-of-sequence token gets none), plus the done delta.
  const int64_t shown = a.completion_tokens - (a.finish_reason == "stop" ? 1 : 0);
  EXPECT_EQ(static_cast<int64_t>(a.pieces.size()), shown + 1);
  // Sampling with a seed is deterministic too, and differs from greedy for some seed.
  GenerationRequest sampled = request;
  sampled.temperature = 1.0;
  bool any_differs = false;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    sampled.seed = seed;
    const Result x = run(*service_, sampled), y = run(*service_, sampled);
    EXPECT_EQ(x.text, y.text);
    any_differs |= x.text != a.text;
  }
  EXPECT_TRUE(any_differs);
  // A prompt longer than the context window is generated from its last 32 tokens.
  const Result long_prompt = run(*service_, greedy(service_->encode(std::string(100, 'x')), 3));
  EXPECT_EQ(long_prompt.prompt_tokens, 101);
  EXPECT_EQ(long_prompt.done_deltas, 1);
}

TEST_F(EngineServiceTest, StopStringEndsTheTextBeforeItsFirstOccurrence) {
  const GenerationRequest request = greedy(service_->encode("a"), 40);
  const Result full = run(*service_, request);
  // Cut a two-character stop string from the middle of the completion.
  std::vector<size_t> starts;  // character boundaries
  for (size_t pos = 0; pos < full.text.size();) {
    starts.push_back(pos);
    tok::decode_utf8(full.text, pos);
  }
  ASSERT_GE(starts.size(), 12u) << "the completion is too short to cut a stop string from";
  const size_t from = starts[starts.size() / 2], to = starts[starts.size() / 2 + 2];
  const std::string stop = full.text.substr(from, to - from);
  GenerationRequest with_stop = request;
  with_stop.stop = {stop, "\x01never\x02"};
  const Result cut = run(*service_, with_stop);
  EXPECT_EQ(cut.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(cut.finish_reason, "stop");
  EXPECT_LT(cut.completion_tokens, full.completion_tokens);
  for (const std::string& piece : cut.pieces) EXPECT_EQ(piece.find(stop), std::string::npos);
  // The engine's own stop strings agree: the same text, ended by the same token.
  const Alone alone = engine_alone(*service_, with_stop);
  EXPECT_EQ(alone.reason, infer::FinishReason::kStop);
  EXPECT_EQ(alone.text, cut.text);
  EXPECT_EQ(static_cast<int64_t>(alone.tokens.size()), cut.completion_tokens);
  // The token that completed the stop string is counted but sent with the done delta only.
  ASSERT_FALSE(alone.tokens.empty());
  EXPECT_EQ(cut.tokens, std::vector<int32_t>(alone.tokens.begin(), alone.tokens.end() - 1));
}

TEST_F(EngineServiceTest, CancellingStopsGeneration) {
  int deltas = 0;
  bool saw_done = false;
  service_->generate(greedy(service_->encode("x"), 30), [&](const GenerationDelta& d) {
    ++deltas;
    saw_done |= d.done;
    return deltas < 3;
  });
  EXPECT_EQ(deltas, 3);
  EXPECT_FALSE(saw_done);
}

TEST_F(EngineServiceTest, ConcurrentRequestsGiveSequentialResults) {
  const std::vector<GenerationRequest> requests = varied_requests(*service_);  // 7 > max_batch
  for (EngineService* service : {service_, speculative_}) {
    std::vector<Result> sequential;
    for (const auto& r : requests) sequential.push_back(run(*service, r));
    std::vector<std::future<Result>> futures;
    for (const auto& r : requests)
      futures.push_back(std::async(std::launch::async, [service, r] { return run(*service, r); }));
    for (size_t i = 0; i < futures.size(); ++i) {
      const Result concurrent = futures[i].get();
      EXPECT_EQ(concurrent.tokens, sequential[i].tokens) << i;
      EXPECT_EQ(concurrent.text, sequential[i].text) << i;
      EXPECT_EQ(concurrent.finish_reason, sequential[i].finish_reason) << i;
      EXPECT_EQ(concurrent.completion_tokens, sequential[i].completion_tokens) << i;
    }
  }
}

TEST_F(EngineServiceTest, InvalidRequestsThrow) {
  GenerationRequest ok = greedy(service_->encode("x"), 2);
  auto fails = [&](GenerationRequest r, const std::string& needle) {
    const std::string message = error_message([&] { run(*service_, r); });
    EXPECT_NE(message.find(needle), std::string::npos) << "'" << message << "' lacks " << needle;
  };
  GenerationRequest r = ok;
  r.prompt.clear();
  fails(r, "no tokens");
  r = ok;
  r.prompt.push_back(100000);
  fails(r, "100000");
  r = ok;
  r.max_tokens = 0;
  fails(r, "max_tokens");
  r = ok;
  r.top_p = 0;
  fails(r, "top_p");
  r = ok;
  r.temperature = -1;
  fails(r, "temperature");
  EXPECT_NE(error_message([&] { service_->encode_chat({{"tool", "x"}}); }).find("tool"),
            std::string::npos);
}

TEST_F(EngineServiceTest, PlainTextChatFormatWithBytes) {
  const std::vector<ChatMessage> messages = {
      {"system", "Be kind."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};
  const std::vector<int32_t> ids = service_->encode_chat(messages);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], ByteTokenizer::kEos);
  const std::vector<int32_t> rest(ids.begin() + 1, ids.end());
  EXPECT_EQ(ByteTokenizer().decode(rest),
            "Be kind.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Bye\n\nAssistant:");
  EXPECT_EQ(service_->chat_stop_strings(), (std::vector<std::string>{"\n\nUser:"}));
  const std::vector<int32_t> no_system = service_->encode_chat({{"user", "Hi"}});
  EXPECT_EQ(ByteTokenizer().decode(std::vector<int32_t>(no_system.begin() + 1, no_system.end())),
            "User: Hi\n\nAssistant:");
}

TEST(EngineServiceChat, DeepSeekFormatWithSpecialTokens) {
  TempDir dir("engine_service_bpe");
  make_test_checkpoint(dir.path("bpe"), {"model.vocab_size=8192"}, kDeepSeekTokenizer);
  auto service = EngineService::load(dir.path("bpe"), "bpe-model", {.threads = 1});
  const Tokenizer tokenizer = Tokenizer::from_file(kDeepSeekTokenizer);
  EXPECT_EQ(service->model_name(), "bpe-model");
  ASSERT_TRUE(service->has_chat_tokens());
  EXPECT_TRUE(service->chat_stop_strings().empty());
  const int32_t bos = 0, eos = 1, user = 6, assistant = 7;  // the file's added tokens
  ASSERT_EQ(tokenizer.bos_id(), bos);
  ASSERT_EQ(tokenizer.special_id(SpecialRole::kUser), user);
  auto cat = [](std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  std::vector<int32_t> expected = {bos};
  expected = cat(expected, tokenizer.encode("Be kind.\n\n"));
  expected.push_back(user);
  expected = cat(expected, tokenizer.encode("Hi there"));
  expected.push_back(assistant);
  expected = cat(expected, tokenizer.encode("Hello!"));
  expected.push_back(eos);
  expected.push_back(user);
  expected = cat(expected, tokenizer.encode("Bye"));
  expected.push_back(assistant);
  EXPECT_EQ(service->encode_chat({{"system", "Be kind."},
                                  {"user", "Hi there"},
                                  {"assistant", "Hello!"},
                                  {"user", "Bye"}}),
            expected);
  EXPECT_EQ(service->encode("hello world"), cat({eos}, tokenizer.encode("hello world")));
  // Token bytes add up to the text, multi-byte characters included.
  const std::string text = "caf\xC3\xA9 \xE2\x82\xAC 5 \xF0\x9F\x98\x80!";
  std::string bytes;
  for (int32_t id : tokenizer.encode(text)) bytes += service->token_bytes(id);
  EXPECT_EQ(bytes, text);
  // Generation works over the BPE vocabulary and never samples a special token other than EOS
  // (no special token's text appears).
  const Result r = run(*service, greedy(service->encode_chat({{"user", "Hi"}}), 16));
  EXPECT_EQ(r.done_deltas, 1);
  EXPECT_TRUE(tok::is_valid_utf8(r.text));
  EXPECT_EQ(r.text.find("\xEF\xBD\x9C"), std::string::npos);  // the fullwidth bar of <｜...｜>
}

// A checkpoint whose model always puts all its weight on `token`: only the embedding (every row
// e_0), the norms (ones) and one row of the output head (e_0 for `token`) are non-zero, so the
// final hidden state is a positive multiple of e_0 and `token` has the only non-zero logit.
std::unique_ptr<EngineService> always_service(int32_t token, int64_t max_batch = 8,
                                              int64_t context = 32) {
  const Config config = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml",
                                    {"data.train_path=unused.txt",
                                     "train.seq_len=" + std::to_string(context),
                                     "model.max_position_embeddings=" + std::to_string(context)});
  auto model = std::make_unique<Transformer<float>>(config.model);
  const int64_t hidden = config.model.hidden_size;
  for (auto& p : model->params().all()) {
    std::fill(p->value.begin(), p->value.end(), 0.0f);
    if (p->name == "model.embed_tokens.weight") {
      for (size_t row = 0; row * hidden < p->value.size(); ++row) p->value[row * hidden] = 1.0f;
    } else if (p->name == "lm_head.weight") {
      p->value[static_cast<size_t>(token) * hidden] = 1.0f;
    } else if (p->trainable && !p->weight_decay) {  // a norm weight
      std::fill(p->value.begin(), p->value.end(), 1.0f);
    }
  }
  return std::make_unique<EngineService>(std::move(model), std::nullopt, "always", context,
                                         EngineServiceOptions{.threads = 1, .max_batch = max_batch});
}

TEST(EngineServiceRigged, EndOfSequenceAndMaxTokens) {
  // Always 'A': runs to max_tokens.
  auto letters = always_service('A');
  Result r = run(*letters, greedy(letters->encode("x"), 5));
  EXPECT_EQ(r.text, "AAAAA");
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.completion_tokens, 5);
  // A stop string straddling tokens: "AAA" is complete at the third token.
  GenerationRequest with_stop = greedy(letters->encode("x"), 5);
  with_stop.stop = {"AAA"};
  r = run(*letters, with_stop);
  EXPECT_EQ(r.text, "");
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.completion_tokens, 3);
  // Always the end-of-sequence token: an empty completion that stops, the token counted.
  auto eos = always_service(ByteTokenizer::kEos);
  r = run(*eos, greedy(eos->encode("x"), 5));
  EXPECT_EQ(r.text, "");
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.completion_tokens, 1);
  EXPECT_EQ(r.done_deltas, 1);
  // Always BOS, which may not be sampled: every logit left is 0 and greedy takes the lowest id,
  // byte 0.
  auto bos = always_service(ByteTokenizer::kBos);
  r = run(*bos, greedy(bos->encode("x"), 4));
  EXPECT_EQ(r.text, std::string(4, '\0'));
}

// In a batch of one, a request waiting behind a cancelled one gets the slot and completes as it
// would alone. The rigged model never ends a request by itself, and the context is far longer than
// the test waits (a context shift would resubmit the request behind the waiting one).
TEST(EngineServiceRigged, CancellingFreesTheSlot) {
  constexpr int64_t kContext = 1 << 16;
  auto single = always_service('A', 1, kContext);
  constexpr int64_t kEndless = kContext;
  std::promise<void> first_delta;
  std::atomic<bool> behind_done{false}, saw_both{false};
  int deltas = 0;
  auto cancelled = std::async(std::launch::async, [&] {
    single->generate(greedy(single->encode("x"), kEndless), [&](const GenerationDelta& d) {
      EXPECT_FALSE(d.done);
      if (++deltas == 1) first_delta.set_value();
      // Hold on until the second request waits in the engine behind this one, then hang up.
      while (!behind_done && single->requests_in_engine() < 2)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      saw_both = !behind_done;
      return false;
    });
  });
  first_delta.get_future().wait();
  const GenerationRequest behind = greedy(single->encode("behind"), 12);
  const Result r = run(*single, behind);
  behind_done = true;
  cancelled.get();
  EXPECT_EQ(deltas, 1);
  EXPECT_TRUE(saw_both);
  EXPECT_EQ(r.text, std::string(12, 'A'));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_LT(single->stats().generated, kContext - 2);  // the cancelled request was never shifted
  for (int i = 0; i < 5000 && single->requests_in_engine() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(single->requests_in_engine(), 0);
}

}  // namespace
}  // namespace frugal
