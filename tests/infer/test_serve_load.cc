// Load test: `frugal serve` runs as its own process on a loopback port; this process fires 12
// concurrent clients at it for two bounded rounds (each at most 3 s and 60 requests per client),
// mixing valid requests (streaming chat, streaming and plain completions) with malformed JSON,
// wrong types, oversized bodies (sent, and announced with Expect: 100-continue), unknown paths,
// garbage bytes, requests cut off mid-head or mid-body, and clients hanging up mid-stream.
// Checks: the server never crashes; every valid request is answered in full (200, a well-framed
// stream ending in a finish_reason and [DONE], usage within max_tokens); every bad request gets
// its 4xx OpenAI error object; the server's resident memory does not grow from the first round
// to the second (no leak) and stays bounded; afterwards nothing is left running or queued; and
// SIGTERM stops it cleanly (exit 0).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "infer/http_test_client.h"
#include "infer/serve_test_util.h"
#include "infer/server_process.h"
#include "test_util.h"

namespace frugal {
namespace {

using nlohmann::json;
using namespace ::frugal::testing;

#if FRUGAL_HAVE_HTTPLIB

constexpr int kClients = 12;
constexpr int kMaxRequestsPerClient = 60;
constexpr auto kRoundTime = std::chrono::seconds(3);
constexpr int kMaxTokens = 24;
constexpr size_t kMaxBody = 64 * 1024;

// Resident set size (VmRSS) or peak (VmHWM) of a process, in KiB; -1 if unreadable.
int64_t memory_kib(pid_t pid, const std::string& field) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::atoll(line.c_str() + field.size() + 1);
  return -1;
}

struct Tally {
  std::mutex mutex;
  std::vector<std::string> failures;
  std::atomic<int> valid{0}, streamed{0}, rejected{0}, abandoned{0};
  void fail(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex);
    failures.push_back(what);
  }
};

// Checks a valid request's answer: a stream (chat or completion) or a plain completion.
void check_valid(const HttpResponse& r, bool stream, bool chat, int max_tokens, Tally& tally) {
  if (r.status != 200) {
    tally.fail(fmt::format("valid request got {} {} {}", r.status, r.error, r.body.substr(0, 200)));
    return;
  }
  if (!stream) {
    json j = json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j["choices"][0]["finish_reason"].is_string() ||
        j["usage"]["completion_tokens"].get<int>() > max_tokens)
      tally.fail("bad completion: " + r.body.substr(0, 200));
    ++tally.valid;
    return;
  }
  bool framing_ok = false;
  std::vector<std::string> events = sse_events(r.body, framing_ok);
  if (!framing_ok) {
    tally.fail("bad stream framing: " + r.body.substr(0, 300));
    return;
  }
  std::string finish;
  int64_t usage_tokens = -1;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json c = json::parse(events[i], nullptr, false);
    if (c.is_discarded() || c.contains("error")) {
      tally.fail("bad stream event: " + events[i].substr(0, 200));
      return;
    }
    if (c["choices"].size() == 1 && c["choices"][0]["finish_reason"].is_string())
      finish = c["choices"][0]["finish_reason"];
    if (c.contains("usage")) usage_tokens = c["usage"]["completion_tokens"];
    if (c["object"] != (chat ? "chat.completion.chunk" : "text_completion"))
      tally.fail("wrong object: " + events[i].substr(0, 200));
  }
  if (finish != "stop" && finish != "length") tally.fail("stream without finish_reason");
  if (usage_tokens < 1 || usage_tokens > max_tokens)
    tally.fail(fmt::format("stream usage {} outside 1..{}", usage_tokens, max_tokens));
  ++tally.valid;
  ++tally.streamed;
}

void expect_status(const HttpResponse& r, int status, const std::string& what, Tally& tally) {
  json j = json::parse(r.body, nullptr, false);
  if (r.status != status || j.is_discarded() || !j.contains("error") ||
      !j["error"]["message"].is_string())
    tally.fail(fmt::format("{}: expected {} with an error object, got {} {} {}", what, status,
                           r.status, r.error, r.body.substr(0, 200)));
  else
    ++tally.rejected;
}

// One client: requests of random kinds until the round's time or request budget runs out.
void client(int port, uint32_t seed, std::chrono::steady_clock::time_point until, Tally& tally) {
  std::mt19937 rng(seed);
  const std::vector<std::string> words = {"the", "cat", "sat", "on", "a", "mat", "dog", "ran"};
  for (int i = 0; i < kMaxRequestsPerClient && std::chrono::steady_clock::now() < until; ++i) {
    std::string text;
    for (int w = 1 + static_cast<int>(rng() % 5); w > 0; --w) text += words[rng() % words.size()] + " ";
    const int max_tokens = 1 + static_cast<int>(rng() % kMaxTokens);
    const double temperature = (rng() % 3) * 0.5;
    const int kind = static_cast<int>(rng() % 14);
    if (kind <= 4) {  // streaming chat, usage included
      json body = {{"model", "run"}, {"messages", {{{"role", "user"}, {"content", text}}}},
                   {"max_tokens", max_tokens}, {"temperature", temperature}, {"stream", true},
                   {"stream_options", {{"include_usage", true}}}};
      if (rng() % 2) body["stop"] = {"\n\n"};
      check_valid(http_post(port, "/v1/chat/completions", body.dump()), true, true, max_tokens, tally);
    } else if (kind == 5) {  // streaming completion
      json body = {{"model", "run"}, {"prompt", text}, {"max_tokens", max_tokens}, {"stream", true},
                   {"stream_options", {{"include_usage", true}}}, {"seed", rng()}};
      check_valid(http_post(port, "/v1/completions", body.dump()), true, false, max_tokens, tally);
    } else if (kind == 6) {  // plain completion
      json body = {{"model", "run"}, {"prompt", text}, {"max_tokens", max_tokens}, {"temperature", temperature}};
      check_valid(http_post(port, "/v1/completions", body.dump()), false, false, max_tokens, tally);
    } else if (kind == 7) {
      expect_status(http_post(port, "/v1/chat/completions", "{\"model\": \"run\", \"messages\": [" + text),
                    400, "malformed JSON", tally);
    } else if (kind == 8) {
      json body = {{"model", "run"}, {"messages", {{{"role", "user"}, {"content", text}}}},
                   {"max_tokens", "many"}};
      expect_status(http_post(port, "/v1/chat/completions", body.dump()), 400, "wrong type", tally);
    } else if (kind == 9) {
      json body = {{"model", "run"}, {"prompt", std::string(kMaxBody + 1000, 'x')}};
      expect_status(http_post(port, "/v1/completions", body.dump()), 413, "oversized body", tally);
    } else if (kind == 10) {
      const std::string head =
          "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
          "999999999\r\nExpect: 100-continue\r\n\r\n";
      expect_status(send_raw(port, head), 413, "announced oversized body", tally);
    } else if (kind == 11) {
      expect_status(http_get(port, "/v1/unknown"), 404, "unknown path", tally);
    } else if (kind == 12) {  // cut off mid-head, mid-body, or garbage
      const std::string cut[] = {
          "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le",
          "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":",
          "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n"};
      const int fd = connect_loopback(port, 5000);
      if (fd >= 0) {
        send_all(fd, cut[rng() % 3]);
        ::close(fd);
      }
      ++tally.abandoned;
    } else {  // hang up mid-stream
      json body = {{"model", "run"}, {"messages", {{{"role", "user"}, {"content", text}}}},
                   {"max_tokens", kMaxTokens}, {"stream", true}};
      read_then_hang_up(port, http_message("POST", "/v1/chat/completions", body.dump()), 1 + rng() % 400);
      ++tally.abandoned;
    }
  }
}

void run_round(int port, uint32_t round, Tally& tally) {
  const auto until = std::chrono::steady_clock::now() + kRoundTime;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c)
    clients.emplace_back(client, port, round * 1000 + static_cast<uint32_t>(c), until, std::ref(tally));
  for (std::thread& t : clients) t.join();
}

TEST(ServeLoad, ConcurrentMixedTrafficFromAnotherProcess) {
  std::signal(SIGPIPE, SIG_IGN);
  TempDir dir("serve_load");
  make_test_checkpoint(dir.path("run"), {"train.seq_len=128"});  // every chat prompt fits
  ServerProcess server(
      {dir.path("run"), "--max-concurrent", "2", "--max-queue", "64", "--queue-timeout", "60",
       "--max-body-bytes", std::to_string(kMaxBody), "--max-tokens", std::to_string(kMaxTokens),
       "--read-timeout", "2", "--write-timeout", "5", "--threads", "1",
       "--speculative"},  // the engine's hardest path: MTP drafts, cancelled mid-stream too
      dir.path("serve.err"));
  ASSERT_GT(server.port(), 0) << read_bytes(dir.path("serve.err"));
  const int port = server.port();

  Tally first, second;
  run_round(port, 1, first);
  ASSERT_TRUE(server.alive()) << read_bytes(dir.path("serve.err"));
  const int64_t rss_first = memory_kib(server.pid(), "VmRSS");
  run_round(port, 2, second);
  ASSERT_TRUE(server.alive()) << read_bytes(dir.path("serve.err"));
  const int64_t rss_second = memory_kib(server.pid(), "VmRSS");
  const int64_t peak = memory_kib(server.pid(), "VmHWM");

  for (Tally* t : {&first, &second}) {
    for (size_t i = 0; i < std::min<size_t>(t->failures.size(), 10); ++i) ADD_FAILURE() << t->failures[i];
    EXPECT_TRUE(t->failures.empty()) << t->failures.size() << " failures";
    EXPECT_GE(t->streamed.load(), 20) << "too little streaming traffic to mean anything";
    EXPECT_GE(t->rejected.load(), 10);
    EXPECT_GE(t->abandoned.load(), 5);
  }
  std::printf("round 1: %d valid (%d streamed), %d rejected, %d abandoned; round 2: %d valid, "
              "%d rejected, %d abandoned; VmRSS %lld -> %lld KiB, peak %lld KiB\n",
              first.valid.load(), first.streamed.load(), first.rejected.load(),
              first.abandoned.load(), second.valid.load(), second.rejected.load(),
              second.abandoned.load(), static_cast<long long>(rss_first),
              static_cast<long long>(rss_second), static_cast<long long>(peak));
  // Memory: the second round (same traffic) must not grow the server (no leak per request), and
  // the whole run stays far below what unbounded buffering of the oversized bodies would take.
  ASSERT_GT(rss_first, 0);
  EXPECT_LT(rss_second, rss_first + 16 * 1024) << "resident memory grew between equal rounds";
  EXPECT_LT(peak, 256 * 1024);

  // Nothing left generating or queued (abandoned streams were cancelled).
  HttpResponse health;
  for (int spin = 0; spin < 100; ++spin) {
    health = http_get(port, "/health");
    json h = json::parse(health.body, nullptr, false);
    if (!h.is_discarded() && h["active"] == 0 && h["waiting"] == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  json h = json::parse(health.body, nullptr, false);
  ASSERT_FALSE(h.is_discarded()) << health.raw;
  EXPECT_EQ(h["active"], 0);
  EXPECT_EQ(h["waiting"], 0);
  EXPECT_EQ(h["failed"], 0);
  EXPECT_EQ(h["busy"], 0);  // the queue (64) holds every client: nobody was turned away
  EXPECT_GE(h["completed"].get<int>(), first.valid + second.valid);

  EXPECT_EQ(server.terminate(std::chrono::seconds(10)), 0) << read_bytes(dir.path("serve.err"));
  EXPECT_NE(read_bytes(dir.path("serve.err")).find("frugal serve: stopped"), std::string::npos);
}

#else

TEST(ServeLoad, NeedsTheHttpServer) { GTEST_SKIP() << "built without cpp-httplib"; }

#endif

}  // namespace
}  // namespace frugal
