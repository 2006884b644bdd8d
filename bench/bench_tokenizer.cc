// Byte-level BPE tokenizer benchmark: encode throughput (1 thread and all threads), training time
// for a corpus size and vocabulary, and bytes per token on a file. Prints a table and writes JSON
// (--json FILE).
//
//   build/bench_tokenizer --tokenizer T.json --text FILE            encode MB/s (+ bytes/token)
//   build/bench_tokenizer --train FILE [--train-mb N] [--vocab N]    training time (DeepSeek
//         [--save OUT.json] [--eval FILE]                             pre-tokenizer and specials)
//   common: [--threads N] [--text-mb N] [--no-cache] [--json OUT]
//
// Texts are read with read_text_file (.txt or .zst) and split into documents at the corpus
// separator line "<|endoftext|>". For encoding, documents are further cut after a newline into
// pieces of at most 64 KiB so that every thread has work; the encode time is the best of 3 runs
// after a warm-up (tools/make_tokenizer_golden.py measures the tokenizers library the same way).
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "data/tokenizer/bpe_trainer.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "io/text_file.h"

using namespace frugal;

namespace {


// Pieces of at most max_bytes, cut after a '\n' (or at max_bytes when a line is longer).
std::vector<std::string> chunk_documents(const std::vector<std::string>& docs, size_t max_bytes) {
  std::vector<std::string> pieces;
  for (const std::string& doc : docs) {
    size_t start = 0;
    while (start < doc.size()) {
      size_t end = std::min(doc.size(), start + max_bytes);
      if (end < doc.size()) {
        const size_t newline = doc.rfind('\n', end - 1);
        if (newline != std::string::npos && newline >= start) end = newline + 1;
      }
      pieces.push_back(doc.substr(start, end - start));
      start = end;
    }
  }
  return pieces;
}

std::string read_prefix(const std::string& path, double megabytes) {
  std::string text = read_text_file(path);
  if (megabytes > 0 && text.size() > static_cast<size_t>(megabytes * 1e6)) {
    text.resize(static_cast<size_t>(megabytes * 1e6));
    const size_t newline = text.rfind('\n');
    if (newline != std::string::npos) text.resize(newline + 1);
  }
  return tok::sanitize_utf8(text);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct EncodeResult {
  double mb_per_s;
  double seconds;
  size_t tokens;
};

EncodeResult time_encode(const Tokenizer& tokenizer, const std::vector<std::string>& pieces,
                         size_t bytes, int threads) {
  tokenizer.encode_batch(std::span<const std::string>(pieces.data(), std::min<size_t>(pieces.size(), 64)),
                         false, threads);  // warm-up
  double seconds = 1e30;
  size_t tokens = 0;
  for (int run = 0; run < 3; ++run) {  // best of 3, as tools/make_tokenizer_golden.py measures
    const auto start = std::chrono::steady_clock::now();
    const auto ids = tokenizer.encode_batch(std::span<const std::string>(pieces), false, threads);
    seconds = std::min(seconds, seconds_since(start));
    tokens = 0;
    for (const auto& v : ids) tokens += v.size();
  }
  return {static_cast<double>(bytes) / 1e6 / seconds, seconds, tokens};
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, text_path, train_path, save_path, eval_path, json_path;
  double train_mb = 0, text_mb = 0;
  int64_t vocab = 32000;
  int threads = omp_get_max_threads();
  bool cache = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--tokenizer") tokenizer_path = next();
    else if (a == "--text") text_path = next();
    else if (a == "--text-mb") text_mb = std::stod(next());
    else if (a == "--train") train_path = next();
    else if (a == "--train-mb") train_mb = std::stod(next());
    else if (a == "--vocab") vocab = std::stoll(next());
    else if (a == "--save") save_path = next();
    else if (a == "--eval") eval_path = next();
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--no-cache") cache = false;
    else if (a == "--json") json_path = next();
    else {
      std::fprintf(stderr,
                   "usage: bench_tokenizer [--tokenizer T.json --text FILE [--text-mb N]] "
                   "[--train FILE [--train-mb N] [--vocab N] [--save OUT] [--eval FILE]] "
                   "[--threads N] [--no-cache] [--json OUT]\n");
      return 2;
    }
  }
  if (tokenizer_path.empty() && train_path.empty()) {
    std::fprintf(stderr, "bench_tokenizer: give --tokenizer and --text, or --train (see --help)\n");
    return 2;
  }
  nlohmann::json results = {{"threads", threads}};
  try {
    std::optional<Tokenizer> tokenizer;
    if (!train_path.empty()) {
      const std::string text = read_prefix(train_path, train_mb);
      const std::vector<std::string> docs = split_corpus_documents(text);
      BpeTrainOptions options;
      options.vocab_size = vocab;
      options.threads = threads;
      const auto start = std::chrono::steady_clock::now();
      tokenizer = train_bpe(std::span<const std::string>(docs), options);
      const double seconds = seconds_since(start);
      std::printf("%-28s %12s %10s %10s %10s\n", "training", "corpus MB", "documents", "vocab", "seconds");
      std::printf("%-28s %12.1f %10zu %10lld %10.1f\n", train_path.substr(train_path.rfind('/') + 1).c_str(),
                  static_cast<double>(text.size()) / 1e6, docs.size(),
                  static_cast<long long>(tokenizer->vocab_size()), seconds);
      results["train"] = {{"file", train_path}, {"corpus_bytes", text.size()},
                          {"documents", docs.size()}, {"vocab_size", tokenizer->vocab_size()},
                          {"merges", tokenizer->merge_count()}, {"seconds", seconds},
                          {"hash", fmt::format("{:016x}", tokenizer->hash())}};
      if (!save_path.empty()) tokenizer->save(save_path);
    } else {
      tokenizer = Tokenizer::from_file(tokenizer_path);
      results["tokenizer"] = tokenizer_path;
    }
    if (!cache) tokenizer->set_cache_capacity(0);
    if (!eval_path.empty()) {
      const std::string text = read_prefix(eval_path, 0);
      const std::vector<std::string> docs = split_corpus_documents(text);
      size_t tokens = 0;
      for (const auto& ids : tokenizer->encode_batch(std::span<const std::string>(docs), false, threads))
        tokens += ids.size();
      const double bpt = static_cast<double>(text.size()) / static_cast<double>(tokens);
      std::printf("%-28s %12s %10s %12s\n", "bytes per token", "MB", "tokens", "bytes/token");
      std::printf("%-28s %12.2f %10zu %12.4f\n", eval_path.substr(eval_path.rfind('/') + 1).c_str(),
                  static_cast<double>(text.size()) / 1e6, tokens, bpt);
      results["bytes_per_token"] = {{"file", eval_path}, {"bytes", text.size()}, {"tokens", tokens},
                                    {"bytes_per_token", bpt}};
    }
    if (!text_path.empty()) {
      const std::string text = read_prefix(text_path, text_mb);
      const std::vector<std::string> pieces = chunk_documents(split_corpus_documents(text), 64 * 1024);
      std::printf("%-28s %8s %10s %10s %12s\n", "encode", "threads", "MB/s", "seconds", "bytes/token");
      nlohmann::json rows = nlohmann::json::array();
      for (const int t : {1, threads}) {
        const EncodeResult r = time_encode(*tokenizer, pieces, text.size(), t);
        const double bpt = static_cast<double>(text.size()) / static_cast<double>(r.tokens);
        std::printf("%-28s %8d %10.2f %10.2f %12.4f\n",
                    text_path.substr(text_path.rfind('/') + 1).c_str(), t, r.mb_per_s, r.seconds, bpt);
        rows.push_back({{"threads", t}, {"mb_per_s", r.mb_per_s}, {"seconds", r.seconds},
                        {"tokens", r.tokens}, {"bytes_per_token", bpt}});
        if (threads == 1) break;
      }
      results["encode"] = {{"file", text_path}, {"bytes", text.size()}, {"pieces", pieces.size()},
                           {"cache", cache}, {"runs", rows}};
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << results.dump(2) << "\n";
  }
  return 0;
}
