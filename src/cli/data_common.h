// Shared by the `frugal data` subcommands: reading documents' text from .txt / .jsonl (.zst)
// inputs with a cap on the size of one document, and the tokenizer identity stored in token
// datasets.
//
// Documents are split exactly as clean::DocumentReader splits them (document_io.h: text files on
// "<|endoftext|>" lines, and on blank lines with `paragraphs`; JSONL one record per line), but a
// document larger than max_document_bytes is never held in memory: its lines stream past and it
// is counted in oversized(). Memory is bounded by max_document_bytes plus one read chunk (1 MiB),
// whatever the input (a 1 GB file without a newline is skipped, not loaded).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/shards/shard_format.h"
#include "data/tokenizer/tokenizer.h"
#include "io/text_stream.h"

namespace frugal {

// Lines of a plain or .zst file (split on '\n', which is not part of the line) like LineReader,
// except that a line longer than max_line_bytes is not kept: next() returns it as empty with
// too_long = true once its end has streamed past.
class BoundedLineReader {
 public:
  BoundedLineReader(std::string path, size_t max_line_bytes);
  bool next(std::string_view& line, bool& too_long);
  uint64_t line_number() const { return line_number_; }
  uint64_t file_bytes_read() const { return reader_.file_bytes_read(); }

 private:
  TextStreamReader reader_;
  size_t max_line_bytes_;
  std::string buffer_;
  size_t begin_ = 0;  // start of the unreturned bytes in buffer_
  bool end_of_data_ = false;
  uint64_t line_number_ = 0;
};

// Streams the documents of files and folders as text (JSONL: the `text_field` string of each
// record; malformed lines are counted in malformed() and skipped; documents larger than
// max_document_bytes are counted in oversized() and skipped).
class DocumentTextReader {
 public:
  DocumentTextReader(const std::vector<std::string>& inputs, const std::string& text_field,
                     bool paragraphs, int64_t max_document_bytes);
  ~DocumentTextReader();
  // Appends document texts until about max_bytes were added; false when the input is exhausted
  // and nothing was added.
  bool next_batch(std::vector<std::string>& texts, size_t max_bytes);
  int64_t malformed() const { return malformed_; }
  int64_t oversized() const { return oversized_; }
  const std::vector<std::string>& files() const { return files_; }
  uint64_t total_input_bytes() const { return total_bytes_; }  // file sizes (compressed for .zst)
  uint64_t input_bytes_read() const;                           // same unit, for progress bars

 private:
  // The next document into `text`; `oversized` when it was too large (text then empty).
  bool next_document(std::string& text, bool& oversized, bool& jsonl);

  std::vector<std::string> files_;
  std::string text_field_;
  bool paragraphs_;
  int64_t max_document_bytes_;
  size_t file_index_ = 0;
  uint64_t finished_file_bytes_ = 0;
  std::unique_ptr<BoundedLineReader> lines_;
  int64_t malformed_ = 0, oversized_ = 0;
  uint64_t total_bytes_ = 0;
};

// "a.txt", "a.txt, b.txt" or "a.txt, b.txt, c.txt and 4 more": input files in messages.
std::string describe_files(const std::vector<std::string>& files);

// The identity a token dataset records: hash, vocabulary size and special ids by role name
// (bos, eos, pad, fim_begin, fim_hole, fim_end, user, assistant).
TokenizerIdentity tokenizer_identity(const Tokenizer& tokenizer);
std::string tokenizer_hash_hex(const Tokenizer& tokenizer);

}  // namespace frugal
