// Throughput of document cleaning + deduplication (clean_corpus) on given inputs: prints the
// cleaning report and MB/s of input text, writes JSON with --json FILE.
//   build/bench_clean ../shared/data/gutenberg_en_train.txt.zst [--threads N] [--out FILE]
//       [--language en|other|zh] [--text-documents separator|paragraph] [--no-quality] [--no-repetition] [--no-dedup]
//       [--threshold T] [--num-perm N] [--shingle N] [--json FILE]
// Without --out the cleaned output goes to a temporary .txt file that is deleted afterwards.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/clean/clean_corpus.h"
#include "train/metrics.h"

using namespace frugal;
using namespace frugal::clean;

int main(int argc, char** argv) {
  std::vector<std::string> inputs;
  std::string json_path, out_path;
  CleanOptions options;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        FRUGAL_CHECK(i + 1 < argc, "{} needs a value", a);
        return argv[++i];
      };
      if (a == "--threads") options.threads = std::stoi(value());
      else if (a == "--out") out_path = value();
      else if (a == "--json") json_path = value();
      else if (a == "--language") options.language = parse_language(value());
      else if (a == "--text-documents") options.text_documents = parse_text_documents(value());
      else if (a == "--no-quality") options.quality_rules = false;
      else if (a == "--no-repetition") options.repetition_rules = false;
      else if (a == "--no-dedup") options.dedup.exact = options.dedup.near = false;
      else if (a == "--threshold") options.dedup.threshold = std::stod(value());
      else if (a == "--num-perm") options.dedup.num_perm = std::stoi(value());
      else if (a == "--shingle") options.dedup.shingle_size = std::stoi(value());
      else if (!a.empty() && a[0] == '-') fail("unknown option {}", a);
      else inputs.push_back(a);
    }
    if (inputs.empty()) {
      std::fprintf(stderr,
                   "usage: bench_clean INPUT... [--threads N] [--out FILE] [--language L] "
                   "[--text-documents separator|paragraph] "
                   "[--no-quality] [--no-repetition] [--no-dedup] [--threshold T] [--num-perm N] "
                   "[--shingle N] [--json FILE]\n");
      return 2;
    }
    const bool temporary_output = out_path.empty();
    if (temporary_output) {
      out_path = (std::filesystem::temp_directory_path() /
                  ("frugal_bench_clean_" + std::to_string(::getpid()) + ".txt"))
                     .string();
    }
    const CleanReport report = clean_corpus(options, inputs, out_path);
    if (temporary_output) std::filesystem::remove(out_path);
    const double mb_per_s = static_cast<double>(report.bytes_in) / 1e6 / report.seconds;
    std::fputs(report.to_table().c_str(), stdout);
    std::printf("throughput: %.1f MB/s of input text (%d threads), peak RSS %.0f MiB\n", mb_per_s,
                report.threads, static_cast<double>(peak_rss_bytes()) / (1 << 20));
    if (!json_path.empty()) {
      nlohmann::json results = {{"inputs", inputs},
                                {"threads", report.threads},
                                {"seconds", report.seconds},
                                {"mb_per_s", mb_per_s},
                                {"peak_rss_bytes", peak_rss_bytes()},
                                {"report", report.to_json()}};
      std::ofstream(json_path) << results.dump(2) << "\n";
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_clean: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_clean: %s\n", e.what());
    return 1;
  }
  return 0;
}
