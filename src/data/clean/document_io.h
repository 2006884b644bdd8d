// Reading and writing documents as .txt or .jsonl, each optionally .zst compressed, streamed.
//
// Inputs: files and folders. A folder is searched recursively for *.txt, *.jsonl, *.txt.zst and
// *.jsonl.zst (hidden entries skipped), sorted by path (byte order) for determinism; files given
// by name are taken in the given order whatever their name. The output file is never read as an
// input. A name ending in .jsonl or .jsonl.zst is JSONL; anything else is text.
//
// Text: documents are separated by lines holding exactly "<|endoftext|>" (a trailing '\r'
// allowed). A document is the lines between separators joined with '\n' (so the newline before a
// separator and the file's final newline are not part of it); runs of zero lines (a separator at
// the start or end of the file, two separators in a row) are not documents. A file without
// separators is one document (held in memory whole). With TextDocuments::paragraph, blank lines
// (whitespace only) separate documents too, and are not part of any.
// JSONL: one JSON object per line; the document is the string field `text_field`. A line that is
// not JSON, not an object, or lacks that string field is malformed: skipped, counted, and reported
// as a warning "<file>:<line>: <problem>". Blank lines are skipped silently. A line with invalid
// UTF-8 is repaired (U+FFFD) before parsing, and the record remembers it so the UTF-8 policy can
// drop it.
//
// Output, by the output name: .txt / .txt.zst writes documents separated by "\n<|endoftext|>\n"
// with a final '\n' (reading it back gives the same documents); .jsonl / .jsonl.zst writes one
// object per line: a JSONL input record with its text field replaced (other fields and key order
// kept), or {"<text_field>": text} for text input. Written atomically (nothing at the path until
// commit()).
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/clean/clean_options.h"
#include "io/text_stream.h"

namespace frugal::clean {

enum class DocumentFormat { text, jsonl };

DocumentFormat input_format_of(const std::string& path);
// Throws frugal::Error unless the name ends in .txt, .jsonl, .txt.zst or .jsonl.zst.
DocumentFormat output_format_of(const std::string& path);

// The input files named by `inputs` (files and folders, see above), skipping `output_path`.
// Throws frugal::Error for a missing input or when no file is found.
std::vector<std::string> list_input_files(const std::vector<std::string>& inputs,
                                          const std::string& output_path = "");

struct RawDocument {
  std::string content;  // text: the document; jsonl: the whole line
  uint32_t file_index = 0;
  uint64_t line = 0;  // first line of the document in its file (1-based)
  DocumentFormat format = DocumentFormat::text;
};

class DocumentReader {
 public:
  explicit DocumentReader(std::vector<std::string> files,
                          TextDocuments text_documents = TextDocuments::separator);
  ~DocumentReader();
  // Appends the next documents to `batch` until their content reaches max_bytes or their number
  // max_documents; returns false when the input is exhausted and nothing was added.
  bool read_batch(std::vector<RawDocument>& batch, size_t max_bytes, size_t max_documents);
  const std::vector<std::string>& files() const { return files_; }

 private:
  bool next(RawDocument& document);

  std::vector<std::string> files_;
  TextDocuments text_documents_;
  size_t file_index_ = 0;
  std::unique_ptr<LineReader> lines_;
};

struct JsonlRecord {
  std::optional<nlohmann::ordered_json> record;  // empty when malformed
  std::string text;
  std::string error;               // why the line is malformed
  size_t invalid_utf8 = 0;          // invalid sequences repaired before parsing
  int64_t repair_bytes_removed = 0;  // line size before minus after the repair (<= 0)
};

// Parses one JSONL line; the record keeps its text field (set to "") for serialize_jsonl.
JsonlRecord parse_jsonl_record(std::string_view line, const std::string& text_field);
// One output line (without '\n'): `record` with its text field set to `text`, or a new object.
std::string serialize_jsonl(nlohmann::ordered_json* record, const std::string& text_field,
                            std::string_view text);

class DocumentWriter {
 public:
  DocumentWriter(const std::string& path, int zstd_level);
  // `document`: the text (text output) or one serialized JSON object (jsonl output).
  void write(std::string_view document);
  void commit();
  DocumentFormat format() const { return format_; }
  int64_t documents() const { return documents_; }

 private:
  DocumentFormat format_;  // first: a bad name fails before the temp file is created
  TextStreamWriter writer_;
  int64_t documents_ = 0;
};

}  // namespace frugal::clean
