// `frugal data clean` in one call: read documents from files and folders, clean and filter them,
// remove exact and near duplicates, write the survivors, and return the report.
//
//   CleanOptions options;                       // defaults: see clean_options.h
//   CleanReport report = clean_corpus(options, {"raw/", "extra.jsonl.zst"}, "clean.jsonl.zst");
//   std::fputs(report.to_table().c_str(), stdout);
//
// Streaming: documents are read in batches of options.batch_bytes / batch_documents (the next
// batch is read while the current one is processed); each batch is cleaned and fingerprinted in
// parallel (OpenMP, options.threads), then decided and written in input order by one thread. Memory
// is about two batches plus the deduplication index (dedup.h), whatever the corpus size; a single
// document is held whole.
// Deterministic: documents are independent until the sequential stage, so the output file and every
// count of the report (all but `threads` and `seconds`) are identical for any thread count and
// batch size.
// Errors (a missing input, a truncated or corrupt .zst, a bad output name, bad options) throw
// frugal::Error naming the file; the output path is then left as it was.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "data/clean/clean_options.h"
#include "data/clean/clean_report.h"

namespace frugal::clean {

// `on_batch`, when given, is called after each batch with the report so far (for progress).
CleanReport clean_corpus(const CleanOptions& options, const std::vector<std::string>& inputs,
                         const std::string& output_path,
                         const std::function<void(const CleanReport&)>& on_batch = nullptr);

}  // namespace frugal::clean
