// frugal generate CHECKPOINT [--prompt TEXT] [--generate.key=value ...]
// Loads the checkpoint's frugal.toml (with the --generate.* overrides, validated) and weights,
// then samples byte tokens after <|endoftext|> + prompt, with a context window of train.seq_len,
// until max_new_tokens or an <|endoftext|>. Only byte ids and <|endoftext|> are candidates.
#include <cstdio>
#include <limits>

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
    "streams it to standard output (the prompt, then the sampled bytes, then a newline).\n"
    "Sampling stops after max_new_tokens or at the end-of-document token. The same seed\n"
    "and settings always give the same text.\n"
    "\n"
    "  --prompt TEXT                  the text to continue (default: empty: a new document)\n"
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
  // The checkpoint's resolved config with the --generate.* overrides applied (and validated).
  const Config saved = load_config(dir + "/frugal.toml", args.overrides);
  FRUGAL_CHECK(saved.model.vocab_size >= ByteTokenizer::kVocabSize,
               "{}/frugal.toml: model.vocab_size = {} is smaller than the byte tokenizer's {}", dir,
               saved.model.vocab_size, ByteTokenizer::kVocabSize);
  Transformer<float> model(saved.model);
  load_checkpoint_model(dir, model);

  ByteTokenizer tokenizer;
  const std::string prompt = args.option("prompt");
  // Training windows start anywhere in the corpus, where documents follow the separator token,
  // so a generation opens with the separator: the prompt reads as the start of a new document.
  // (The tokenizer's BOS never occurs in training data.)
  std::vector<int32_t> tokens = {ByteTokenizer::kEos};
  for (int32_t t : tokenizer.encode(prompt)) tokens.push_back(t);
  const int64_t context = saved.train.seq_len;
  const SamplingParams params = sampling_params(saved.generate);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  for (int64_t i = 0; i < saved.generate.max_new_tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(tokens.size()) - context);
    std::vector<float> logits =
        model.last_logits(tokens.data() + start, static_cast<int64_t>(tokens.size()) - start);
    // Candidates: the bytes and the end-of-document token. BOS and PAD never occur as targets,
    // and ids past the tokenizer's vocabulary were never trained.
    for (int64_t v = 0; v < static_cast<int64_t>(logits.size()); ++v)
      if (v >= ByteTokenizer::kBos && v != ByteTokenizer::kEos)
        logits[v] = -std::numeric_limits<float>::infinity();
    int32_t next = sample_token(logits.data(), static_cast<int64_t>(logits.size()), params,
                                saved.generate.seed, static_cast<uint64_t>(i));
    if (next == ByteTokenizer::kEos) break;
    tokens.push_back(next);
    std::string piece = tokenizer.decode(&next, 1);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  }
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace frugal
