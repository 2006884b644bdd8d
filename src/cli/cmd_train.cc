// frugal train CONFIG.toml [--resume] [--section.key=value ...]
// Checks every input (config, out_dir, data file and its size) before printing or writing
// anything, so a bad input gives one error line; then prints the settings table and trains.
// Exit codes: 0 done, 1 an error, 130 stopped by Ctrl-C/SIGTERM after saving a checkpoint.
#include <atomic>
#include <csignal>
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/text_source.h"
#include "io/config_io.h"
#include "train/trainer.h"

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal train CONFIG.toml [--config FILE] [--resume] [--section.key=value ...]\n"
    "\n"
    "Pre-trains the model the config describes on the text of data.train_path (.txt or\n"
    ".txt.zst; byte-level tokens), logging a step line, metrics.jsonl and checkpoints in\n"
    "train.out_dir. A run directory that already holds a checkpoint is never overwritten:\n"
    "pass --resume to continue it exactly where it stopped, or choose another train.out_dir.\n"
    "\n"
    "  --config FILE   the TOML config (same as the positional argument)\n"
    "  --resume        continue from the newest checkpoint in train.out_dir\n"
    "  --section.key=value   override any setting, e.g. --train.steps=50 --optim.lr=1e-3\n"
    "\n"
    "Ctrl-C (or SIGTERM) stops after the current step and saves a checkpoint that --resume\n"
    "continues exactly (exit code 130); a second Ctrl-C stops at once.\n";

// Set by the first SIGINT/SIGTERM: the run stops after the current step and saves a checkpoint.
// The handler then restores the default action, so a second Ctrl-C ends the process at once.
std::atomic<bool> g_stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free);

void request_stop(int signal_number) {
  g_stop_requested.store(true);
  std::signal(signal_number, SIG_DFL);
}

}  // namespace

int cmd_train(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(argv, {"config"}, {"resume", "help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  std::string config_path = args.option("config");
  FRUGAL_CHECK(args.positional.size() <= 1 && (config_path.empty() || args.positional.empty()),
               "train takes one config file (see --help)");
  if (config_path.empty() && !args.positional.empty()) config_path = args.positional[0];
  FRUGAL_CHECK(!config_path.empty(), "train needs a config file, e.g. frugal train configs/tiny.toml");

  Config config = load_config(config_path, args.overrides);
  FRUGAL_CHECK(!config.data.train_path.empty(),
               "{}: data.train_path is not set (pass --data.train_path=FILE)", config_path);
  const bool resume = args.has("resume");
  if (!resume && has_checkpoint(config.train.out_dir))
    fail("{} already holds a checkpoint; pass --resume to continue it or set another "
         "--train.out_dir (nothing was overwritten)",
         config.train.out_dir);
  if (resume)
    FRUGAL_CHECK(has_checkpoint(config.train.out_dir),
                 "{}: no checkpoint to resume in train.out_dir (run without --resume to start)",
                 config.train.out_dir);
  const std::string checkpoint = resume ? resolve_checkpoint(config.train.out_dir) : "";

  // Every input is checked before anything is printed or written.
  TextCorpus corpus = load_text_corpus(config.data);
  const size_t window = static_cast<size_t>(config.train.seq_len) + 1;
  FRUGAL_CHECK(corpus.train.size() >= window,
               "{}: {} training tokens, fewer than one window of train.seq_len + 1 = {}",
               config.data.train_path, corpus.train.size(), window);
  std::string val_note;
  if (config.train.eval_every > 0 && !corpus.validation.empty() && corpus.validation.size() < window) {
    val_note = fmt::format(" (fewer than train.seq_len + 1 = {}: validation is off)", window);
    corpus.validation.clear();
  }

  const int64_t train_tokens = static_cast<int64_t>(corpus.train.size());
  const int64_t val_tokens = static_cast<int64_t>(corpus.validation.size());
  TextDataSource train(std::move(corpus.train), config.train.seed, 0, 1, ByteTokenizer::kVocabSize,
                       "train");
  std::unique_ptr<TextDataSource> val;
  if (!corpus.validation.empty() && config.train.eval_every > 0)
    val = std::make_unique<TextDataSource>(std::move(corpus.validation), config.train.seed, 0, 1,
                                           ByteTokenizer::kVocabSize, "validation");
  Trainer trainer(config, train, val.get());
  if (resume) trainer.resume(checkpoint);  // a damaged or mismatched checkpoint fails here

  std::printf("%s\n", settings_table(config).c_str());
  std::printf("data: %s — %lld training tokens, %lld validation tokens%s\n",
              config.data.train_path.c_str(), static_cast<long long>(train_tokens),
              static_cast<long long>(val_tokens), val_note.c_str());
  std::printf("model: %.3fM parameters\n",
              static_cast<double>(trainer.model().params().numel()) / 1e6);
  if (resume) {
    std::printf("resumed from %s at step %lld\n", checkpoint.c_str(),
                static_cast<long long>(trainer.state().step));
    if (trainer.state().step >= config.train.steps) {
      std::printf("nothing to do: the checkpoint is at step %lld and train.steps is %lld "
                  "(raise --train.steps to continue)\n",
                  static_cast<long long>(trainer.state().step),
                  static_cast<long long>(config.train.steps));
      return 0;
    }
  }
  trainer.set_stop_flag(&g_stop_requested);
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  TrainSummary summary = trainer.run();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (summary.steps_done == 0) {
    std::printf("done: no steps to run (train.steps = %lld)\n",
                static_cast<long long>(config.train.steps));
    return 0;
  }
  if (summary.interrupted)
    std::printf("interrupted after step %lld of %lld; continue with --resume\n",
                static_cast<long long>(trainer.state().step),
                static_cast<long long>(config.train.steps));
  std::printf("done: %lld steps, loss %.4f -> %.4f", static_cast<long long>(summary.steps_done),
              summary.first_loss, summary.last_loss);
  if (summary.skipped_steps > 0)
    std::printf(", %lld skipped (non-finite gradient)", static_cast<long long>(summary.skipped_steps));
  if (summary.last_val_loss >= 0) std::printf(", validation loss %.4f", summary.last_val_loss);
  std::printf("\n");
  return summary.interrupted ? 130 : 0;  // 128 + SIGINT, as shells report an interrupted command
}

}  // namespace frugal
