// frugal: one binary, one subcommand per task. Errors the user can cause print one line
// ("frugal: <file or key>: <problem>") and exit 1.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/allocator.h"
#include "core/error.h"

namespace {

constexpr const char* kUsage =
    "usage: frugal <command> [options]\n"
    "\n"
    "commands:\n"
    "  train      pre-train a model from a TOML config (frugal train configs/tiny.toml)\n"
    "  generate   sample text from a checkpoint (frugal generate runs/tiny --prompt \"...\")\n"
    "  data       tokenizer-train, clean, tokenize, stats: from raw text to token datasets\n"
    "  convert    import/export Hugging Face DeepSeek-V2/V3 checkpoints (FP8 included)\n"
    "  serve      an OpenAI-compatible HTTP API for a checkpoint (frugal serve runs/tiny)\n"
    "  chat       talk to a checkpoint in the terminal (frugal chat runs/tiny)\n"
    "\n"
    "Run 'frugal <command> --help' for a command's options. Every config setting can be\n"
    "overridden on the command line as --section.key=value (e.g. --train.steps=100).\n";

// Errors are reported as exactly one line, whatever the message holds.
void print_error(const char* message) {
  std::string line = message;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  while (!line.empty() && line.back() == ' ') line.pop_back();
  std::fprintf(stderr, "frugal: %s\n", line.c_str());
}

}  // namespace

// OpenMP's worker threads spin while they wait for work by default. On a machine whose cores are
// shared (CI, a laptop, several jobs) that spinning starves the threads doing the work: measured
// on 2 cores under load, the small preset's step took 37.7 s spinning and 8.1 s passive. libgomp
// reads OMP_WAIT_POLICY when it loads, before main, so the binary re-executes itself once with
// the policy set, unless the user chose one.
void prefer_passive_openmp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

int main(int argc, char** argv) {
  prefer_passive_openmp_wait(argv);
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  frugal::keep_freed_memory();
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (command == "train") return frugal::cmd_train(args);
    if (command == "generate") return frugal::cmd_generate(args);
    if (command == "data") return frugal::cmd_data(args);
    if (command == "convert") return frugal::cmd_convert(args);
    if (command == "serve") return frugal::cmd_serve(args);
    if (command == "chat") return frugal::cmd_chat(args);
    std::fprintf(stderr, "frugal: unknown command '%s' (see frugal --help)\n", command.c_str());
    return 2;
  } catch (const frugal::Error& e) {
    print_error(e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "frugal: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    print_error(e.what());
    return 1;
  }
}
