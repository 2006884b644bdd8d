// The OpenAI-compatible HTTP server over a GenerationService (cpp-httplib underneath).
//
// Endpoints:
//   GET  /health                 {"status": "ok", "model", "active", "waiting", ...} (no API key)
//   GET  /v1/models              the served model as a list
//   GET  /v1/models/{id}         the model, or 404
//   POST /v1/completions         text completion, streamed with "stream": true
//   POST /v1/chat/completions    chat completion, streamed with "stream": true
// Requests and responses follow openai_protocol.h; every error is OpenAI's error object.
//
// Safety limits (ServerOptions):
//   - binds 127.0.0.1 unless told otherwise; with api_key set, /v1/* needs
//     "Authorization: Bearer <key>" (else 401);
//   - bodies over max_body_bytes: 413; prompts over limits.max_prompt_tokens and max_tokens over
//     limits.max_tokens: 400;
//   - at most max_concurrent requests generate at once; up to max_queue more wait up to
//     queue_timeout_s for a slot, first come first served; beyond that (or after the wait) 429
//     with "Retry-After: 1";
//   - read_timeout_s / write_timeout_s bound each socket read or write (a client that stops
//     reading a stream is dropped and its generation cancelled); request_timeout_s bounds one
//     generation (non-streaming: 504; streaming: an error event, then [DONE]);
//   - http_threads worker threads (0: max_concurrent + max_queue + 4) and at most
//     max_pending_connections accepted connections waiting for a worker (then accepting pauses
//     and the kernel's backlog holds further clients).
// A streaming client that hangs up cancels its generation at the next write; a non-streaming one
// cannot be noticed (httplib gives no access to the socket) and its generation runs to its end,
// bounded by max_tokens and request_timeout_s.
// stop() cancels running generations, refuses new ones and returns once run() has returned.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "infer/generation_service.h"
#include "infer/server/openai_protocol.h"

namespace frugal {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (bind() returns it)
  std::string api_key;  // empty: no authentication
  int max_concurrent = 2;
  int max_queue = 16;
  double queue_timeout_s = 30;
  size_t max_body_bytes = 1 << 20;
  RequestLimits limits;
  int read_timeout_s = 10;
  int write_timeout_s = 10;
  int keep_alive_timeout_s = 5;
  double request_timeout_s = 300;
  int http_threads = 0;
  int max_pending_connections = 64;
  bool log_requests = false;  // one line per request on stderr
};

struct ServerStats {
  int64_t active = 0, waiting = 0;   // generations running / queued now
  int64_t completed = 0;             // generations answered in full
  int64_t cancelled = 0;             // streams whose client went away
  int64_t busy = 0;                  // 429s
  int64_t timed_out = 0;             // generations past request_timeout_s
  int64_t failed = 0;                // 500s
};

// False when this build has no HTTP library (then HttpServer's constructor throws).
bool http_server_available();

class HttpServer {
 public:
  HttpServer(GenerationService& service, ServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port; returns the port. Throws frugal::Error naming the address on failure.
  int bind();
  // Serves until stop(). Returns at once if stop() came first.
  void run();
  // Thread-safe; blocks until run() (if running) has returned.
  void stop();
  ServerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace frugal
