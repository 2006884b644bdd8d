// Shared by the `frugal data` subcommands: reading documents' text from .txt / .jsonl (.zst)
// inputs, and the tokenizer identity stored in token datasets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/clean/document_io.h"
#include "data/shards/shard_format.h"
#include "data/tokenizer/tokenizer.h"

namespace frugal {

// Streams the documents of files and folders as text (JSONL: the `text_field` string of each
// record; malformed lines are counted in `malformed` and skipped).
class DocumentTextReader {
 public:
  DocumentTextReader(const std::vector<std::string>& inputs, const std::string& text_field,
                     bool paragraphs);
  // Appends up to about max_bytes of document texts; false when the input is exhausted.
  bool next_batch(std::vector<std::string>& texts, size_t max_bytes);
  int64_t malformed() const { return malformed_; }
  const std::vector<std::string>& files() const { return files_; }
  uint64_t total_input_bytes() const { return total_bytes_; }

 private:
  std::vector<std::string> files_;
  clean::DocumentReader reader_;
  std::string text_field_;
  int64_t malformed_ = 0;
  uint64_t total_bytes_ = 0;
};

// The identity a token dataset records: hash, vocabulary size and special ids by role name
// (bos, eos, pad, fim_begin, fim_hole, fim_end, user, assistant).
TokenizerIdentity tokenizer_identity(const Tokenizer& tokenizer);
std::string tokenizer_hash_hex(const Tokenizer& tokenizer);

}  // namespace frugal
