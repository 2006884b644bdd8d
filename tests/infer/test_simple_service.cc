// SimpleService over tiny checkpoints: greedy generation is deterministic and the deltas add up;
// max_tokens ends with "length"; a stop string cut from a greedy completion ends the text right
// before its first occurrence; a model rigged to always prefer one token shows the end-of-sequence
// token ending with "stop" (counted, not shown) and masked special tokens never being sampled;
// cancelling stops generation; concurrent requests give the sequential results; invalid requests
// throw; the chat formats (DeepSeek special tokens with a tokenizer.json, plain text with bytes)
// are exactly as documented.
#include <gtest/gtest.h>

#include <future>

#include "data/byte_tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "infer/serve_test_util.h"
#include "infer/simple_service.h"
#include "test_util.h"

namespace frugal {
namespace {

using namespace ::frugal::testing;

const std::string kDeepSeekTokenizer =
    std::string(FRUGAL_SOURCE_DIR) + "/tests/golden/tokenizers/en_deepseek_8k.tokenizer.json";

struct Result {
  std::string text;  // all deltas
  std::vector<std::string> pieces;
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

class SimpleServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("simple_service");
    make_test_checkpoint(dir_->path("bytes"));
    service_ = SimpleService::load(dir_->path("bytes"), "", 1).release();
  }
  static void TearDownTestSuite() {
    delete service_;
    delete dir_;
  }
  static TempDir* dir_;
  static SimpleService* service_;
};

TempDir* SimpleServiceTest::dir_ = nullptr;
SimpleService* SimpleServiceTest::service_ = nullptr;

TEST_F(SimpleServiceTest, LoadNamesTheModelAfterTheDirectory) {
  EXPECT_EQ(service_->model_name(), "bytes");
  const std::string checkpoint = resolve_checkpoint(dir_->path("bytes"));
  EXPECT_NE(checkpoint, dir_->path("bytes"));
  EXPECT_EQ(SimpleService::load(checkpoint + "/")->model_name(), "bytes");
  EXPECT_EQ(service_->context_length(), 32);
  EXPECT_EQ(service_->vocab_size(), ByteTokenizer::kVocabSize);
  EXPECT_FALSE(service_->has_chat_tokens());
  const std::string missing = dir_->path("nope");
  EXPECT_NE(error_message([&] { SimpleService::load(missing); }).find(missing), std::string::npos);
}

TEST_F(SimpleServiceTest, GreedyIsDeterministicAndDeltasAddUp) {
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

TEST_F(SimpleServiceTest, StopStringEndsTheTextBeforeItsFirstOccurrence) {
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
}

TEST_F(SimpleServiceTest, CancellingStopsGeneration) {
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

TEST_F(SimpleServiceTest, ConcurrentRequestsGiveSequentialResults) {
  std::vector<GenerationRequest> requests;
  for (const char* prompt : {"one", "two two", "three"}) requests.push_back(greedy(service_->encode(prompt), 12));
  std::vector<Result> sequential;
  for (const auto& r : requests) sequential.push_back(run(*service_, r));
  std::vector<std::future<Result>> futures;
  for (const auto& r : requests)
    futures.push_back(std::async(std::launch::async, [&, r] { return run(*service_, r); }));
  for (size_t i = 0; i < futures.size(); ++i) {
    const Result concurrent = futures[i].get();
    EXPECT_EQ(concurrent.text, sequential[i].text) << i;
    EXPECT_EQ(concurrent.completion_tokens, sequential[i].completion_tokens) << i;
  }
}

TEST_F(SimpleServiceTest, InvalidRequestsThrow) {
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

TEST_F(SimpleServiceTest, PlainTextChatFormatWithBytes) {
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

TEST(SimpleServiceChat, DeepSeekFormatWithSpecialTokens) {
  TempDir dir("simple_service_bpe");
  make_test_checkpoint(dir.path("bpe"), {"model.vocab_size=8192"}, kDeepSeekTokenizer);
  auto service = SimpleService::load(dir.path("bpe"), "bpe-model", 1);
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
std::unique_ptr<SimpleService> always_service(int32_t token) {
  const Config config = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/tiny.toml",
                                    {"data.train_path=unused.txt", "train.seq_len=32"});
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
  return std::make_unique<SimpleService>(std::move(model), std::nullopt, "always", 32, 1);
}

TEST(SimpleServiceRigged, EndOfSequenceAndMaxTokens) {
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

}  // namespace
}  // namespace frugal
