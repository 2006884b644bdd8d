// The report of a cleaning run: documents and bytes in and out, what each transform changed and
// what each rule removed, deduplication figures, warnings. Printable as a table and as JSON.
//
// Accounting (holds exactly; the tests check it):
//   documents_in = documents_out + sum over rules of removed[rule].documents
//   bytes_in     = bytes_out + sum over rules of removed[rule].bytes
//                            + sum over transforms of transformed[t].bytes
// where bytes are document text bytes (no separators, no JSON syntax), removed[rule].bytes is the
// size of the text when the rule fired and transformed[t].bytes the net bytes a transform removed
// (negative for utf8_repair, which grows the text). Malformed JSONL lines are not documents: they
// are counted in malformed_lines only.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "data/clean/clean_options.h"

namespace frugal::clean {

constexpr size_t kMaxStoredWarnings = 100;

struct RuleCount {
  int64_t documents = 0;
  int64_t bytes = 0;
};

struct CleanReport {
  std::vector<std::string> input_files;
  std::string output_path;
  int64_t documents_in = 0;
  int64_t bytes_in = 0;
  int64_t documents_out = 0;
  int64_t bytes_out = 0;
  int64_t malformed_lines = 0;
  std::array<RuleCount, kRuleCount> removed{};            // indexed by Rule
  std::array<RuleCount, kTransformCount> transformed{};   // indexed by Transform

  // Deduplication settings in effect and work done.
  int shingle_size = 0;
  int num_perm = 0;
  int lsh_bands = 0;
  int lsh_rows = 0;
  double threshold = 0;
  int64_t near_duplicate_candidates = 0;  // candidate pairs whose similarity was estimated
  int64_t dedup_index_bytes = 0;

  int64_t warning_count = 0;
  std::vector<std::string> warnings;  // the first kMaxStoredWarnings

  int threads = 0;
  double seconds = 0;

  const RuleCount& removed_by(Rule rule) const { return removed[static_cast<int>(rule)]; }
  const RuleCount& transformed_by(Transform t) const { return transformed[static_cast<int>(t)]; }
  int64_t documents_removed() const;
  int64_t bytes_removed_by_rules() const;
  int64_t bytes_removed_by_transforms() const;
  void add_warning(std::string message);

  // Everything, including zero counts, under stable keys.
  nlohmann::json to_json() const;
  // A human-readable table: totals, then the transforms and rules with non-zero counts.
  std::string to_table() const;
};

}  // namespace frugal::clean
