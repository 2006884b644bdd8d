// Report totals, JSON and table output (see clean_report.h).
#include "data/clean/clean_report.h"

#include <fmt/format.h>

namespace frugal::clean {
namespace {

std::string grouped(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return value < 0 ? "-" + out : out;
}

std::string percent(int64_t part, int64_t whole) {
  if (whole == 0) return "-";
  return fmt::format("{:.1f}%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

nlohmann::json count_json(const RuleCount& c) {
  return {{"documents", c.documents}, {"bytes", c.bytes}};
}

}  // namespace

int64_t CleanReport::documents_removed() const {
  int64_t total = 0;
  for (const RuleCount& c : removed) total += c.documents;
  return total;
}

int64_t CleanReport::bytes_removed_by_rules() const {
  int64_t total = 0;
  for (const RuleCount& c : removed) total += c.bytes;
  return total;
}

int64_t CleanReport::bytes_removed_by_transforms() const {
  int64_t total = 0;
  for (const RuleCount& c : transformed) total += c.bytes;
  return total;
}

void CleanReport::add_warning(std::string message) {
  ++warning_count;
  if (warnings.size() < kMaxStoredWarnings) warnings.push_back(std::move(message));
}

nlohmann::json CleanReport::to_json() const {
  nlohmann::json removed_json = nlohmann::json::object();
  for (int r = 0; r < kRuleCount; ++r) {
    removed_json[std::string(rule_name(static_cast<Rule>(r)))] = count_json(removed[r]);
  }
  nlohmann::json transformed_json = nlohmann::json::object();
  for (int t = 0; t < kTransformCount; ++t) {
    transformed_json[std::string(transform_name(static_cast<Transform>(t)))] =
        count_json(transformed[t]);
  }
  return {
      {"input_files", input_files},
      {"output", output_path},
      {"documents_in", documents_in},
      {"bytes_in", bytes_in},
      {"documents_out", documents_out},
      {"bytes_out", bytes_out},
      {"malformed_lines", malformed_lines},
      {"removed", removed_json},
      {"transformed", transformed_json},
      {"dedup",
       {{"shingle_size", shingle_size},
        {"num_perm", num_perm},
        {"lsh_bands", lsh_bands},
        {"lsh_rows", lsh_rows},
        {"threshold", threshold},
        {"near_duplicate_candidates", near_duplicate_candidates},
        {"index_bytes", dedup_index_bytes}}},
      {"warning_count", warning_count},
      {"warnings", warnings},
      {"threads", threads},
      {"seconds", seconds},
  };
}

std::string CleanReport::to_table() const {
  std::string out;
  const double mb_per_s = seconds > 0 ? static_cast<double>(bytes_in) / 1e6 / seconds : 0.0;
  out += fmt::format("cleaned {} file{} -> {} ({} thread{}, {:.2f} s, {:.1f} MB/s)\n",
                     input_files.size(), input_files.size() == 1 ? "" : "s", output_path, threads,
                     threads == 1 ? "" : "s", seconds, mb_per_s);
  auto row = [&](const std::string& name, int64_t documents, int64_t bytes) {
    out += fmt::format("  {:<28} {:>13} {:>7} {:>17} {:>7}\n", name, grouped(documents),
                       percent(documents, documents_in), grouped(bytes), percent(bytes, bytes_in));
  };
  out += fmt::format("  {:<28} {:>13} {:>7} {:>17} {:>7}\n", "", "documents", "", "bytes", "");
  row("in", documents_in, bytes_in);
  row("out", documents_out, bytes_out);
  if (malformed_lines > 0) out += fmt::format("  malformed JSONL lines skipped: {}\n", grouped(malformed_lines));
  bool any = false;
  for (int t = 0; t < kTransformCount; ++t) {
    if (transformed[t].documents == 0) continue;
    if (!any) out += "transforms (documents changed, net bytes removed):\n";
    any = true;
    row(std::string(transform_name(static_cast<Transform>(t))), transformed[t].documents,
        transformed[t].bytes);
  }
  any = false;
  for (int r = 0; r < kRuleCount; ++r) {
    if (removed[r].documents == 0) continue;
    if (!any) out += "rules (documents removed, their bytes; first failing rule counts):\n";
    any = true;
    row(std::string(rule_name(static_cast<Rule>(r))), removed[r].documents, removed[r].bytes);
  }
  if (num_perm > 0) {
    out += fmt::format(
        "dedup: MinHash {} functions, {}-unit shingles, LSH {} bands x {} rows, threshold {:.2f}; "
        "{} candidate pairs checked; index {:.1f} MiB\n",
        num_perm, shingle_size, lsh_bands, lsh_rows, threshold, grouped(near_duplicate_candidates),
        static_cast<double>(dedup_index_bytes) / (1 << 20));
  }
  if (warning_count > 0) {
    out += fmt::format("warnings: {}\n", grouped(warning_count));
    for (size_t i = 0; i < warnings.size() && i < 5; ++i) out += "  " + warnings[i] + "\n";
    if (warning_count > 5) out += "  ...\n";
  }
  return out;
}

}  // namespace frugal::clean
