// frugal serve CHECKPOINT [options]: the OpenAI-compatible HTTP API (infer/server/http_server.h)
// over a checkpoint (infer/engine_service.h: the batching inference engine, --speculative for MTP
// drafting; --device cuda runs it on GPU 0, --weights bf16|fp8). Prints one line
// "frugal serve: ... listening on http://HOST:PORT" on standard output once it accepts
// connections; SIGINT or SIGTERM stops it (running generations are cancelled) and it exits 0.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/parse_int.h"
#include "infer/server/http_server.h"
#include "infer/engine_service.h"

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal serve CHECKPOINT_OR_RUN_DIR [options]\n"
    "\n"
    "Serves the checkpoint over an OpenAI-compatible HTTP API: GET /v1/models,\n"
    "POST /v1/completions, POST /v1/chat/completions (\"stream\": true streams server-sent\n"
    "events), and GET /health. Prints the address once it is listening; Ctrl-C stops it.\n"
    "\n"
    "  --host ADDR             address to bind (default 127.0.0.1: this machine only)\n"
    "  --port N                port (default 8000; 0 = any free port, printed)\n"
    "  --api-key KEY           require 'Authorization: Bearer KEY' on /v1/* (default: the\n"
    "                          FRUGAL_API_KEY environment variable; unset = no key)\n"
    "  --model-name NAME       the model id clients use (default: the directory's name)\n"
    "  --max-concurrent N      requests generating at once, decoded together in one batch\n"
    "                          (default 2)\n"
    "  --max-queue N           requests waiting for a slot, first come first served; more are\n"
    "                          answered 429 with Retry-After (default 16)\n"
    "  --queue-timeout S       seconds a request waits for a slot before a 429 (default 30)\n"
    "  --max-body-bytes N      larger request bodies are answered 413 (default 1048576)\n"
    "  --max-prompt-tokens N   longer prompts are answered 400 (default: the model's context)\n"
    "  --max-tokens N          largest max_tokens a request may ask, and the chat default\n"
    "                          (default 512)\n"
    "  --request-timeout S     longest generation in seconds (default 300)\n"
    "  --read-timeout S        per socket read (default 10)\n"
    "  --write-timeout S       per socket write; slower readers are dropped (default 10)\n"
    "  --threads N             compute threads (default: all cores)\n"
    "  --device cpu|cuda       where the model runs (default cpu; cuda: GPU 0, needs a build\n"
    "                          with CUDA)\n"
    "  --weights bf16|fp8      GPU weight format (default bf16; fp8: block-scaled FP8 matrices)\n"
    "  --speculative           draft tokens with the model's MTP module and verify them in\n"
    "                          the main model's pass (same output, fewer passes)\n"
    "  --log-requests          one line per request on standard error\n";

int64_t int_option(const ParsedArgs& args, const std::string& name, int64_t fallback, int64_t low,
                   int64_t high) {
  const std::string text = args.option(name);
  if (text.empty()) return fallback;
  const std::optional<int64_t> parsed = parse_int64(text);
  FRUGAL_CHECK(parsed.has_value(), "--{}: '{}' is not an integer", name, text);
  const int64_t value = *parsed;
  FRUGAL_CHECK(value >= low && value <= high, "--{} = {} is outside [{}, {}]", name, value, low,
               high);
  return value;
}

double seconds_option(const ParsedArgs& args, const std::string& name, double fallback) {
  const std::string text = args.option(name);
  if (text.empty()) return fallback;
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  FRUGAL_CHECK(used == text.size() && used > 0, "--{}: '{}' is not a number", name, text);
  FRUGAL_CHECK(value >= 0 && value <= 86400, "--{} = {} is outside [0, 86400] seconds", name,
               value);
  return value;
}

}  // namespace

int cmd_serve(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(
      argv,
      {"host", "port", "api-key", "model-name", "max-concurrent", "max-queue", "queue-timeout",
       "max-body-bytes", "max-prompt-tokens", "max-tokens", "request-timeout", "read-timeout",
       "write-timeout", "threads", "device", "weights"},
      {"help", "log-requests", "speculative"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  FRUGAL_CHECK(args.positional.size() == 1, "serve takes one checkpoint or run directory");
  FRUGAL_CHECK(args.overrides.empty(), "serve takes no --section.key settings, got --{}",
               args.overrides.front());
  FRUGAL_CHECK(http_server_available(),
               "this frugal was built without cpp-httplib, so it cannot serve HTTP; install "
               "libcpp-httplib-dev (scripts/setup.sh does) and rebuild");

  ServerOptions options;
  options.host = args.option("host", "127.0.0.1");
  options.port = static_cast<int>(int_option(args, "port", 8000, 0, 65535));
  options.api_key = args.option("api-key");
  if (options.api_key.empty() && std::getenv("FRUGAL_API_KEY") != nullptr)
    options.api_key = std::getenv("FRUGAL_API_KEY");
  options.max_concurrent = static_cast<int>(int_option(args, "max-concurrent", 2, 1, 1024));
  options.max_queue = static_cast<int>(int_option(args, "max-queue", 16, 0, 4096));
  options.queue_timeout_s = seconds_option(args, "queue-timeout", 30);
  options.max_body_bytes =
      static_cast<size_t>(int_option(args, "max-body-bytes", 1 << 20, 1024, int64_t{1} << 30));
  options.limits.max_tokens = int_option(args, "max-tokens", 512, 1, 1 << 20);
  options.request_timeout_s = seconds_option(args, "request-timeout", 300);
  FRUGAL_CHECK(options.request_timeout_s > 0, "--request-timeout must be > 0");
  options.read_timeout_s = static_cast<int>(int_option(args, "read-timeout", 10, 1, 3600));
  options.write_timeout_s = static_cast<int>(int_option(args, "write-timeout", 10, 1, 3600));
  options.log_requests = args.has("log-requests");
  const int threads = static_cast<int>(int_option(args, "threads", 0, 0, 4096));

  // Signals go to one thread that stops the server; a client that hangs up mid-response must
  // not kill the process (httplib writes without MSG_NOSIGNAL).
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // every thread created from here on

  EngineServiceOptions service_options;
  service_options.threads = threads;
  service_options.max_batch = options.max_concurrent;
  service_options.speculative = args.has("speculative");
  service_options.device = args.option("device", "cpu");
  service_options.weights = args.option("weights");
  check_generation_device(service_options.device, service_options.weights);
  std::unique_ptr<EngineService> service =
      EngineService::load(args.positional[0], args.option("model-name"), service_options);
  options.limits.max_prompt_tokens =
      int_option(args, "max-prompt-tokens", service->context_length(), 1, int64_t{1} << 30);
  HttpServer server(*service, options);
  const int port = server.bind();
  const bool loopback =
      options.host == "127.0.0.1" || options.host == "localhost" || options.host == "::1";
  if (options.api_key.empty() && !loopback) {
    std::fprintf(stderr, "frugal serve: warning: listening on %s without an API key\n",
                 options.host.c_str());
  }

  std::atomic<bool> signalled{false};
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    signalled = true;
    server.stop();
  });
  std::printf("frugal serve: model %s (context %lld tokens, %s) listening on http://%s:%d\n",
              service->model_name().c_str(), static_cast<long long>(service->context_length()),
              service->device_description().c_str(), options.host.c_str(), port);
  std::fflush(stdout);
  server.run();
  if (!signalled) pthread_kill(signal_thread.native_handle(), SIGTERM);  // wake it to exit
  signal_thread.join();
  const ServerStats stats = server.stats();
  std::fprintf(stderr, "frugal serve: stopped (%lld completed, %lld cancelled, %lld busy)\n",
               static_cast<long long>(stats.completed), static_cast<long long>(stats.cancelled),
               static_cast<long long>(stats.busy));
  return 0;
}

}  // namespace frugal
