// frugal convert --from DIR --to DIR [--fp8] [--shard-mb N]
// Imports a Hugging Face DeepSeek-V2/V3 directory into a frugal checkpoint, or exports a frugal
// checkpoint (or run directory) to the Hugging Face layout; the direction follows from --from.
// See io/hf_checkpoint.h for the formats and the checks.
#include <cstdio>
#include <filesystem>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/parse_int.h"
#include "io/hf_checkpoint.h"

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal convert --from DIR --to DIR [--fp8] [--shard-mb N]\n"
    "\n"
    "Converts model weights between Hugging Face DeepSeek-V2/V3 directories and frugal\n"
    "checkpoints. The direction follows from --from:\n"
    "  a Hugging Face directory (config.json and model.safetensors or\n"
    "  model.safetensors.index.json with its shards; BF16/F32 weights, or DeepSeek's FP8\n"
    "  weights with weight_scale_inv block scales, which are dequantized)\n"
    "      -> a frugal checkpoint (model.safetensors in F32, config.json, frugal.toml) that\n"
    "         frugal generate reads;\n"
    "  a frugal checkpoint or run directory (holding frugal.toml or 'latest')\n"
    "      -> a Hugging Face directory: BF16 shards, the index, config.json.\n"
    "Tokenizer files (tokenizer.json, tokenizer_config.json, ...) are copied along.\n"
    "Shards are converted one at a time; the output appears only when complete, and an\n"
    "existing non-empty --to directory is refused.\n"
    "\n"
    "  --from DIR       the model to read\n"
    "  --to DIR         the directory to create\n"
    "  --fp8            (export) store attention and FFN weights as FP8 E4M3 with 128x128\n"
    "                   block scales (weight_scale_inv), as DeepSeek-V3's release does\n"
    "  --shard-mb N     (export) start a new shard before one exceeds N MiB (default 5120)\n";

bool is_frugal_checkpoint(const std::filesystem::path& dir) {
  std::error_code ec;
  return std::filesystem::exists(dir / "frugal.toml", ec) ||
         std::filesystem::exists(dir / "latest", ec);
}

int64_t parse_shard_mb(const std::string& text) {
  const int64_t value = parse_int64(text).value_or(0);
  FRUGAL_CHECK(value > 0 && value <= (int64_t{1} << 30),
               "--shard-mb {}: expected a positive number of MiB", text);
  return value;
}

}  // namespace

int cmd_convert(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(argv, {"from", "to", "shard-mb"}, {"help", "fp8"});
  if (args.has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  FRUGAL_CHECK(args.positional.empty(), "convert takes no positional argument (got '{}'); use "
               "--from DIR --to DIR", args.positional.empty() ? "" : args.positional[0]);
  FRUGAL_CHECK(args.overrides.empty(), "convert takes no config settings (got --{})",
               args.overrides.empty() ? "" : args.overrides[0]);
  const std::string from = args.option("from"), to = args.option("to");
  FRUGAL_CHECK(!from.empty(), "convert needs --from DIR");
  FRUGAL_CHECK(!to.empty(), "convert needs --to DIR");
  std::error_code ec;
  FRUGAL_CHECK(std::filesystem::is_directory(from, ec), "{}: no such directory", from);

  ConvertSummary summary;
  if (is_frugal_checkpoint(from)) {
    HfExportOptions options;
    options.fp8 = args.has("fp8");
    if (args.options.count("shard-mb"))
      options.shard_bytes = static_cast<uint64_t>(parse_shard_mb(args.option("shard-mb"))) << 20;
    summary = export_hf_checkpoint(from, to, options);
    std::printf("exported %lld tensors (%lld FP8 with block scales) into %lld shard(s), %.1f MiB: %s\n",
                static_cast<long long>(summary.tensors),
                static_cast<long long>(summary.fp8_tensors),
                static_cast<long long>(summary.shards),
                static_cast<double>(summary.bytes) / (1 << 20), to.c_str());
  } else {
    FRUGAL_CHECK(!args.has("fp8") && !args.options.count("shard-mb"),
                 "{}: --fp8 and --shard-mb apply to exports (from a frugal checkpoint); this is "
                 "a Hugging Face directory, which is imported", from);
    summary = import_hf_checkpoint(from, to);
    std::printf("imported %lld tensors from %lld shard(s) (%lld FP8 dequantized), %.1f MiB F32: %s\n",
                static_cast<long long>(summary.tensors),
                static_cast<long long>(summary.shards),
                static_cast<long long>(summary.fp8_tensors),
                static_cast<double>(summary.bytes) / (1 << 20), to.c_str());
  }
  for (const std::string& note : summary.notes) std::printf("note: %s\n", note.c_str());
  return 0;
}

}  // namespace frugal
