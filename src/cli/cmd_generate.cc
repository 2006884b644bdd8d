// frugal generate CHECKPOINT [--prompt TEXT] [--generate.key=value ...]
// Loads the checkpoint's frugal.toml (with the --generate.* overrides, validated) and weights,
// then samples byte tokens after <|endoftext|> + prompt, with a context window of train.seq_len,
// until max_new_tokens or an <|endoftext|>. Only byte ids and <|endoftext|> are candidates.
#include <cstdio>
#include <limits>

#include "cli/args.h"
#include "cli/commands.h"
#include <filesystem>
#include <optional>

#include "data/byte_tokenizer.h"
#include "data/tokenizer/tokenizer.h"
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

  // The checkpoint's tokenizer.json when it was trained on a token dataset, else bytes.
  const std::string tokenizer_path = dir + "/tokenizer.json";
  std::optional<Tokenizer> bpe;
  if (std::filesystem::exists(tokenizer_path)) bpe = Tokenizer::from_file(tokenizer_path);
  ByteTokenizer bytes;
  const int64_t tokenizer_vocab = bpe ? bpe->vocab_size() : ByteTokenizer::kVocabSize;
  FRUGAL_CHECK(saved.model.vocab_size >= tokenizer_vocab,
               "{}: model.vocab_size = {} is smaller than the tokenizer's {} ids", dir,
               saved.model.vocab_size, tokenizer_vocab);
  const int32_t eos = bpe ? bpe->eos_id().value_or(-1) : ByteTokenizer::kEos;
  // Candidates: ordinary tokens and the end-of-document token. Other special tokens (BOS, PAD,
  // FIM, chat roles) are not sampled, and ids past the tokenizer's vocabulary were never trained.
  std::vector<bool> allowed(static_cast<size_t>(saved.model.vocab_size), false);
  for (int64_t v = 0; v < tokenizer_vocab; ++v) allowed[v] = true;
  if (bpe) {
    for (SpecialRole role : {SpecialRole::kBos, SpecialRole::kPad, SpecialRole::kFimBegin,
                             SpecialRole::kFimHole, SpecialRole::kFimEnd, SpecialRole::kUser,
                             SpecialRole::kAssistant})
      if (auto id = bpe->special_id(role)) allowed[*id] = false;
  } else {
    allowed[ByteTokenizer::kBos] = allowed[ByteTokenizer::kPad] = false;
  }

  Transformer<float> model(saved.model);
  load_checkpoint_model(dir, model);
  const std::string prompt = args.option("prompt");
  // Training windows start anywhere in the corpus, where documents follow the end-of-document
  // token, so a generation opens with it: the prompt reads as the start of a new document.
  std::vector<int32_t> tokens;
  if (eos >= 0) tokens.push_back(eos);
  for (int32_t t : bpe ? bpe->encode(prompt) : bytes.encode(prompt)) tokens.push_back(t);
  FRUGAL_CHECK(!tokens.empty(), "the prompt is empty and the tokenizer has no end-of-document token");
  const int64_t context = saved.train.seq_len;
  const SamplingParams params = sampling_params(saved.generate);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::vector<int32_t> generated;
  size_t printed = 0;  // bytes of the decoded continuation already written
  auto flush_text = [&](bool final) {
    std::string text = bpe ? bpe->decode(generated) : bytes.decode(generated);
    // Hold back an incomplete UTF-8 character (decoded as U+FFFD) until its bytes arrive.
    size_t stable = text.size();
    if (!final && text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0)
      stable -= 3;
    if (stable > printed) std::fwrite(text.data() + printed, 1, stable - printed, stdout);
    printed = std::max(printed, stable);
    std::fflush(stdout);
  };
  for (int64_t i = 0; i < saved.generate.max_new_tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(tokens.size()) - context);
    std::vector<float> logits =
        model.last_logits(tokens.data() + start, static_cast<int64_t>(tokens.size()) - start);
    for (size_t v = 0; v < logits.size(); ++v)
      if (!allowed[v]) logits[v] = -std::numeric_limits<float>::infinity();
    int32_t next = sample_token(logits.data(), static_cast<int64_t>(logits.size()), params,
                                saved.generate.seed, static_cast<uint64_t>(i));
    if (next == eos) break;
    tokens.push_back(next);
    generated.push_back(next);
    flush_text(false);
  }
  flush_text(true);
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace frugal
