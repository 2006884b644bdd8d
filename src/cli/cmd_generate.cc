// frugal generate CHECKPOINT [--prompt TEXT] [--generate.key=value ...]
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/byte_tokenizer.h"
#include "infer/sampler.h"
#include "io/config_io.h"
#include "train/checkpoint.h"

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal generate CHECKPOINT_OR_RUN_DIR [--prompt TEXT] [--generate.key=value ...]\n"
    "\n"
    "Samples a continuation of the prompt from a checkpoint written by frugal train and\n"
    "streams it to standard output.\n"
    "\n"
    "  --prompt TEXT                  the text to continue (default: empty, starts from BOS)\n"
    "  --generate.max_new_tokens=N    tokens to sample (default from the checkpoint's config)\n"
    "  --generate.temperature=T       0 = greedy\n"
    "  --generate.top_k=K             0 = off\n"
    "  --generate.top_p=P             1 = off\n"
    "  --generate.seed=S              sampling seed\n";

}  // namespace

int cmd_generate(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(argv, {"prompt"}, {"help"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  FRUGAL_CHECK(args.positional.size() == 1, "generate takes one checkpoint or run directory");
  for (const std::string& o : args.overrides)
    FRUGAL_CHECK(o.rfind("generate.", 0) == 0, "generate accepts only --generate.* settings, got --{}", o);

  const std::string dir = resolve_checkpoint(args.positional[0]);
  Config saved = load_checkpoint_config(dir);
  // Apply --generate.* overrides to the saved config by reloading it with them.
  if (!args.overrides.empty()) {
    saved = load_config(dir + "/frugal.toml", args.overrides);
  }
  Transformer<float> model(saved.model);
  load_checkpoint_model(dir, model);

  ByteTokenizer tokenizer;
  std::vector<int32_t> tokens = {ByteTokenizer::kBos};
  for (int32_t t : tokenizer.encode(args.option("prompt"))) tokens.push_back(t);
  const int64_t context = saved.train.seq_len;
  const SamplingParams params = sampling_params(saved.generate);
  std::fputs(args.option("prompt").c_str(), stdout);
  for (int64_t i = 0; i < saved.generate.max_new_tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(tokens.size()) - context);
    std::vector<float> logits =
        model.last_logits(tokens.data() + start, static_cast<int64_t>(tokens.size()) - start);
    // Only ids the tokenizer can produce are candidates.
    for (int64_t v = tokenizer.vocab_size(); v < static_cast<int64_t>(logits.size()); ++v)
      logits[v] = -std::numeric_limits<float>::infinity();
    int32_t next = sample_token(logits.data(), static_cast<int64_t>(logits.size()), params,
                                saved.generate.seed, static_cast<uint64_t>(i));
    if (next == ByteTokenizer::kEos || next == saved.model.eos_token_id) break;
    tokens.push_back(next);
    std::string piece = tokenizer.decode(&next, 1);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  }
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace frugal
