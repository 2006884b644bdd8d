// frugal generate CHECKPOINT [--prompt TEXT] [--speculative] [--stats] [--device cpu|cuda]
//                 [--weights bf16|fp8] [--generate.key=value ...]
// Loads the checkpoint's frugal.toml (with the --generate.* overrides, validated) and weights,
// then generates with the inference engine (infer/engine.h: absorbed MLA over a latent KV cache;
// with --speculative, MTP drafts verified by the main model) after a document-start token +
// prompt, until max_new_tokens or the end-of-document token, in a context window of
// train.seq_len tokens (shifted by half when full). Only ordinary tokens and the end-of-document
// token are candidates. The output is the same with and without --speculative. With --device
// cuda the engine runs a GPU model loaded from the checkpoint (GenerationBackend,
// infer/engine_service.h) in BF16 or FP8 weights: the same algorithm, BF16/FP8 rounding.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "data/byte_tokenizer.h"
#include "data/tokenizer/tokenizer.h"
#include "infer/engine.h"
#include "infer/engine_service.h"
#include "infer/sampler.h"
#include "io/config_io.h"
#include "train/checkpoint.h"

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal generate CHECKPOINT_OR_RUN_DIR [--prompt TEXT] [--speculative] [--stats]\n"
    "                       [--device cpu|cuda] [--weights bf16|fp8] [--generate.key=value ...]\n"
    "\n"
    "Samples a continuation of the prompt from a checkpoint written by frugal train (or\n"
    "imported by frugal convert) and streams it to standard output (the prompt, then the\n"
    "sampled text, then a newline). Sampling stops after max_new_tokens or at the\n"
    "end-of-document token. The context window is the trained sequence length\n"
    "(train.seq_len); when it is full, the last half is kept and generation goes on.\n"
    "The same seed and settings always give the same text.\n"
    "\n"
    "  --prompt TEXT                  the text to continue (default: empty: a new document)\n"
    "  --speculative                  draft tokens with the model's MTP module and verify them\n"
    "                                 in the main model's pass (same output, fewer passes)\n"
    "  --stats                        print tokens/s and draft acceptance to standard error\n"
    "  --device cpu|cuda              where the model runs (default cpu; cuda: GPU 0, needs a\n"
    "                                 build with CUDA)\n"
    "  --weights bf16|fp8             GPU weight format (default bf16; fp8: block-scaled FP8\n"
    "                                 matrices, faster, slightly different numbers)\n"
    "  --generate.max_new_tokens=N    tokens to sample (default from the checkpoint's config)\n"
    "  --generate.temperature=T       0 = greedy\n"
    "  --generate.top_k=K             0 = off\n"
    "  --generate.top_p=P             1 = off\n"
    "  --generate.seed=S              sampling seed\n";

// Hugging Face tokenizers that add a BOS (tokenizer_config.json "add_bos_token": true, as
// DeepSeek's) start documents with it; frugal's training windows start after an end-of-document
// token.
bool starts_with_bos(const std::string& dir) {
  const std::filesystem::path path = std::filesystem::path(dir) / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return false;
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  try {
    const nlohmann::json j = nlohmann::json::parse(text.str());
    return j.is_object() && j.value("add_bos_token", false) == true;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON: {}", path.string(), e.what());
  }
}

}  // namespace

int cmd_generate(const std::vector<std::string>& argv) {
  ParsedArgs args =
      parse_args(argv, {"prompt", "device", "weights"}, {"help", "speculative", "stats"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  FRUGAL_CHECK(args.positional.size() == 1, "generate takes one checkpoint or run directory");
  for (const std::string& o : args.overrides)
    FRUGAL_CHECK(o.rfind("generate.", 0) == 0, "generate accepts only --generate.* settings, got --{}", o);

  const std::string device = args.option("device", "cpu");
  const std::string weights = args.option("weights");
  check_generation_device(device, weights);

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
  const std::optional<int32_t> bos =
      bpe ? bpe->bos_id() : std::optional<int32_t>(ByteTokenizer::kBos);
  // Candidates: ordinary tokens and the end-of-document token. Other special tokens (BOS, PAD,
  // FIM, chat roles) are not sampled, and ids past the tokenizer's vocabulary were never trained.
  std::vector<int32_t> suppressed;
  for (int64_t v = tokenizer_vocab; v < saved.model.vocab_size; ++v)
    suppressed.push_back(static_cast<int32_t>(v));
  if (bpe) {
    for (SpecialRole role : {SpecialRole::kBos, SpecialRole::kPad, SpecialRole::kFimBegin,
                             SpecialRole::kFimHole, SpecialRole::kFimEnd, SpecialRole::kUser,
                             SpecialRole::kAssistant})
      if (auto id = bpe->special_id(role); id && *id != eos) suppressed.push_back(*id);
  } else {
    suppressed.push_back(ByteTokenizer::kBos);
    suppressed.push_back(ByteTokenizer::kPad);
  }

  // The host model, then the model the engine runs: on the CPU the reference reads the host
  // model (kept to the end); a GPU copy is independent of it, so the host model is freed.
  auto model = std::make_unique<Transformer<float>>(saved.model);
  load_checkpoint_model(dir, *model);
  const GenerationBackend backend(*model, device, weights);
  if (device != "cpu") model.reset();
  const std::string prompt = args.option("prompt");
  // Training windows start anywhere in the corpus, where documents follow the end-of-document
  // token, so a frugal generation opens with it; imported Hugging Face models open with BOS.
  std::vector<int32_t> tokens;
  if (starts_with_bos(dir) && bos)
    tokens.push_back(*bos);
  else if (eos >= 0)
    tokens.push_back(eos);
  for (int32_t t : bpe ? bpe->encode(prompt) : bytes.encode(prompt)) tokens.push_back(t);
  FRUGAL_CHECK(!tokens.empty(), "the prompt is empty and the tokenizer has no end-of-document token");

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

  // The context window is the trained sequence length (train.seq_len, at most
  // max_position_embeddings): positions past it were never trained. When a generation fills it,
  // the last half of the text is kept and read again from position 0 (a context shift), and
  // sampling continues with the next sampling counter.
  const int64_t window =
      std::max<int64_t>(2, std::min(saved.train.seq_len, saved.model.max_position_embeddings));
  infer::EngineOptions options;
  options.max_batch = 1;
  options.speculative = args.has("speculative");
  options.max_context = window;
  options.on_token = [&](int64_t, int32_t token) {
    generated.push_back(token);
    flush_text(false);
  };
  infer::Engine engine(backend.model(), options);
  infer::Request request;
  request.sampling = sampling_params(saved.generate);
  request.seed = saved.generate.seed;
  request.eos_tokens = {eos >= 0 ? eos : static_cast<int32_t>(saved.model.eos_token_id)};
  request.suppressed_tokens = suppressed;

  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  const auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> context = tokens;
  int64_t remaining = saved.generate.max_new_tokens;
  while (remaining > 0) {
    if (static_cast<int64_t>(context.size()) >= window)
      context.erase(context.begin(), context.end() - window / 2);
    request.prompt = context;
    request.max_new_tokens = remaining;
    request.first_counter = static_cast<uint64_t>(generated.size());
    engine.submit(request);
    const infer::Completion done = engine.run().at(0);
    remaining -= static_cast<int64_t>(done.tokens.size());
    if (done.reason != infer::FinishReason::kContext) break;
    context.insert(context.end(), done.tokens.begin(), done.tokens.end());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  flush_text(true);
  std::fputs("\n", stdout);
  if (args.has("stats")) {
    const infer::EngineStats& s = engine.stats();
    std::fprintf(stderr,
                 "generated %lld tokens in %.3f s (%.1f tokens/s), %lld main-model passes on %s",
                 static_cast<long long>(s.generated), seconds,
                 seconds > 0 ? static_cast<double>(s.generated) / seconds : 0.0,
                 static_cast<long long>(s.steps), backend.describe().c_str());
    if (options.speculative)
      std::fprintf(stderr, "; MTP drafts %lld, accepted %lld (%.1f%%)",
                   static_cast<long long>(s.drafted), static_cast<long long>(s.accepted),
                   100.0 * s.acceptance());
    std::fputs("\n", stderr);
  }
  return 0;
}

}  // namespace frugal
