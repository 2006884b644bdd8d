// The OpenAI-compatible HTTP server (see http_server.h) on cpp-httplib. Each connection is served
// by one worker thread; a generation runs on the thread of its request: non-streaming requests
// collect the text and answer once, streaming requests write one server-sent event per delta
// through httplib's chunked content provider.
#include "infer/server/http_server.h"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"
#include "infer/server/admission.h"

#if FRUGAL_HAVE_HTTPLIB
#include <httplib.h>
#endif

namespace frugal {

#if FRUGAL_HAVE_HTTPLIB

bool http_server_available() { return true; }

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// httplib's worker threads, with a bounded queue of accepted connections: when it is full,
// enqueue() (called by the accepting thread) waits, so the kernel's backlog absorbs the rest
// instead of memory.
class BoundedThreadPool : public httplib::TaskQueue {
 public:
  BoundedThreadPool(size_t threads, size_t max_pending) : max_pending_(max_pending) {
    for (size_t i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  void enqueue(std::function<void()> job) override {
    std::unique_lock<std::mutex> lock(mutex_);
    has_space_.wait(lock, [&] { return jobs_.size() < max_pending_ || shutting_down_; });
    jobs_.push_back(std::move(job));
    has_job_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      shutting_down_ = true;
    }
    has_job_.notify_all();
    has_space_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        has_job_.wait(lock, [&] { return shutting_down_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // shutting down and drained (queued sockets get closed)
        job = std::move(jobs_.front());
        jobs_.pop_front();
        has_space_.notify_one();
      }
      job();
    }
  }

  const size_t max_pending_;
  std::mutex mutex_;
  std::condition_variable has_job_, has_space_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> workers_;
  bool shutting_down_ = false;
};

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

int64_t unix_time() { return static_cast<int64_t>(std::time(nullptr)); }

void send_error(httplib::Response& res, const ApiError& error) {
  res.status = error.status;
  res.set_content(error_body(error), "application/json");
  if (error.status == 429 || error.status == 503) res.set_header("Retry-After", "1");
  if (error.status == 401) res.set_header("WWW-Authenticate", "Bearer");
}

ApiError body_too_large(size_t max_body_bytes) {
  return {413, fmt::format("the request body exceeds this server's limit of {} bytes", max_body_bytes),
          "invalid_request_error", "", "request_too_large"};
}

// What one generation ended with.
struct Outcome {
  bool done = false;       // the service finished (finish_reason set)
  bool client_gone = false;
  bool timed_out = false;
  bool shutting_down = false;
  std::string error;       // the service threw
  std::string finish_reason;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

}  // namespace

struct HttpServer::Impl {
  Impl(GenerationService& service_, ServerOptions options_)
      : service(service_),
        options(std::move(options_)),
        admission(options.max_concurrent, options.max_queue) {
    random_state = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^
                   (static_cast<uint64_t>(std::random_device()()) << 32);
    created = unix_time();
  }

  GenerationService& service;
  const ServerOptions options;
  Admission admission;
  httplib::Server server;
  std::atomic<bool> stopping{false}, run_active{false};
  std::atomic<int64_t> completed{0}, cancelled{0}, busy{0}, timed_out{0}, failed{0};
  std::mutex random_mutex;
  uint64_t random_state = 0;
  int64_t created = 0;

  uint64_t next_random() {
    std::lock_guard<std::mutex> lock(random_mutex);
    return splitmix64(random_state);
  }
  std::string new_id(Endpoint endpoint) {
    return fmt::format("{}-{:016x}{:08x}", endpoint == Endpoint::kChatCompletions ? "chatcmpl" : "cmpl",
                       next_random(), static_cast<uint32_t>(next_random()));
  }

  bool authorized(const httplib::Request& req, httplib::Response& res) const {
    if (options.api_key.empty()) return true;
    const std::string header = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    const bool ok = header.rfind(kBearer, 0) == 0 &&
                    constant_time_equal(header.substr(kBearer.size()), options.api_key);
    if (!ok)
      send_error(res, {401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                       "invalid_request_error", "", "invalid_api_key"});
    return ok;
  }

  // Runs one generation; emit(text) returns false when the client is gone.
  Outcome generate(const GenerationRequest& request,
                   const std::function<bool(const std::string&)>& emit) {
    Outcome out;
    const auto deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(options.request_timeout_s));
    try {
      service.generate(request, [&](const GenerationDelta& delta) {
        out.prompt_tokens = delta.prompt_tokens;
        out.completion_tokens = delta.completion_tokens;
        if (!delta.text.empty() && !emit(delta.text)) {
          out.client_gone = true;
          return false;
        }
        if (delta.done) {
          out.done = true;
          out.finish_reason = delta.finish_reason;
          return true;
        }
        if (stopping.load()) {
          out.shutting_down = true;
          return false;
        }
        if (Clock::now() > deadline) {
          out.timed_out = true;
          return false;
        }
        return true;
      });
    } catch (const std::exception& e) {
      out.error = e.what();
    }
    if (out.timed_out) ++timed_out;
    if (!out.error.empty()) ++failed;
    if (out.done) ++completed;
    if (out.client_gone) ++cancelled;
    return out;
  }

  ApiError outcome_error(const Outcome& out) const {
    if (out.timed_out)
      return {504, fmt::format("the generation exceeded this server's request timeout of {} s",
                               options.request_timeout_s),
              "timeout", "", "request_timeout"};
    if (out.shutting_down) return {503, "the server is shutting down", "server_error", "", ""};
    return {500, "generation failed: " + out.error, "server_error", "", ""};
  }

  // Reads the body ourselves (whatever its Content-Type: httplib would cap form-encoded bodies,
  // curl's default, at 8 KiB), at most max_body_bytes. False with res set when it cannot.
  bool read_body(const httplib::Request& req, httplib::Response& res,
                 const httplib::ContentReader& reader, std::string& body) const {
    if (req.get_header_value("Content-Type").rfind("multipart/", 0) == 0) {
      send_error(res, {400, "the request body must be JSON, not multipart", "invalid_request_error",
                       "", ""});
      return false;  // (httplib skips an unread body before the connection's next request)
    }
    bool too_large = false;
    const bool ok = reader([&](const char* data, size_t length) {
      if (body.size() + length > options.max_body_bytes) {
        too_large = true;
        return false;
      }
      body.append(data, length);
      return true;
    });
    if (too_large || (!ok && res.status == 413)) {  // over the limit: ours, or httplib's
      send_error(res, body_too_large(options.max_body_bytes));
      return false;
    }
    if (!ok) {  // (httplib closes the connection after a failed read)
      send_error(res, {400, "could not read the request body", "invalid_request_error", "", ""});
      return false;
    }
    return true;
  }

  void handle_generation(const httplib::Request& req, httplib::Response& res,
                         const httplib::ContentReader& reader, Endpoint endpoint) {
    if (!authorized(req, res)) return;
    std::string body;
    if (!read_body(req, res, reader, body)) return;
    ApiRequest api;
    try {
      api = parse_api_request(endpoint, body, service, options.limits, next_random());
    } catch (const ApiException& e) {
      send_error(res, e.error());
      return;
    } catch (const Error& e) {  // the service refused the prompt (e.g. its chat format)
      send_error(res, {400, e.what(), "invalid_request_error", "", ""});
      return;
    }
    Admission::Refusal refusal{};
    Admission::Ticket ticket = admission.acquire(
        std::chrono::milliseconds(static_cast<int64_t>(options.queue_timeout_s * 1000)), refusal);
    if (!ticket.held()) {
      if (refusal == Admission::Refusal::kShuttingDown) {
        send_error(res, {503, "the server is shutting down", "server_error", "", ""});
        return;
      }
      ++busy;
      send_error(res, {429,
                       refusal == Admission::Refusal::kQueueFull
                           ? fmt::format("the server is busy: {} requests are generating and {} "
                                         "are waiting; retry later",
                                         options.max_concurrent, options.max_queue)
                           : fmt::format("the server is busy: no generation slot became free "
                                         "within {} s; retry later",
                                         options.queue_timeout_s),
                       "requests", "", "rate_limit_exceeded"});
      return;
    }
    const ResponseFormatter format(endpoint, new_id(endpoint), unix_time(), service.model_name());
    if (!api.stream) {
      std::string text;
      Outcome out = generate(api.generation, [&](const std::string& piece) {
        text += piece;
        return true;
      });
      if (!out.done) {
        send_error(res, outcome_error(out));
        return;
      }
      res.set_content(
          dump_json(format.full(text, out.finish_reason, out.prompt_tokens, out.completion_tokens)),
          "application/json");
      return;
    }
    // Streaming: the provider runs once, after the headers are written, and holds the slot.
    struct Stream {
      ApiRequest api;
      ResponseFormatter format;
      Admission::Ticket ticket;
    };
    auto stream = std::make_shared<Stream>(Stream{std::move(api), format, std::move(ticket)});
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream", [this, stream](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& bytes) { return sink.write(bytes.data(), bytes.size()); };
          const ResponseFormatter& f = stream->format;
          const bool chat = stream->api.endpoint == Endpoint::kChatCompletions;
          if (chat && !write(sse_event(f.role_chunk()))) {
            ++cancelled;
            stream->ticket.release();
            return false;
          }
          Outcome out = generate(stream->api.generation, [&](const std::string& piece) {
            return write(sse_event(f.text_chunk(piece)));
          });
          stream->ticket.release();
          if (out.client_gone) return false;  // closes the connection
          bool ok = true;
          if (out.done) {
            ok = write(sse_event(f.finish_chunk(out.finish_reason)));
            if (ok && stream->api.include_usage)
              ok = write(sse_event(f.usage_chunk(out.prompt_tokens, out.completion_tokens)));
          } else {
            ok = write(sse_event(error_json(outcome_error(out))));
          }
          if (ok) ok = write(std::string(kSseDone));
          if (!ok) return false;
          sink.done();
          return true;
        });
  }

  json health() const {
    return {{"status", stopping.load() ? "stopping" : "ok"},
            {"model", service.model_name()},
            {"active", admission.active()},
            {"waiting", admission.waiting()},
            {"completed", completed.load()},
            {"cancelled", cancelled.load()},
            {"busy", busy.load()},
            {"timed_out", timed_out.load()},
            {"failed", failed.load()}};
  }

  void set_up() {
    const size_t threads = options.http_threads > 0
                               ? static_cast<size_t>(options.http_threads)
                               : static_cast<size_t>(options.max_concurrent + options.max_queue + 4);
    const size_t pending = static_cast<size_t>(std::max(1, options.max_pending_connections));
    server.new_task_queue = [threads, pending] { return new BoundedThreadPool(threads, pending); };
    server.set_payload_max_length(options.max_body_bytes);
    server.set_read_timeout(options.read_timeout_s, 0);
    server.set_write_timeout(options.write_timeout_s, 0);
    server.set_keep_alive_timeout(options.keep_alive_timeout_s);
    server.set_keep_alive_max_count(100);
    server.set_tcp_nodelay(true);
    // httplib's default sets SO_REUSEPORT, which lets a second server bind the same port and
    // silently take half the connections; SO_REUSEADDR alone still allows a quick restart.
    server.set_socket_options([](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    // "Expect: 100-continue" with a body over the limit: refuse before the client sends it.
    const size_t max_body = options.max_body_bytes;
    // (httplib 0.11 writes res as the answer, so its status and body are set here too.)
    server.set_expect_100_continue_handler(
        [max_body](const httplib::Request& req, httplib::Response& res) {
          const std::string length = req.get_header_value("Content-Length");
          char* end = nullptr;
          const unsigned long long n = std::strtoull(length.c_str(), &end, 10);
          if (length.empty() || *end != '\0' || n <= max_body) return 100;
          send_error(res, body_too_large(max_body));
          res.set_header("Connection", "close");
          return 413;
        });

    auto json_response = [](httplib::Response& res, const json& body) {
      res.set_content(dump_json(body), "application/json");
    };
    server.Get("/health", [this, json_response](const httplib::Request&, httplib::Response& res) {
      json_response(res, health());
    });
    server.Get("/v1/models", [this, json_response](const httplib::Request& req, httplib::Response& res) {
      if (authorized(req, res)) json_response(res, models_list(service.model_name(), created));
    });
    server.Get(R"(/v1/models/(.+))",
               [this, json_response](const httplib::Request& req, httplib::Response& res) {
                 if (!authorized(req, res)) return;
                 const std::string id = req.matches[1];
                 if (id == service.model_name())
                   json_response(res, model_object(id, created));
                 else
                   send_error(res, {404, fmt::format("the model '{}' does not exist", id),
                                    "invalid_request_error", "model", "model_not_found"});
               });
    server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res,
                                          const httplib::ContentReader& reader) {
      handle_generation(req, res, reader, Endpoint::kCompletions);
    });
    server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res,
                                               const httplib::ContentReader& reader) {
      handle_generation(req, res, reader, Endpoint::kChatCompletions);
    });
    // Errors httplib produces itself (no route, body too large, malformed HTTP) get an OpenAI
    // error object too; responses that already carry one are left alone.
    server.set_error_handler(httplib::Server::HandlerWithResponse(
        [this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      ApiError error{res.status, fmt::format("HTTP error {}", res.status),
                     res.status >= 500 ? "server_error" : "invalid_request_error", "", ""};
      if (res.status == 404) {
        error.message = fmt::format("unknown URL: {} {}", req.method, req.path);
      } else if (res.status == 413) {
        error = body_too_large(options.max_body_bytes);
      } else if (res.status == 400) {
        error.message = "malformed HTTP request";
      }
      res.set_content(error_body(error), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    server.set_exception_handler(
        [this](const httplib::Request&, httplib::Response& res, std::exception_ptr e) {
          std::string what = "unknown exception";
          try {
            std::rethrow_exception(e);
          } catch (const std::exception& ex) {
            what = ex.what();
          } catch (...) {
          }
          ++failed;
          send_error(res, {500, "internal error: " + what, "server_error", "", ""});
        });
    if (options.log_requests)
      server.set_logger([](const httplib::Request& req, const httplib::Response& res) {
        std::fprintf(stderr, "frugal serve: %s %s %d\n", req.method.c_str(), req.path.c_str(),
                     res.status);
      });
  }
};

HttpServer::HttpServer(GenerationService& service, ServerOptions options)
    : impl_(std::make_unique<Impl>(service, std::move(options))) {
  const ServerOptions& o = impl_->options;
  FRUGAL_CHECK(o.port >= 0 && o.port <= 65535, "port {} is outside 0..65535", o.port);
  FRUGAL_CHECK(o.max_body_bytes >= 1024, "max body bytes = {} must be >= 1024", o.max_body_bytes);
  FRUGAL_CHECK(o.limits.max_tokens >= 1, "max tokens = {} must be >= 1", o.limits.max_tokens);
  FRUGAL_CHECK(o.limits.max_prompt_tokens >= 1, "max prompt tokens = {} must be >= 1",
               o.limits.max_prompt_tokens);
  FRUGAL_CHECK(o.queue_timeout_s >= 0, "queue timeout = {} s must be >= 0", o.queue_timeout_s);
  FRUGAL_CHECK(o.request_timeout_s > 0, "request timeout = {} s must be > 0", o.request_timeout_s);
  FRUGAL_CHECK(o.read_timeout_s >= 1 && o.write_timeout_s >= 1,
               "read/write timeouts must be >= 1 s");
  impl_->set_up();
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  const ServerOptions& o = impl_->options;
  if (o.port == 0) {
    const int port = impl_->server.bind_to_any_port(o.host);
    FRUGAL_CHECK(port > 0, "cannot listen on {} (any port)", o.host);
    return port;
  }
  FRUGAL_CHECK(impl_->server.bind_to_port(o.host, o.port),
               "cannot listen on {}:{} (address in use, or not an address of this machine)",
               o.host, o.port);
  return o.port;
}

void HttpServer::run() {
  impl_->run_active = true;
  if (!impl_->stopping) impl_->server.listen_after_bind();
  impl_->run_active = false;
}

void HttpServer::stop() {
  impl_->stopping = true;
  impl_->admission.shutdown();
  // listen_after_bind may not have started yet: stop again until run() has returned.
  while (impl_->run_active) {
    impl_->server.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

ServerStats HttpServer::stats() const {
  ServerStats s;
  s.active = impl_->admission.active();
  s.waiting = impl_->admission.waiting();
  s.completed = impl_->completed;
  s.cancelled = impl_->cancelled;
  s.busy = impl_->busy;
  s.timed_out = impl_->timed_out;
  s.failed = impl_->failed;
  return s;
}

#else  // no cpp-httplib in this build

bool http_server_available() { return false; }

struct HttpServer::Impl {};

namespace {
[[noreturn]] void no_http_library() {
  fail("this frugal was built without cpp-httplib, so it cannot serve HTTP; install "
       "libcpp-httplib-dev (scripts/setup.sh does) and rebuild");
}
}  // namespace

HttpServer::HttpServer(GenerationService&, ServerOptions) { no_http_library(); }
HttpServer::~HttpServer() = default;
int HttpServer::bind() { no_http_library(); }
void HttpServer::run() { no_http_library(); }
void HttpServer::stop() {}
ServerStats HttpServer::stats() const { return {}; }

#endif

}  // namespace frugal
