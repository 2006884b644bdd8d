// frugal chat CHECKPOINT [--system TEXT] [--device cpu|cuda] [--weights bf16|fp8]
// [--generate.key=value ...]: a conversation in the terminal. Each line read from standard input
// is a user message; the reply streams to standard output as it is sampled, followed by a newline.
// The conversation is kept (in the model's chat format, infer/engine_service.h); when it outgrows
// the model's context the oldest turns are dropped. Commands: /reset forgets the conversation
// (the system message stays), /quit (or end of input) exits. Ctrl-C cuts a reply short; at the
// prompt it exits.
// Standard output carries only the replies, so a pipe gets exactly "reply\n" per message;
// prompts and notices go to standard error, and only when standard input is a terminal.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>
#include <string>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "infer/engine_service.h"
#include "io/config_io.h"
#include "train/checkpoint.h"

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal chat CHECKPOINT_OR_RUN_DIR [--system TEXT] [--device cpu|cuda]\n"
    "                   [--weights bf16|fp8] [--generate.key=value ...]\n"
    "\n"
    "Chats with a checkpoint in the terminal: type a message and press Enter; the reply\n"
    "streams back. The conversation is kept until /reset; /quit or end of input exits.\n"
    "Input may be piped: one message per line, one reply line per message on stdout.\n"
    "\n"
    "  --system TEXT                  a system message that opens the conversation\n"
    "  --threads N                    compute threads (default: all cores)\n"
    "  --device cpu|cuda              where the model runs (default cpu; cuda: GPU 0, needs a\n"
    "                                 build with CUDA)\n"
    "  --weights bf16|fp8             GPU weight format (default bf16; fp8: block-scaled FP8)\n"
    "  --generate.max_new_tokens=N    longest reply in tokens (default from the checkpoint)\n"
    "  --generate.temperature=T       0 = greedy\n"
    "  --generate.top_k=K             0 = off\n"
    "  --generate.top_p=P             1 = off\n"
    "  --generate.seed=S              sampling seed (reply i uses seed + i)\n";

std::atomic<bool> interrupted{false};
void on_interrupt(int) { interrupted = true; }

}  // namespace

int cmd_chat(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(argv, {"system", "threads", "device", "weights"}, {"help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  FRUGAL_CHECK(args.positional.size() == 1, "chat takes one checkpoint or run directory");
  for (const std::string& o : args.overrides)
    FRUGAL_CHECK(o.rfind("generate.", 0) == 0, "chat accepts only --generate.* settings, got --{}", o);
  const std::string device = args.option("device", "cpu");
  const std::string weights = args.option("weights");
  check_generation_device(device, weights);
  const std::string dir = resolve_checkpoint(args.positional[0]);
  const Config saved = load_config(dir + "/frugal.toml", args.overrides);
  const GenerateConfig& settings = saved.generate;
  FRUGAL_CHECK(settings.max_new_tokens >= 1, "--generate.max_new_tokens = {} must be >= 1",
               settings.max_new_tokens);
  int threads = 0;
  if (!args.option("threads").empty()) {
    threads = std::atoi(args.option("threads").c_str());
    FRUGAL_CHECK(threads >= 1, "--threads '{}' must be a positive integer", args.option("threads"));
  }
  EngineServiceOptions service_options;
  service_options.threads = threads;
  service_options.max_batch = 1;  // one conversation
  service_options.device = device;
  service_options.weights = weights;
  std::unique_ptr<EngineService> service = EngineService::load(dir, "", service_options);

  const bool interactive = isatty(STDIN_FILENO) != 0;
  struct sigaction action = {};
  action.sa_handler = on_interrupt;  // no SA_RESTART: a read at the prompt returns
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  if (interactive)
    std::fprintf(stderr, "frugal chat: %s. /reset clears the conversation, /quit exits.\n",
                 service->model_name().c_str());

  std::vector<ChatMessage> opening;
  if (!args.option("system").empty()) opening.push_back({"system", args.option("system")});
  std::vector<ChatMessage> messages = opening;
  uint64_t reply_index = 0;
  for (;;) {
    if (interactive) std::fputs("> ", stderr);
    std::string line;
    if (!std::getline(std::cin, line) || interrupted) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      messages = opening;
      if (interactive) std::fputs("(conversation cleared)\n", stderr);
      continue;
    }
    if (line.empty()) continue;
    if (line[0] == '/') {
      std::fprintf(stderr, "frugal chat: unknown command %s (/reset, /quit)\n", line.c_str());
      continue;
    }
    messages.push_back({"user", line});
    GenerationRequest request;
    request.prompt = service->encode_chat(messages);
    // Drop the oldest turns (not the system message) while the prompt outgrows the context.
    for (;;) {
      if (static_cast<int64_t>(request.prompt.size()) <= service->context_length()) break;
      auto first_turn = messages.begin();
      while (first_turn != messages.end() && first_turn->role == "system") ++first_turn;
      if (messages.end() - first_turn <= 1) break;  // only the new message is left
      messages.erase(first_turn);
      request.prompt = service->encode_chat(messages);
    }
    request.max_tokens = settings.max_new_tokens;
    request.temperature = settings.temperature;
    request.top_k = settings.top_k;
    request.top_p = settings.top_p;
    request.seed = settings.seed + reply_index++;
    request.stop = service->chat_stop_strings();
    std::string reply;
    interrupted = false;
    service->generate(request, [&](const GenerationDelta& delta) {
      std::fwrite(delta.text.data(), 1, delta.text.size(), stdout);
      std::fflush(stdout);
      reply += delta.text;
      return !interrupted.load();
    });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    interrupted = false;
    messages.push_back({"assistant", reply});
  }
  return 0;
}

}  // namespace frugal
