// The cleaning pipeline: batched reading, parallel cleaning and fingerprinting, sequential
// deduplication and writing (see clean_corpus.h).
#include "data/clean/clean_corpus.h"

#include <omp.h>

#include <chrono>
#include <exception>
#include <future>
#include <optional>
#include <utility>

#include "core/error.h"
#include "data/clean/dedup.h"
#include "data/clean/document_filter.h"
#include "data/clean/document_io.h"

namespace frugal::clean {
namespace {

// One document after the parallel stage.
struct ProcessedDocument {
  bool malformed = false;
  std::string warning;
  int64_t bytes_in = 0;
  CleanedDocument cleaned;
  DocumentFingerprint fingerprint;
  std::string output;  // what the writer gets, when the document passed the filters
};

void process_document(RawDocument& raw, const CleanOptions& options, DocumentFormat output_format,
                      const std::vector<std::string>& files, const Deduplicator* dedup,
                      ProcessedDocument& out) {
  std::optional<nlohmann::ordered_json> record;
  std::string text;
  int64_t repair_bytes_removed = 0;
  bool repaired_line = false;
  if (raw.format == DocumentFormat::jsonl) {
    JsonlRecord parsed = parse_jsonl_record(raw.content, options.jsonl_text_field);
    if (!parsed.record.has_value()) {
      out.malformed = true;
      out.warning = fmt::format("{}:{}: {}", files[raw.file_index], raw.line, parsed.error);
      return;
    }
    record = std::move(parsed.record);
    text = std::move(parsed.text);
    repaired_line = parsed.invalid_utf8 > 0;
    repair_bytes_removed = parsed.repair_bytes_removed;
  } else {
    text = std::move(raw.content);
  }
  raw.content = std::string();
  out.bytes_in = static_cast<int64_t>(text.size()) + repair_bytes_removed;

  if (repaired_line && rule_enabled(options, Rule::invalid_utf8)) {
    out.cleaned.rule = Rule::invalid_utf8;
    out.cleaned.dropped_bytes = out.bytes_in;
    return;
  }
  out.cleaned = clean_document(text, options);
  text = std::string();
  if (repaired_line) {
    TransformEffect& effect = out.cleaned.transforms[static_cast<int>(Transform::utf8_repair)];
    effect.changed = true;
    effect.bytes_removed += repair_bytes_removed;
  }
  if (!out.cleaned.kept()) return;
  if (dedup != nullptr) out.fingerprint = dedup->fingerprint(out.cleaned.text);
  if (output_format == DocumentFormat::jsonl) {
    out.output = serialize_jsonl(record ? &*record : nullptr, options.jsonl_text_field,
                                 out.cleaned.text);
  }
}

}  // namespace

CleanReport clean_corpus(const CleanOptions& options, const std::vector<std::string>& inputs,
                         const std::string& output_path,
                         const std::function<void(const CleanReport&)>& on_batch) {
  const auto start = std::chrono::steady_clock::now();
  validate_options(options);
  const DocumentFormat output_format = output_format_of(output_path);
  CleanReport report;
  report.input_files = list_input_files(inputs, output_path);
  report.output_path = output_path;
  report.threads = options.threads > 0 ? options.threads : omp_get_max_threads();

  const bool dedup_enabled =
      rule_enabled(options, Rule::exact_duplicate) || rule_enabled(options, Rule::near_duplicate);
  std::optional<Deduplicator> dedup;
  if (dedup_enabled) {
    DedupOptions dedup_options = options.dedup;
    dedup_options.exact = rule_enabled(options, Rule::exact_duplicate);
    dedup_options.near = rule_enabled(options, Rule::near_duplicate);
    dedup.emplace(dedup_options, effective_shingle_size(options));
    if (dedup_options.near) {
      report.shingle_size = dedup->shingle_size();
      report.num_perm = options.dedup.num_perm;
      report.lsh_bands = dedup->shape().bands;
      report.lsh_rows = dedup->shape().rows;
      report.threshold = options.dedup.threshold;
    }
  }
  auto warn = [&](std::string message) {
    if (options.on_warning) options.on_warning(message);
    report.add_warning(std::move(message));
  };

  DocumentWriter writer(output_path, options.zstd_level);
  DocumentReader reader(report.input_files, options.text_documents);
  std::vector<RawDocument> batch;
  bool more = reader.read_batch(batch, options.batch_bytes, options.batch_documents);
  std::vector<ProcessedDocument> processed;
  while (more) {
    // Read the next batch while this one is processed.
    std::vector<RawDocument> next_batch;
    std::future<bool> next = std::async(std::launch::async, [&] {
      return reader.read_batch(next_batch, options.batch_bytes, options.batch_documents);
    });

    processed.clear();
    processed.resize(batch.size());
    const int64_t count = static_cast<int64_t>(batch.size());
    std::vector<std::exception_ptr> errors(batch.size());
    const Deduplicator* dedup_pointer = dedup ? &*dedup : nullptr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(report.threads)
    for (int64_t i = 0; i < count; ++i) {
      try {
        process_document(batch[i], options, output_format, report.input_files, dedup_pointer,
                         processed[i]);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    for (const std::exception_ptr& error : errors) {
      if (error) std::rethrow_exception(error);
    }

    // Sequential: warnings, counts, deduplication and output in input order.
    for (ProcessedDocument& doc : processed) {
      if (doc.malformed) {
        ++report.malformed_lines;
        warn(std::move(doc.warning));
        continue;
      }
      ++report.documents_in;
      report.bytes_in += doc.bytes_in;
      for (int t = 0; t < kTransformCount; ++t) {
        if (!doc.cleaned.transforms[t].changed) continue;
        ++report.transformed[t].documents;
        report.transformed[t].bytes += doc.cleaned.transforms[t].bytes_removed;
      }
      Rule rule = doc.cleaned.rule;
      int64_t dropped_bytes = doc.cleaned.dropped_bytes;
      if (rule == Rule::none && dedup) {
        const DedupDecision decision = dedup->add(doc.fingerprint);
        if (decision.verdict != DedupVerdict::unique) {
          rule = decision.verdict == DedupVerdict::exact_duplicate ? Rule::exact_duplicate
                                                                   : Rule::near_duplicate;
          dropped_bytes = static_cast<int64_t>(doc.cleaned.text.size());
        }
      }
      if (rule != Rule::none) {
        ++report.removed[static_cast<int>(rule)].documents;
        report.removed[static_cast<int>(rule)].bytes += dropped_bytes;
        continue;
      }
      writer.write(output_format == DocumentFormat::jsonl ? std::string_view(doc.output)
                                                          : std::string_view(doc.cleaned.text));
      ++report.documents_out;
      report.bytes_out += static_cast<int64_t>(doc.cleaned.text.size());
    }
    processed.clear();
    batch.clear();

    more = next.get();  // rethrows reading errors (a truncated .zst, ...)
    batch = std::move(next_batch);
    if (dedup) {
      report.near_duplicate_candidates = dedup->candidate_checks();
      report.dedup_index_bytes = static_cast<int64_t>(dedup->memory_bytes());
    }
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (on_batch) on_batch(report);
  }
  writer.commit();
  if (dedup) {
    report.near_duplicate_candidates = dedup->candidate_checks();
    report.dedup_index_bytes = static_cast<int64_t>(dedup->memory_bytes());
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace frugal::clean
