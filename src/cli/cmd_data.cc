// frugal data <tokenizer-train | clean | tokenize | stats>: from raw text to token datasets.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/data_common.h"
#include "core/parse_int.h"
#include "data/clean/clean_corpus.h"
#include "data/shards/dataset.h"
#include "data/shards/shard_writer.h"
#include "data/shards/stats.h"
#include "data/tokenizer/bpe_trainer.h"
#include "data/tokenizer/utf8.h"
#include "io/atomic_file.h"
#include "train/metrics.h"

namespace frugal {
namespace {

constexpr const char* kHelp =
    "usage: frugal data <command> [options]\n"
    "\n"
    "  tokenizer-train INPUT... --vocab-size N --out tokenizer.json   learn a byte-level BPE\n"
    "  clean INPUT... --out FILE                 filter, repair and deduplicate documents\n"
    "  tokenize INPUT... --tokenizer T.json --out DIR   write a token dataset for frugal train\n"
    "  stats DIR                                  describe a token dataset\n"
    "\n"
    "INPUT: files or folders of .txt / .jsonl, optionally .zst compressed. In text files a line\n"
    "<|endoftext|> separates documents; JSONL documents are the --text-field string of each record.\n"
    "Run 'frugal data <command> --help' for each command's options.\n";

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int64_t parse_int(const ParsedArgs& args, const std::string& name, int64_t fallback) {
  std::string v = args.option(name);
  if (v.empty()) return fallback;
  const std::optional<int64_t> parsed = parse_int64(v);
  if (!parsed) fail("--{}: '{}' is not an integer", name, v);
  return *parsed;
}

double parse_double(const ParsedArgs& args, const std::string& name, double fallback) {
  std::string v = args.option(name);
  if (v.empty()) return fallback;
  try {
    size_t used = 0;
    double out = std::stod(v, &used);
    FRUGAL_CHECK(used == v.size(), "x");
    return out;
  } catch (const std::exception&) {
    fail("--{}: '{}' is not a number", name, v);
  }
}

// --max-document-mb (default 64) in bytes.
int64_t max_document_bytes(const ParsedArgs& args) {
  const int64_t mb = parse_int(args, "max-document-mb", 64);
  FRUGAL_CHECK(mb > 0 && mb <= (int64_t{1} << 20), "--max-document-mb must be in [1, {}], got {}",
               int64_t{1} << 20, mb);
  return mb << 20;
}

// "3 empty documents, 1 document larger than --max-document-mb, 2 malformed JSONL lines"
// (nonzero counts only), or "" when nothing was skipped.
std::string skipped_note(const DocumentTextReader& reader, int64_t empty) {
  std::string note;
  auto add = [&note](int64_t count, const char* what) {
    if (count > 0) note += fmt::format("{}{} {}", note.empty() ? "" : ", ", count, what);
  };
  add(empty, empty == 1 ? "empty document" : "empty documents");
  add(reader.oversized(), reader.oversized() == 1 ? "document larger than --max-document-mb"
                                                  : "documents larger than --max-document-mb");
  add(reader.malformed(), reader.malformed() == 1 ? "malformed JSONL line" : "malformed JSONL lines");
  return note;
}

// index.json and shard-NNNNN.bin files.
bool is_dataset_file_name(const std::string& name) {
  if (name == kIndexFileName) return true;
  if (name.size() < 15 || name.rfind("shard-", 0) != 0 || name.substr(name.size() - 4) != ".bin")
    return false;
  return std::all_of(name.begin() + 6, name.end() - 4, [](char c) { return c >= '0' && c <= '9'; });
}

// The dataset files in `dir`: index.json first (removing it first makes the old dataset stop
// opening), then the shards in name order.
std::vector<std::filesystem::path> dataset_files_in(const std::string& dir) {
  std::vector<std::filesystem::path> files;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error))
    if (is_dataset_file_name(entry.path().filename().string())) files.push_back(entry.path());
  FRUGAL_CHECK(!error, "cannot list {}: {}", dir, error.message());
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) {
    const bool a_index = a.filename() == kIndexFileName, b_index = b.filename() == kIndexFileName;
    return a_index != b_index ? a_index : a < b;
  });
  return files;
}

void check_dataset_output(const std::string& out, bool overwrite) {
  std::error_code error;
  const auto status = std::filesystem::status(out, error);
  if (!std::filesystem::exists(status)) return;
  FRUGAL_CHECK(std::filesystem::is_directory(status), "--out {} exists and is not a directory",
               out);
  const auto existing = dataset_files_in(out);
  FRUGAL_CHECK(overwrite || existing.empty(),
               "{} already holds a dataset ({} files); pass --overwrite to replace it", out,
               existing.size());
}

// "<out>.partial-<pid>", a sibling of --out (same file system, so the final moves are renames).
std::string staging_dir_for(const std::string& out) {
  std::filesystem::path path = std::filesystem::path(out).lexically_normal();
  if (!path.has_filename()) path = path.parent_path();
  return fmt::format("{}.partial-{}", path.string(), ::getpid());
}

// Replaces the dataset files of `out` (created when missing; other files kept) by those of
// `staging`, the index last, and removes `staging`.
void move_dataset_into_place(const std::string& staging, const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::create_directories(out, error);
  FRUGAL_CHECK(!error && fs::is_directory(out), "{}: cannot create the dataset directory: {}",
               out, error.message());
  for (const fs::path& old : dataset_files_in(out)) {
    fs::remove(old, error);
    FRUGAL_CHECK(!error, "cannot remove {}: {}", old.string(), error.message());
  }
  std::vector<fs::path> fresh = dataset_files_in(staging);
  FRUGAL_CHECK(!fresh.empty(), "{}: no dataset was written", staging);
  std::rotate(fresh.begin(), fresh.begin() + 1, fresh.end());  // index.json last
  for (const fs::path& file : fresh) {
    fs::rename(file, fs::path(out) / file.filename(), error);
    FRUGAL_CHECK(!error, "cannot move {} into {}: {}", file.string(), out, error.message());
  }
  fs::remove(staging, error);
}

void require_inputs(const ParsedArgs& args, const char* command) {
  FRUGAL_CHECK(!args.positional.empty(), "data {} needs at least one input file or folder", command);
  FRUGAL_CHECK(args.overrides.empty(), "data {} takes no --section.key settings (got --{})", command,
               args.overrides.front());
}

// ---------------------------------------------------------------------------------------------
constexpr const char* kTokenizerTrainHelp =
    "usage: frugal data tokenizer-train INPUT... --vocab-size N --out tokenizer.json [options]\n"
    "\n"
    "Learns a byte-level BPE tokenizer (Hugging Face tokenizer.json) with DeepSeek-V3's special\n"
    "tokens (BOS, EOS, PAD, FIM, chat roles) as the first ids.\n"
    "  --vocab-size N        vocabulary size including the special tokens (required)\n"
    "  --out FILE            where to write tokenizer.json (required; never overwritten unless\n"
    "                        --overwrite)\n"
    "  --pre-tokenizer P     deepseek (default: DeepSeek-V3's split regexes) or gpt2\n"
    "  --nfc                 NFC-normalize the text first\n"
    "  --min-frequency N     merges need at least N occurrences (default 0)\n"
    "  --max-mb N            read at most N MB of text (default: all)\n"
    "  --max-document-mb N   documents larger than this are skipped and counted (default 64)\n"
    "  --text-field F        JSONL text field (default text)\n"
    "  --paragraphs          blank lines separate documents too\n"
    "  --threads N           0 = all cores\n";

int data_tokenizer_train(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(argv,
                               {"vocab-size", "out", "pre-tokenizer", "min-frequency", "max-mb",
                                "max-document-mb", "text-field", "threads"},
                               {"help", "nfc", "paragraphs", "overwrite"});
  if (args.has("help")) return std::fputs(kTokenizerTrainHelp, stdout), 0;
  require_inputs(args, "tokenizer-train");
  const std::string out = args.option("out");
  FRUGAL_CHECK(!out.empty(), "data tokenizer-train needs --out FILE");
  FRUGAL_CHECK(!std::filesystem::is_directory(out), "--out {} is a directory, not a file", out);
  FRUGAL_CHECK(args.has("overwrite") || !std::filesystem::exists(out),
               "{} exists; pass --overwrite to replace it", out);
  BpeTrainOptions options;
  options.vocab_size = parse_int(args, "vocab-size", 0);
  FRUGAL_CHECK(options.vocab_size > 0, "data tokenizer-train needs --vocab-size N");
  const int64_t base_ids = static_cast<int64_t>(options.special_tokens.size()) + 256;
  FRUGAL_CHECK(options.vocab_size > base_ids,
               "--vocab-size {} leaves no room for merges: the {} special tokens and 256 byte "
               "tokens take {} ids",
               options.vocab_size, options.special_tokens.size(), base_ids);
  options.min_frequency = parse_int(args, "min-frequency", 0);
  options.nfc = args.has("nfc");
  options.threads = static_cast<int>(parse_int(args, "threads", 0));
  const std::string pre = args.option("pre-tokenizer", "deepseek");
  if (pre == "gpt2")
    options.pre_tokenizer = tok::PreTokenizerConfig::gpt2();
  else
    FRUGAL_CHECK(pre == "deepseek", "--pre-tokenizer: '{}' is not deepseek or gpt2", pre);
  const int64_t max_bytes = parse_int(args, "max-mb", 0) * 1000000;
  FRUGAL_CHECK(max_bytes >= 0, "--max-mb must not be negative");

  auto start = std::chrono::steady_clock::now();
  DocumentTextReader reader(args.positional, args.option("text-field", "text"),
                            args.has("paragraphs"), max_document_bytes(args));
  std::vector<std::string> documents;
  int64_t bytes = 0, invalid_utf8 = 0;
  ProgressBar progress("read", static_cast<int64_t>(reader.total_input_bytes()));
  while (max_bytes == 0 || bytes < max_bytes) {
    const size_t before = documents.size();
    if (!reader.next_batch(documents, size_t{16} << 20)) break;
    for (size_t i = before; i < documents.size(); ++i) {
      bytes += static_cast<int64_t>(documents[i].size());
      if (!tok::is_valid_utf8(documents[i])) ++invalid_utf8;
    }
    progress.update(static_cast<int64_t>(reader.input_bytes_read()));
  }
  progress.finish();
  const std::string skipped = skipped_note(reader, 0);
  FRUGAL_CHECK(bytes > 0, "{}: no text to train on{}", describe_files(reader.files()),
               skipped.empty() ? "" : " (" + skipped + ")");
  std::printf("read %zu documents, %.1f MB from %zu files", documents.size(),
              static_cast<double>(bytes) / 1e6, reader.files().size());
  if (invalid_utf8 > 0)
    std::printf(", %lld with invalid UTF-8 (read as U+FFFD)", static_cast<long long>(invalid_utf8));
  std::printf("%s%s\n", skipped.empty() ? "" : "; skipped ", skipped.c_str());
  Tokenizer tokenizer = train_bpe(std::span<const std::string>(documents), options);
  tokenizer.save(out);
  std::printf("wrote %s: %lld tokens, %lld merges, hash %s (%.1f s)\n", out.c_str(),
              static_cast<long long>(tokenizer.vocab_size()),
              static_cast<long long>(tokenizer.merge_count()), tokenizer_hash_hex(tokenizer).c_str(),
              seconds_since(start));
  if (tokenizer.vocab_size() < options.vocab_size)
    std::printf("note: %lld tokens, not --vocab-size %lld: no pair left to merge%s\n",
                static_cast<long long>(tokenizer.vocab_size()),
                static_cast<long long>(options.vocab_size),
                options.min_frequency > 1 ? " at least --min-frequency times" : "");
  return 0;
}

// ---------------------------------------------------------------------------------------------
constexpr const char* kCleanHelp =
    "usage: frugal data clean INPUT... --out FILE [options]\n"
    "\n"
    "Repairs, filters and deduplicates documents; writes FILE (.txt or .jsonl, optionally .zst)\n"
    "atomically and prints how many documents and bytes each rule removed.\n"
    "  --language L          en (default; all Gopher rules), zh (character-based), other (no\n"
    "                        English-specific rules)\n"
    "  --markup M            html (default), xml or off\n"
    "  --invalid-utf8 P      repair (default) or drop\n"
    "  --remove-urls         remove URLs     --remove-emails   remove e-mail addresses\n"
    "  --no-quality          skip the Gopher quality rules\n"
    "  --no-repetition       skip the Gopher repetition rules\n"
    "  --disable RULE        turn one rule off (repeatable as a comma list, e.g. too_many_words)\n"
    "  --max-words N         the too_many_words limit (default 100000; books need more)\n"
    "  --no-dedup            no deduplication     --no-near-dedup   exact duplicates only\n"
    "  --near-threshold T    MinHash/LSH Jaccard threshold (default 0.8)\n"
    "  --text-field F        JSONL text field (default text)\n"
    "  --paragraphs          blank lines separate documents too\n"
    "  --threads N           0 = all cores\n"
    "  --report FILE.json    also write the report as JSON\n"
    "  --overwrite           replace an existing FILE\n";

int data_clean(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(argv,
                               {"out", "language", "markup", "invalid-utf8", "disable", "max-words",
                                "near-threshold", "text-field", "threads", "report"},
                               {"help", "remove-urls", "remove-emails", "no-quality",
                                "no-repetition", "no-dedup", "no-near-dedup", "paragraphs",
                                "overwrite"});
  if (args.has("help")) return std::fputs(kCleanHelp, stdout), 0;
  require_inputs(args, "clean");
  const std::string out = args.option("out");
  FRUGAL_CHECK(!out.empty(), "data clean needs --out FILE");
  FRUGAL_CHECK(args.has("overwrite") || !std::filesystem::exists(out),
               "{} exists; pass --overwrite to replace it", out);
  clean::CleanOptions options;
  options.language = clean::parse_language(args.option("language", "en"));
  options.markup = clean::parse_markup_mode(args.option("markup", "html"));
  options.invalid_utf8 = clean::parse_utf8_policy(args.option("invalid-utf8", "repair"));
  options.remove_urls = args.has("remove-urls");
  options.remove_emails = args.has("remove-emails");
  options.quality_rules = !args.has("no-quality");
  options.repetition_rules = !args.has("no-repetition");
  options.quality.max_words = parse_int(args, "max-words", options.quality.max_words);
  options.dedup.exact = !args.has("no-dedup");
  options.dedup.near = !args.has("no-dedup") && !args.has("no-near-dedup");
  options.dedup.threshold = parse_double(args, "near-threshold", options.dedup.threshold);
  options.jsonl_text_field = args.option("text-field", "text");
  if (args.has("paragraphs")) options.text_documents = clean::TextDocuments::paragraph;
  options.threads = static_cast<int>(parse_int(args, "threads", 0));
  std::string disabled = args.option("disable");
  for (size_t pos = 0; !disabled.empty() && pos <= disabled.size();) {
    size_t comma = disabled.find(',', pos);
    if (comma == std::string::npos) comma = disabled.size();
    options.disabled_rules.push_back(clean::parse_rule(disabled.substr(pos, comma - pos)));
    pos = comma + 1;
  }
  options.on_warning = [](const std::string& w) { std::fprintf(stderr, "warning: %s\n", w.c_str()); };
  clean::validate_options(options);

  clean::CleanReport report = clean::clean_corpus(options, args.positional, out);
  std::printf("%s\n", report.to_table().c_str());
  if (!args.option("report").empty())
    write_file_atomic(args.option("report"), report.to_json().dump(2) + "\n");
  return 0;
}

// ---------------------------------------------------------------------------------------------
constexpr const char* kTokenizeHelp =
    "usage: frugal data tokenize INPUT... --tokenizer tokenizer.json --out DIR [options]\n"
    "\n"
    "Encodes every document and writes a token dataset (index.json + shard files, uint16 ids when\n"
    "the vocabulary fits, else uint32) that records the tokenizer's hash: frugal train refuses it\n"
    "with any other tokenizer.\n"
    "  --shard-mb N            shard size (default 256)\n"
    "  --max-document-mb N     documents larger than this are skipped and counted (default 64)\n"
    "  --text-field F          JSONL text field (default text)\n"
    "  --paragraphs            blank lines separate documents too\n"
    "  --threads N             0 = all cores\n"
    "  --overwrite             replace an existing dataset in DIR\n";

int data_tokenize(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(
      argv, {"tokenizer", "out", "shard-mb", "max-document-mb", "text-field", "threads"},
      {"help", "paragraphs", "overwrite"});
  if (args.has("help")) return std::fputs(kTokenizeHelp, stdout), 0;
  require_inputs(args, "tokenize");
  const std::string tokenizer_path = args.option("tokenizer");
  const std::string out = args.option("out");
  FRUGAL_CHECK(!tokenizer_path.empty(), "data tokenize needs --tokenizer tokenizer.json");
  FRUGAL_CHECK(!out.empty(), "data tokenize needs --out DIR");
  const bool overwrite = args.has("overwrite");
  check_dataset_output(out, overwrite);
  const Tokenizer tokenizer = Tokenizer::from_file(tokenizer_path);
  FRUGAL_CHECK(tokenizer.eos_id().has_value(),
               "{}: the tokenizer has no end-of-document token, which packing needs",
               tokenizer_path);
  FRUGAL_CHECK(tokenizer.vocab_size() <= (int64_t{1} << 32),
               "{}: {} token ids do not fit the uint32 ids of a token dataset", tokenizer_path,
               tokenizer.vocab_size());
  const int threads = static_cast<int>(parse_int(args, "threads", 0));
  ShardWriterOptions writer_options;
  writer_options.max_shard_bytes = parse_int(args, "shard-mb", 256) << 20;
  FRUGAL_CHECK(writer_options.max_shard_bytes > 0, "--shard-mb must be positive");
  DocumentTextReader reader(args.positional, args.option("text-field", "text"),
                            args.has("paragraphs"), max_document_bytes(args));
  writer_options.creation = {{"inputs", reader.files()}, {"tokenizer", tokenizer_path}};
  const TokenizerIdentity identity = tokenizer_identity(tokenizer);
  check_tokenizer_identity(identity, tokenizer_path);
  std::printf("tokenizer %s: %lld ids, hash %s, tokens stored as %s\n", tokenizer_path.c_str(),
              static_cast<long long>(identity.vocab_size), identity.hash.c_str(),
              dtype_name(token_bytes_for_vocab(identity.vocab_size)));
  std::fflush(stdout);

  // Everything is written into a staging directory next to --out and moved in only when the
  // whole input was read: a failure leaves --out as it was.
  // (An interrupted run leaves the staging directory, <out>.partial-<pid>, behind.)
  const std::string staging = staging_dir_for(out);
  std::error_code ignored;
  std::filesystem::remove_all(staging, ignored);
  std::filesystem::path created = staging;  // the outermost directory this run creates
  for (auto p = created.parent_path(); !p.empty() && !std::filesystem::exists(p, ignored);
       p = p.parent_path())
    created = p;
  auto start = std::chrono::steady_clock::now();
  int64_t bytes = 0, empty = 0, invalid_utf8 = 0;
  ShardWriterSummary summary;
  try {
    ShardWriter writer(staging, identity, writer_options);
    ProgressBar progress("tokenize", static_cast<int64_t>(reader.total_input_bytes()));
    std::vector<std::string> texts;
    while (reader.next_batch(texts, size_t{64} << 20)) {
      std::vector<std::string_view> kept;
      for (const std::string& t : texts) {
        bytes += static_cast<int64_t>(t.size());
        if (t.empty()) {
          ++empty;
          continue;
        }
        if (!tok::is_valid_utf8(t)) ++invalid_utf8;
        kept.push_back(t);
      }
      auto ids = tokenizer.encode_batch(std::span<const std::string_view>(kept), false, threads);
      for (auto& doc : ids) writer.add_document(doc);
      texts.clear();
      progress.update(static_cast<int64_t>(reader.input_bytes_read()));
    }
    progress.finish();
    const std::string skipped = skipped_note(reader, empty);
    FRUGAL_CHECK(writer.documents_written() > 0, "{}: no documents to tokenize{}",
                 describe_files(reader.files()), skipped.empty() ? "" : " (" + skipped + ")");
    summary = writer.finish();
    move_dataset_into_place(staging, out);
  } catch (...) {
    std::filesystem::remove_all(created, ignored);
    throw;
  }
  const double seconds = seconds_since(start);
  std::printf("wrote %s: %lld documents, %lld tokens in %lld shards (%.2f bytes/token, %.1f MB/s)\n",
              out.c_str(), static_cast<long long>(summary.documents),
              static_cast<long long>(summary.tokens), static_cast<long long>(summary.shards),
              summary.tokens ? static_cast<double>(bytes) / static_cast<double>(summary.tokens) : 0.0,
              static_cast<double>(bytes) / 1e6 / std::max(seconds, 1e-9));
  if (invalid_utf8 > 0)
    std::printf("%lld documents had invalid UTF-8 (encoded as U+FFFD)\n",
                static_cast<long long>(invalid_utf8));
  const std::string skipped = skipped_note(reader, empty);
  if (!skipped.empty()) std::printf("skipped %s\n", skipped.c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------
int data_stats(const std::vector<std::string>& argv) {
  ParsedArgs args = parse_args(argv, {}, {"help", "json", "verify"});
  if (args.has("help"))
    return std::fputs("usage: frugal data stats DIR [--json] [--verify]\n\nDescribes a token "
                      "dataset; --verify also reads every token and checks the checksums.\n",
                      stdout),
           0;
  FRUGAL_CHECK(args.positional.size() == 1, "data stats takes one dataset directory");
  Dataset dataset = Dataset::open(args.positional[0]);
  if (args.has("verify")) dataset.verify();
  DatasetStats stats = compute_stats(dataset);
  if (args.has("json"))
    std::printf("%s\n", stats_json(stats).dump(2).c_str());
  else
    std::printf("%s\n", stats_table(stats).c_str());
  return 0;
}

}  // namespace

int cmd_data(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::fputs(kHelp, argv.empty() ? stderr : stdout);
    return argv.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "tokenizer-train") return data_tokenizer_train(rest);
  if (argv[0] == "clean") return data_clean(rest);
  if (argv[0] == "tokenize") return data_tokenize(rest);
  if (argv[0] == "stats") return data_stats(rest);
  fail("unknown data command '{}' (tokenizer-train, clean, tokenize, stats)", argv[0]);
}

}  // namespace frugal
