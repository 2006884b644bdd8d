// The OpenAI-compatible HTTP server in-process on an ephemeral loopback port, talked to with raw
// HTTP: every endpoint and its JSON shape; streaming framing ("data: {...}\n\n" events ending in
// "data: [DONE]\n\n") and that the streamed deltas add up to the non-streamed text; usage counts;
// max_tokens, stop strings and sampling settings reaching the service; 4xx OpenAI error objects
// for malformed JSON, wrong types, unsupported parameters (n > 1, ...), unknown models and paths,
// oversized bodies (413) and bad API keys (401); admission control (429 beyond the queue, FIFO
// queueing, queue timeout); a client hanging up cancels its generation; request timeouts; service
// failures; and the same protocol over a real checkpoint (EngineService). Without cpp-httplib in
// the build, `frugal serve` must say so.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <future>
#include <thread>

#include "infer/server/http_server.h"
#include "infer/engine_service.h"
#include "infer/http_test_client.h"
#include "infer/serve_test_util.h"
#include "test_util.h"

namespace frugal {
namespace {

using nlohmann::json;
using namespace ::frugal::testing;

#if FRUGAL_HAVE_HTTPLIB

// A hung-up client must not kill the test process (the server writes without MSG_NOSIGNAL).
const bool kSigpipeIgnored = [] {
  std::signal(SIGPIPE, SIG_IGN);
  return true;
}();

json parse_json(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON: " << text.substr(0, 300);
  return j;
}

// An OpenAI error object with the status, param and code expected ("" = null).
void expect_error(const HttpResponse& r, int status, const std::string& param = "",
                  const std::string& code = "", const std::string& what = "") {
  SCOPED_TRACE(what);
  ASSERT_EQ(r.status, status) << r.raw.substr(0, 500) << r.error;
  EXPECT_NE(r.header("content-type").find("application/json"), std::string::npos);
  json body = parse_json(r.body);
  ASSERT_TRUE(body.is_object() && body.contains("error")) << r.body;
  const json& e = body["error"];
  ASSERT_TRUE(e["message"].is_string());
  EXPECT_FALSE(e["message"].get<std::string>().empty());
  EXPECT_TRUE(e["type"].is_string());
  if (param.empty()) EXPECT_TRUE(e["param"].is_null()) << r.body;
  else EXPECT_EQ(e["param"], param) << r.body;
  if (code.empty()) EXPECT_TRUE(e["code"].is_null()) << r.body;
  else EXPECT_EQ(e["code"], code) << r.body;
}

// The JSON payloads of a stream, after checking its framing and content type.
std::vector<json> stream_chunks(const HttpResponse& r) {
  EXPECT_EQ(r.status, 200) << r.raw.substr(0, 500);
  EXPECT_EQ(r.header("content-type"), "text/event-stream");
  bool framing_ok = false;
  std::vector<std::string> events = sse_events(r.body, framing_ok);
  EXPECT_TRUE(framing_ok) << r.body;
  std::vector<json> chunks;
  for (size_t i = 0; i + 1 < events.size(); ++i) chunks.push_back(parse_json(events[i]));
  return chunks;
}

class ServerTest : public ::testing::Test {
 protected:
  static ServerOptions options() {
    ServerOptions o;
    o.port = 0;
    o.max_concurrent = 2;
    o.max_queue = 4;
    o.queue_timeout_s = 10;
    o.max_body_bytes = 64 * 1024;
    o.limits.max_prompt_tokens = 64;
    o.limits.max_tokens = 100;
    o.read_timeout_s = 5;
    o.write_timeout_s = 5;
    return o;
  }
  void start(ServerOptions o = options(), GenerationService* service = nullptr) {
    server_ = std::make_unique<HttpServer>(service ? *service : fake_, o);
    port_ = server_->bind();
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_->run(); });
  }
  void TearDown() override {
    fake_.release();
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
  }
  HttpResponse post(const std::string& path, const json& body,
                    const std::vector<std::string>& headers = {}) {
    return http_post(port_, path, body.dump(), headers);
  }
  static json chat_body(const std::string& content, json extra = json::object()) {
    json body = {{"model", "fake-model"}, {"messages", {{{"role", "user"}, {"content", content}}}}};
    body.update(extra);
    return body;
  }
  static json completion_body(const std::string& prompt, json extra = json::object()) {
    json body = {{"model", "fake-model"}, {"prompt", prompt}};
    body.update(extra);
    return body;
  }

  FakeService fake_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  int port_ = 0;
};

TEST_F(ServerTest, HealthAndModels) {
  start();
  HttpResponse health = http_get(port_, "/health");
  ASSERT_EQ(health.status, 200) << health.error;
  json h = parse_json(health.body);
  EXPECT_EQ(h["status"], "ok");
  EXPECT_EQ(h["model"], "fake-model");
  EXPECT_EQ(h["active"], 0);

  HttpResponse models = http_get(port_, "/v1/models");
  ASSERT_EQ(models.status, 200);
  json m = parse_json(models.body);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "fake-model");
  EXPECT_EQ(m["data"][0]["object"], "model");
  EXPECT_TRUE(m["data"][0]["created"].is_number_integer());
  EXPECT_EQ(m["data"][0]["owned_by"], "frugal");

  HttpResponse one = http_get(port_, "/v1/models/fake-model");
  ASSERT_EQ(one.status, 200);
  EXPECT_EQ(parse_json(one.body)["id"], "fake-model");
  expect_error(http_get(port_, "/v1/models/gpt-4"), 404, "model", "model_not_found");
  expect_error(http_get(port_, "/v1/nothing"), 404, "", "", "unknown path");
  expect_error(http_get(port_, "/v1/chat/completions"), 404, "", "", "GET on a POST route");
}

TEST_F(ServerTest, CompletionNonStreaming) {
  start();
  HttpResponse r = post("/v1/completions", completion_body("abc", {{"max_tokens", 5}}));
  ASSERT_EQ(r.status, 200) << r.body;
  json j = parse_json(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(j["model"], "fake-model");
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["text"], "Hello");
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_EQ(j["usage"]["total_tokens"], 8);
  // Completions default to 16 tokens.
  r = post("/v1/completions", completion_body("abc"));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(fake_.last_request().max_tokens, 16);
  EXPECT_EQ(parse_json(r.body)["choices"][0]["text"], std::string(kFakeReply).substr(0, 16));
  // A prompt given as token ids reaches the service as is.
  r = post("/v1/completions", {{"model", "fake-model"}, {"prompt", {104, 105}}, {"max_tokens", 1}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.last_request().prompt, (std::vector<int32_t>{104, 105}));
}

TEST_F(ServerTest, ChatNonStreamingFinishesWithStopAtEndOfReply) {
  start();
  HttpResponse r = post("/v1/chat/completions", chat_body("hi", {{"max_tokens", 100}}));
  ASSERT_EQ(r.status, 200) << r.body;
  json j = parse_json(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], kFakeReply);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const int64_t reply_tokens = static_cast<int64_t>(std::string(kFakeReply).size()) + 1;  // + EOS
  EXPECT_EQ(j["usage"]["completion_tokens"], reply_tokens);
  EXPECT_EQ(j["usage"]["prompt_tokens"], std::string("user:hi\n").size());
  // Chat requests without max_tokens get the server's limit, and the chat format's stop strings.
  ASSERT_EQ(post("/v1/chat/completions", chat_body("hi")).status, 200);
  EXPECT_EQ(fake_.last_request().max_tokens, 100);
  EXPECT_EQ(fake_.last_request().stop, (std::vector<std::string>{"<turn>"}));
  // Text parts, a system and a developer message.
  json body = {{"model", "fake-model"},
               {"messages",
                {{{"role", "system"}, {"content", "be brief"}},
                 {{"role", "developer"}, {"content", "really"}},
                 {{"role", "user"},
                  {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
               {"max_completion_tokens", 3}};
  r = post("/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const GenerationRequest got = fake_.last_request();
  EXPECT_EQ(std::string(got.prompt.begin(), got.prompt.end()),
            "system:be brief\nsystem:really\nuser:a\nb\n");
  EXPECT_EQ(got.max_tokens, 3);
}

TEST_F(ServerTest, ChatStreamingFramingAndUsage) {
  start();
  const HttpResponse full = post("/v1/chat/completions", chat_body("hi", {{"max_tokens", 12}}));
  const std::string expected = parse_json(full.body)["choices"][0]["message"]["content"];
  for (bool include_usage : {false, true}) {
    SCOPED_TRACE(include_usage);
    json extra = {{"max_tokens", 12}, {"stream", true}};
    if (include_usage) extra["stream_options"] = {{"include_usage", true}};
    HttpResponse r = post("/v1/chat/completions", chat_body("hi", extra));
    std::vector<json> chunks = stream_chunks(r);
    ASSERT_GE(chunks.size(), 3u);
    // Opening chunk: the role.
    EXPECT_EQ(chunks[0]["object"], "chat.completion.chunk");
    EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    const std::string id = chunks[0]["id"];
    std::string text;
    size_t i = 1;
    for (; i < chunks.size() && chunks[i]["choices"].size() == 1 &&
           chunks[i]["choices"][0]["finish_reason"].is_null();
         ++i) {
      EXPECT_EQ(chunks[i]["id"], id);
      text += chunks[i]["choices"][0]["delta"]["content"].get<std::string>();
    }
    EXPECT_EQ(text, expected);
    ASSERT_LT(i, chunks.size());
    EXPECT_EQ(chunks[i]["choices"][0]["finish_reason"], "length");
    EXPECT_TRUE(chunks[i]["choices"][0]["delta"].empty());
    ++i;
    if (include_usage) {
      ASSERT_EQ(i + 1, chunks.size());
      EXPECT_TRUE(chunks[i]["choices"].empty());
      EXPECT_EQ(chunks[i]["usage"]["completion_tokens"], 12);
      EXPECT_EQ(chunks[i]["usage"]["prompt_tokens"], 8);
      EXPECT_EQ(chunks[i]["usage"]["total_tokens"], 20);
    } else {
      EXPECT_EQ(i, chunks.size());
    }
  }
}

TEST_F(ServerTest, CompletionStreaming) {
  start();
  HttpResponse r = post("/v1/completions", completion_body("x", {{"max_tokens", 100}, {"stream", true}}));
  std::vector<json> chunks = stream_chunks(r);
  ASSERT_GE(chunks.size(), 2u);
  std::string text;
  for (size_t i = 0; i + 1 < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i]["object"], "text_completion");
    EXPECT_TRUE(chunks[i]["choices"][0]["finish_reason"].is_null());
    text += chunks[i]["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, kFakeReply);
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "stop");
}

TEST_F(ServerTest, StopStringsEndTheTextBeforeThem) {
  start();
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream);
    json body = completion_body("x", {{"max_tokens", 100}, {"stop", {"zzz", "d! T"}}, {"stream", stream}});
    HttpResponse r = post("/v1/completions", body);
    std::string text, finish;
    if (stream) {
      for (const json& c : stream_chunks(r)) {
        text += c["choices"][0]["text"].get<std::string>();
        if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
      }
    } else {
      ASSERT_EQ(r.status, 200) << r.body;
      json j = parse_json(r.body);
      text = j["choices"][0]["text"];
      finish = j["choices"][0]["finish_reason"];
      EXPECT_EQ(j["usage"]["completion_tokens"], 15);  // the token completing "d! T" counts
    }
    EXPECT_EQ(text, "Hello, worl");
    EXPECT_EQ(finish, "stop");
  }
  // A single stop string.
  HttpResponse r = post("/v1/completions", completion_body("x", {{"stop", ","}}));
  EXPECT_EQ(parse_json(r.body)["choices"][0]["text"], "Hello");
}

TEST_F(ServerTest, SamplingSettingsReachTheService) {
  start();
  ASSERT_EQ(post("/v1/completions", completion_body("x", {{"temperature", 0.5}, {"top_p", 0.9},
                                                          {"top_k", 7}, {"seed", 42}, {"max_tokens", 1}}))
                .status,
            200);
  GenerationRequest got = fake_.last_request();
  EXPECT_EQ(got.temperature, 0.5);
  EXPECT_EQ(got.top_p, 0.9);
  EXPECT_EQ(got.top_k, 7);
  EXPECT_EQ(got.seed, 42u);
  // top_p = 0: only the most probable token.
  ASSERT_EQ(post("/v1/completions", completion_body("x", {{"top_p", 0}, {"max_tokens", 1}})).status, 200);
  got = fake_.last_request();
  EXPECT_EQ(got.top_k, 1);
  EXPECT_EQ(got.top_p, 1.0);
  // Without a seed, requests get different ones.
  post("/v1/completions", completion_body("x", {{"max_tokens", 1}}));
  const uint64_t first = fake_.last_request().seed;
  post("/v1/completions", completion_body("x", {{"max_tokens", 1}}));
  EXPECT_NE(fake_.last_request().seed, first);
}

TEST_F(ServerTest, InvalidRequestsGet4xxErrorObjects) {
  start();
  struct Case {
    std::string path, body;
    int status;
    std::string param, code;
  };
  const std::string chat = "/v1/chat/completions", completions = "/v1/completions";
  auto c = [](json extra) { return chat_body("hi", extra).dump(); };
  const std::string long_prompt(100, 'a');  // 100 tokens > max_prompt_tokens = 64
  std::vector<Case> cases = {
      {chat, "{not json", 400, "", ""},
      {chat, "", 400, "", ""},
      {chat, "[1, 2]", 400, "", ""},
      {chat, std::string(50000, '['), 400, "", ""},
      {chat, "{\"model\": \"fake-model\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}", 400, "", ""},
      {chat, R"({"messages": [{"role": "user", "content": "hi"}]})", 400, "model", ""},
      {chat, c({{"model", 5}}), 400, "model", ""},
      {chat, c({{"model", "gpt-4"}}), 404, "model", "model_not_found"},
      {chat, R"({"model": "fake-model"})", 400, "messages", ""},
      {chat, c({{"messages", json::array()}}), 400, "messages", ""},
      {chat, c({{"messages", "hi"}}), 400, "messages", ""},
      {chat, c({{"messages", {{{"role", "tool"}, {"content", "x"}}}}}), 400, "messages[0].role", ""},
      {chat, c({{"messages", {{{"content", "x"}}}}}), 400, "messages[0].role", ""},
      {chat, c({{"messages", {{{"role", "user"}, {"content", 5}}}}}), 400, "messages[0].content", ""},
      {chat, c({{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}}), 400,
       "messages[0].content", ""},
      {chat, c({{"max_tokens", "5"}}), 400, "max_tokens", ""},
      {chat, c({{"max_tokens", 1.5}}), 400, "max_tokens", ""},
      {chat, c({{"max_tokens", 0}}), 400, "max_tokens", ""},
      {chat, c({{"max_tokens", 101}}), 400, "max_tokens", ""},
      {chat, c({{"max_completion_tokens", 1000000}}), 400, "max_completion_tokens", ""},
      {chat, c({{"temperature", 3}}), 400, "temperature", ""},
      {chat, c({{"temperature", "hot"}}), 400, "temperature", ""},
      {chat, c({{"top_p", 1.5}}), 400, "top_p", ""},
      {chat, c({{"top_k", -2}}), 400, "top_k", ""},
      {chat, c({{"seed", "s"}}), 400, "seed", ""},
      {chat, c({{"stream", "yes"}}), 400, "stream", ""},
      {chat, c({{"stream_options", {{"include_usage", true}}}}), 400, "stream_options", ""},
      {chat, c({{"n", 2}}), 400, "n", "unsupported_parameter"},
      {chat, c({{"logprobs", true}}), 400, "logprobs", "unsupported_parameter"},
      {chat, c({{"tools", {{{"type", "function"}}}}}), 400, "tools", "unsupported_parameter"},
      {chat, c({{"presence_penalty", 0.5}}), 400, "presence_penalty", "unsupported_parameter"},
      {chat, c({{"logit_bias", {{"5", 1}}}}), 400, "logit_bias", "unsupported_parameter"},
      {chat, c({{"response_format", {{"type", "json_object"}}}}), 400, "response_format",
       "unsupported_parameter"},
      {chat, c({{"stop", 5}}), 400, "stop", ""},
      {chat, c({{"stop", {"a", "b", "c", "d", "e"}}}), 400, "stop", ""},
      {chat, c({{"stop", {""}}}), 400, "stop", ""},
      {chat, c({{"stop", {std::string(300, 's')}}}), 400, "stop", ""},
      {chat, chat_body(long_prompt).dump(), 400, "messages", "context_length_exceeded"},
      {completions, R"({"model": "fake-model"})", 400, "prompt", ""},
      {completions, completion_body("x", {{"prompt", {{"a", 1}}}}).dump(), 400, "prompt", ""},
      {completions, completion_body("x", {{"prompt", {"a", "b"}}}).dump(), 400, "prompt", ""},
      {completions, completion_body("x", {{"prompt", json::array()}}).dump(), 400, "prompt", ""},
      {completions, completion_body("x", {{"prompt", {5, 300}}}).dump(), 400, "prompt", ""},
      {completions, completion_body("x", {{"prompt", {5, -1}}}).dump(), 400, "prompt", ""},
      {completions, completion_body(long_prompt).dump(), 400, "prompt", "context_length_exceeded"},
      {completions, completion_body("x", {{"echo", true}}).dump(), 400, "echo", "unsupported_parameter"},
      {completions, completion_body("x", {{"best_of", 3}}).dump(), 400, "best_of", "unsupported_parameter"},
      {completions, completion_body("x", {{"suffix", "y"}}).dump(), 400, "suffix", "unsupported_parameter"},
  };
  for (const Case& k : cases)
    expect_error(http_post(port_, k.path, k.body), k.status, k.param, k.code,
                 k.path + " " + k.body.substr(0, 120));
  // None of them reached the service.
  EXPECT_EQ(fake_.started(), 0);
  // Null means "default".
  EXPECT_EQ(post(chat, chat_body("hi", {{"max_tokens", nullptr}, {"temperature", nullptr},
                                         {"stop", nullptr}, {"n", 1}, {"tools", json::array()}}))
                .status,
            200);
}

TEST_F(ServerTest, MalformedHttpAndOversizedBodies) {
  start();
  HttpResponse garbage = send_raw(port_, "GARBAGE\r\n\r\n");
  expect_error(garbage, 400, "", "", "garbage request line");
  // A body over max_body_bytes (64 KiB), sent in full.
  const std::string big = completion_body(std::string(100 * 1024, 'a')).dump();
  expect_error(http_post(port_, "/v1/completions", big), 413, "", "request_too_large", "body sent");
  // Announced with Expect: 100-continue: refused before the body is sent.
  const std::string head = fmt::format(
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
      "application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
      size_t{10} << 30);
  expect_error(send_raw(port_, head), 413, "", "request_too_large", "100-continue");
  // A chunked body over the limit.
  std::string chunked =
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: "
      "chunked\r\n\r\n";
  for (int i = 0; i < 20; ++i) chunked += fmt::format("1000\r\n{}\r\n", std::string(4096, ' '));
  chunked += "0\r\n\r\n";
  expect_error(send_raw(port_, chunked), 413, "", "request_too_large", "chunked");
  // The server still works.
  EXPECT_EQ(post("/v1/completions", completion_body("x", {{"max_tokens", 2}})).status, 200);
}

// The body is JSON whatever the Content-Type says: curl -d sends form encoding (which httplib
// would cap at 8 KiB), and a chunked body is read like any other.
TEST_F(ServerTest, BodyIsJsonWhateverItsEncoding) {
  start();
  const std::string body = completion_body(std::string(40, 'p') + std::string(20000, ' '),
                                           {{"max_tokens", 2}}).dump();
  const std::string form = fmt::format(
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
      "application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{}",
      body.size(), body);
  HttpResponse r = send_raw(port_, form);
  // (20040 prompt tokens exceed the 64-token limit: parsed as JSON, then refused as too long.)
  expect_error(r, 400, "prompt", "context_length_exceeded", "form-encoded JSON");
  const std::string small = completion_body("pq", {{"max_tokens", 2}}).dump();
  const std::string chunked = fmt::format(
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: "
      "chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
      5, small.substr(0, 5), small.size() - 5, small.substr(5));
  r = send_raw(port_, chunked);
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(fake_.last_request().prompt, (std::vector<int32_t>{'p', 'q'}));
  expect_error(http_post(port_, "/v1/completions", small, {"Content-Type: multipart/form-data; boundary=x"}),
               400, "", "", "multipart");
}

TEST_F(ServerTest, ApiKey) {
  ServerOptions o = options();
  o.api_key = "sekrit-key";
  start(o);
  expect_error(http_get(port_, "/v1/models"), 401, "", "invalid_api_key", "no key");
  expect_error(http_get(port_, "/v1/models", {"Authorization: Bearer wrong"}), 401, "",
               "invalid_api_key", "wrong key");
  expect_error(http_get(port_, "/v1/models", {"Authorization: sekrit-key"}), 401, "",
               "invalid_api_key", "no Bearer");
  expect_error(post("/v1/chat/completions", chat_body("hi")), 401, "", "invalid_api_key", "chat");
  EXPECT_EQ(fake_.started(), 0);
  EXPECT_EQ(http_get(port_, "/v1/models", {"Authorization: Bearer sekrit-key"}).status, 200);
  EXPECT_EQ(post("/v1/chat/completions", chat_body("hi", {{"max_tokens", 2}}),
                 {"Authorization: Bearer sekrit-key"})
                .status,
            200);
  EXPECT_EQ(http_get(port_, "/health").status, 200);  // health needs no key
}

TEST_F(ServerTest, BusyBeyondConcurrencyAndQueue) {
  ServerOptions o = options();
  o.max_concurrent = 1;
  o.max_queue = 0;
  start(o);
  fake_.hold();
  auto first = std::async(std::launch::async, [&] {
    return post("/v1/completions", completion_body("one", {{"max_tokens", 3}}));
  });
  ASSERT_TRUE(fake_.wait_for([](FakeService& f) { return f.started() == 1; }));
  HttpResponse second = post("/v1/completions", completion_body("two", {{"max_tokens", 3}}));
  expect_error(second, 429, "", "rate_limit_exceeded");
  EXPECT_EQ(second.header("retry-after"), "1");
  fake_.release();
  HttpResponse r = first.get();
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(parse_json(r.body)["choices"][0]["text"], "Hel");
  EXPECT_EQ(fake_.started(), 1);
  EXPECT_EQ(server_->stats().busy, 1);
  // The slot is free again.
  EXPECT_EQ(post("/v1/completions", completion_body("three", {{"max_tokens", 1}})).status, 200);
}

TEST_F(ServerTest, QueuedRequestsRunInArrivalOrder) {
  ServerOptions o = options();
  o.max_concurrent = 1;
  o.max_queue = 2;
  start(o);
  fake_.hold();
  std::vector<std::future<HttpResponse>> pending;
  const std::vector<std::string> prompts = {"a", "b", "c"};
  for (size_t i = 0; i < prompts.size(); ++i) {
    pending.push_back(std::async(std::launch::async, [&, i] {
      return post("/v1/completions", completion_body(prompts[i], {{"max_tokens", 2}}));
    }));
    // Each request is in (generating or queued) before the next is sent.
    for (int spin = 0; spin < 1000; ++spin) {
      const ServerStats s = server_->stats();
      if (s.active + s.waiting == static_cast<int64_t>(i) + 1 && fake_.started() == 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  EXPECT_EQ(server_->stats().waiting, 2);
  // The queue is full: refused at once.
  expect_error(post("/v1/completions", completion_body("d", {{"max_tokens", 2}})), 429, "",
               "rate_limit_exceeded");
  fake_.release();
  for (auto& f : pending) EXPECT_EQ(f.get().status, 200);
  EXPECT_EQ(fake_.started_order(), prompts);
}

TEST_F(ServerTest, QueueTimeout) {
  ServerOptions o = options();
  o.max_concurrent = 1;
  o.max_queue = 1;
  o.queue_timeout_s = 0.3;
  start(o);
  fake_.hold();
  auto first = std::async(std::launch::async, [&] {
    return post("/v1/completions", completion_body("one", {{"max_tokens", 1}}));
  });
  ASSERT_TRUE(fake_.wait_for([](FakeService& f) { return f.started() == 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  expect_error(post("/v1/completions", completion_body("two", {{"max_tokens", 1}})), 429, "",
               "rate_limit_exceeded");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(250));
  fake_.release();
  EXPECT_EQ(first.get().status, 200);
  EXPECT_EQ(server_->stats().waiting, 0);
}

TEST_F(ServerTest, ClientHangingUpCancelsItsGeneration) {
  start();
  fake_.set_endless(true);
  fake_.set_token_delay_ms(2);
  const std::string request = http_message(
      "POST", "/v1/chat/completions", chat_body("hi", {{"max_tokens", 100}, {"stream", true}}).dump());
  const std::string got = read_then_hang_up(port_, request, 600);
  EXPECT_NE(got.find("data: {"), std::string::npos) << got;
  // The generation notices within a few tokens (the write fails) and frees its slot.
  ASSERT_TRUE(fake_.wait_for([](FakeService& f) { return f.cancelled() == 1; }));
  for (int spin = 0; spin < 200 && server_->stats().active != 0; ++spin)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(server_->stats().active, 0);
  EXPECT_EQ(server_->stats().cancelled, 1);
  EXPECT_EQ(fake_.finished(), 0);
}

TEST_F(ServerTest, RequestTimeout) {
  ServerOptions o = options();
  o.request_timeout_s = 0.2;
  start(o);
  fake_.set_endless(true);
  fake_.set_token_delay_ms(5);
  expect_error(post("/v1/completions", completion_body("x", {{"max_tokens", 100}})), 504, "",
               "request_timeout");
  // Streaming: the headers are out, so the stream ends with an error event and [DONE].
  HttpResponse r = post("/v1/completions", completion_body("x", {{"max_tokens", 100}, {"stream", true}}));
  std::vector<json> chunks = stream_chunks(r);
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.back()["error"]["code"], "request_timeout");
  EXPECT_EQ(server_->stats().timed_out, 2);
}

TEST_F(ServerTest, ServiceFailureIs500) {
  start();
  expect_error(post("/v1/completions", completion_body("boom")), 500);
  HttpResponse r = post("/v1/completions", completion_body("boom", {{"stream", true}}));
  std::vector<json> chunks = stream_chunks(r);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0]["error"]["type"], "server_error");
  EXPECT_EQ(server_->stats().failed, 2);
  EXPECT_EQ(post("/v1/completions", completion_body("fine", {{"max_tokens", 1}})).status, 200);
}

TEST_F(ServerTest, StopCancelsRunningGenerations) {
  ServerOptions o = options();
  o.limits.max_tokens = 100000;  // 200 s of tokens at 2 ms each
  start(o);
  fake_.set_endless(true);
  fake_.set_token_delay_ms(2);
  auto stream = std::async(std::launch::async, [&] {
    return post("/v1/completions", completion_body("x", {{"max_tokens", 100000}, {"stream", true}}));
  });
  ASSERT_TRUE(fake_.wait_for([](FakeService& f) { return f.started() == 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  server_->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  HttpResponse r = stream.get();
  std::vector<json> chunks = stream_chunks(r);
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.back()["error"]["type"], "server_error");  // "shutting down"
}

// The protocol over a real checkpoint: the server's answers are EngineService's.
TEST_F(ServerTest, EngineServiceEndToEnd) {
  TempDir dir("serve");
  make_test_checkpoint(dir.path("run"));
  auto service = EngineService::load(dir.path("run"), "tiny", {.threads = 1});
  ASSERT_EQ(service->model_name(), "tiny");
  start(options(), service.get());
  // What the service generates directly, greedily.
  GenerationRequest direct;
  direct.prompt = service->encode_chat({{"user", "hello"}});
  direct.max_tokens = 10;
  direct.temperature = 0;
  std::string expected;
  int64_t completion_tokens = 0;
  std::string finish;
  service->generate(direct, [&](const GenerationDelta& d) {
    expected += d.text;
    completion_tokens = d.completion_tokens;
    if (d.done) finish = d.finish_reason;
    return true;
  });
  json body = {{"model", "tiny"},
               {"messages", {{{"role", "user"}, {"content", "hello"}}}},
               {"max_tokens", 10},
               {"temperature", 0}};
  HttpResponse r = post("/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  json j = parse_json(r.body);
  EXPECT_EQ(j["choices"][0]["message"]["content"], expected);
  EXPECT_EQ(j["choices"][0]["finish_reason"], finish);
  EXPECT_EQ(j["usage"]["prompt_tokens"], direct.prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], completion_tokens);
  body["stream"] = true;
  std::string streamed;
  for (const json& c : stream_chunks(post("/v1/chat/completions", body)))
    if (c["choices"].size() == 1 && c["choices"][0]["delta"].contains("content"))
      streamed += c["choices"][0]["delta"]["content"].get<std::string>();
  EXPECT_EQ(streamed, expected);
  // The byte tokenizer's prompt limit is the checkpoint's context (32 tokens) when so set.
  EXPECT_EQ(post("/v1/completions", {{"model", "tiny"}, {"prompt", "hi"}, {"max_tokens", 3}}).status, 200);
  server_->stop();
}

#else  // no cpp-httplib

TEST(Server, WithoutTheHttpLibraryTheServerSaysSo) {
  EXPECT_FALSE(http_server_available());
  FakeService fake;
  const std::string message = error_message([&] { HttpServer server(fake, ServerOptions{}); });
  EXPECT_NE(message.find("cpp-httplib"), std::string::npos) << message;
}

#endif

}  // namespace
}  // namespace frugal
