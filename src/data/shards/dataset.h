// Dataset: a read-only, memory-mapped view of a token-shard directory (format in shard_format.h).
//
// open() maps every shard and validates everything before returning: index.json (format, version,
// keys, dtype consistent with vocab_size, totals equal to the shard sums), every shard (present,
// magic, header checksum, version, token width = index dtype, tokenizer hash = index hash, token
// and document counts = index entry, file size = header layout, document offsets start at 0, never
// decrease and end at the token count). Failures throw frugal::Error naming the file and the
// problem (missing shard, truncated shard, corrupted header, wrong tokenizer, ...). Token values
// and payload checksums need a full read and are checked by verify(), not by open().
//
// Shard files must not change while a Dataset maps them (a file truncated under a mapping makes
// reads fault); the writer's atomic renames never modify a file in place.
//
// Documents are numbered 0..num_documents()-1 across shards in shard order. doc(i) is a view of
// the stored uint16/uint32 ids that reads them as int32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/shards/shard_format.h"

namespace frugal {

class MappedFile;

// One document's tokens, read in place from the mapped shard.
class DocumentView {
 public:
  DocumentView(const unsigned char* data, int token_bytes, int64_t size)
      : data_(data), token_bytes_(token_bytes), size_(size) {}
  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  int32_t operator[](int64_t i) const {
    if (token_bytes_ == 2) return static_cast<int32_t>(reinterpret_cast<const uint16_t*>(data_)[i]);
    return static_cast<int32_t>(reinterpret_cast<const uint32_t*>(data_)[i]);
  }
  // out[0, count) = tokens [begin, begin + count) as int32; needs begin + count <= size().
  void copy_to(int64_t begin, int64_t count, int32_t* out) const;
  std::vector<int32_t> to_vector() const;

 private:
  const unsigned char* data_;
  int token_bytes_;
  int64_t size_;
};

struct ShardInfo {
  std::string file;  // file name inside the dataset directory
  int64_t tokens = 0, documents = 0, bytes = 0;
  uint64_t checksum = 0;         // payload checksum (XXH3-64)
  int64_t first_document = 0;    // global number of the shard's first document
};

class Dataset {
 public:
  // Maps and validates the dataset in `dir` (see above).
  static Dataset open(const std::string& dir);
  Dataset(Dataset&&) noexcept;
  Dataset& operator=(Dataset&&) noexcept;
  ~Dataset();

  // Refuses a tokenizer whose hash differs from the one that produced this dataset; the message
  // names the directory and both hashes.
  void check_tokenizer(const std::string& tokenizer_hash) const;
  // Full read: every token id < vocab_size and every payload checksum matches. Throws naming the
  // shard file.
  void verify() const;

  int64_t num_documents() const { return total_documents_; }
  int64_t num_tokens() const { return total_tokens_; }
  int64_t num_shards() const { return static_cast<int64_t>(shards_.size()); }
  int64_t doc_length(int64_t i) const;
  DocumentView doc(int64_t i) const;  // 0 <= i < num_documents()
  // Shard holding document i.
  int64_t shard_of(int64_t i) const;

  const std::string& dir() const { return dir_; }
  const TokenizerIdentity& tokenizer() const { return tokenizer_; }
  const std::string& tokenizer_hash() const { return tokenizer_.hash; }
  int64_t vocab_size() const { return tokenizer_.vocab_size; }
  int64_t eos_id() const { return tokenizer_.eos_id; }
  int64_t bos_id() const { return tokenizer_.bos_id; }
  int token_bytes() const { return token_bytes_; }
  const char* dtype() const { return dtype_name(token_bytes_); }
  const std::vector<ShardInfo>& shards() const { return shards_; }
  // The parsed index.json (creation parameters under "creation").
  const nlohmann::json& index() const { return index_; }
  // Identity of the content: 16 hex digits hashing the tokenizer hash and every shard's counts
  // and payload checksum. Equal for two copies of the same dataset wherever they live.
  const std::string& content_id() const { return content_id_; }

 private:
  Dataset() = default;
  const uint64_t* offsets_of(int64_t shard) const;
  const unsigned char* tokens_of(int64_t shard) const;

  std::string dir_;
  TokenizerIdentity tokenizer_;
  int token_bytes_ = 2;
  int64_t total_tokens_ = 0, total_documents_ = 0;
  std::vector<ShardInfo> shards_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<int64_t> first_documents_;  // first_documents_[s] for s in shards, then the total
  std::string content_id_;
  nlohmann::json index_;
};

}  // namespace frugal
