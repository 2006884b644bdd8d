// ShardWriter: turns a stream of tokenized documents into a dataset directory of token shards
// (format in shard_format.h).
//
// Documents are appended whole (a document never spans two shards) to an in-memory shard; when
// adding a document would take the shard past max_shard_bytes, the shard is written and a new one
// begins (a single document larger than the limit gets a shard of its own). Every file is written
// atomically (temp file, fsync, rename); index.json is written last by finish(), so a directory is
// either a complete dataset or one that Dataset::open refuses. Without finish() (an exception,
// a crash) no index is written.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/shards/shard_format.h"

namespace frugal {

struct ShardWriterOptions {
  int64_t max_shard_bytes = int64_t{256} << 20;  // file size a shard should stay under
  // When the directory already holds index.json or shard files: false refuses, true removes
  // them first (index.json before the shards).
  bool overwrite = false;
  // Free-form parameters of the producer (input files, filters, ...), stored in index.json under
  // "creation" next to max_shard_bytes.
  nlohmann::json creation = nlohmann::json::object();
};

struct ShardWriterSummary {
  std::string dir;
  int64_t shards = 0, documents = 0, tokens = 0, bytes = 0;
};

class ShardWriter {
 public:
  // Creates `dir` when missing. Checks the tokenizer identity (hash text, vocab_size >= 1,
  // 0 <= eos_id < vocab_size, -1 <= bos_id < vocab_size, special ids in range).
  ShardWriter(std::string dir, TokenizerIdentity tokenizer, ShardWriterOptions options = {});
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one document; every id must be in [0, vocab_size). Empty documents are kept (the
  // loader turns them into a lone EOS).
  void add_document(std::span<const int32_t> tokens);
  // Writes the last shard and index.json. Call once; nothing can be added afterwards.
  ShardWriterSummary finish();

  int64_t documents_written() const { return documents_; }
  int64_t tokens_written() const { return tokens_; }
  int64_t shards_written() const { return static_cast<int64_t>(shard_entries_.size()); }
  int token_bytes() const { return token_bytes_; }

 private:
  void flush_shard();
  std::string path_of(const std::string& file) const;

  std::string dir_;
  TokenizerIdentity tokenizer_;
  ShardWriterOptions options_;
  int token_bytes_;
  bool finished_ = false;
  std::vector<unsigned char> shard_tokens_;  // current shard's token bytes
  std::vector<uint64_t> shard_offsets_;      // current shard's document offsets, starts with 0
  nlohmann::json shard_entries_ = nlohmann::json::array();
  int64_t documents_ = 0, tokens_ = 0, bytes_ = 0;
};

}  // namespace frugal
