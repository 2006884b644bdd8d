// Writing token shards and the dataset index (see shard_writer.h, format in shard_format.h).
#include "data/shards/shard_writer.h"

#include <xxhash.h>

#include <cstring>
#include <filesystem>
#include <regex>

#include "core/error.h"
#include "io/atomic_file.h"

namespace frugal {

namespace fs = std::filesystem;

namespace {

// Existing dataset files in `dir`: index.json first, then the shards.
std::vector<fs::path> existing_dataset_files(const std::string& dir) {
  std::vector<fs::path> files;
  const std::regex shard_name(R"(shard-\d{5,}\.bin)");
  if (fs::exists(fs::path(dir) / kIndexFileName)) files.push_back(fs::path(dir) / kIndexFileName);
  for (const auto& entry : fs::directory_iterator(dir))
    if (std::regex_match(entry.path().filename().string(), shard_name))
      files.push_back(entry.path());
  return files;
}

}  // namespace

ShardWriter::ShardWriter(std::string dir, TokenizerIdentity tokenizer, ShardWriterOptions options)
    : dir_(std::move(dir)), tokenizer_(std::move(tokenizer)), options_(std::move(options)) {
  FRUGAL_CHECK(!dir_.empty(), "shard writer: empty output directory");
  check_tokenizer_identity(tokenizer_, dir_);
  FRUGAL_CHECK(options_.max_shard_bytes >= 1024,
               "{}: max_shard_bytes {} must be at least 1024", dir_, options_.max_shard_bytes);
  FRUGAL_CHECK(options_.creation.is_object(), "{}: creation parameters must be a JSON object",
               dir_);
  token_bytes_ = token_bytes_for_vocab(tokenizer_.vocab_size);
  std::error_code error;
  fs::create_directories(dir_, error);
  FRUGAL_CHECK(!error && fs::is_directory(dir_), "{}: cannot create the dataset directory: {}",
               dir_, error.message());
  const std::vector<fs::path> existing = existing_dataset_files(dir_);
  if (!existing.empty()) {
    FRUGAL_CHECK(options_.overwrite,
                 "{}: already holds a dataset ({} and {} more files); pass overwrite to replace it",
                 dir_, existing.front().string(), existing.size() - 1);
    for (const fs::path& file : existing) {  // index.json first: the old dataset stops opening
      fs::remove(file, error);
      FRUGAL_CHECK(!error, "{}: cannot remove {}: {}", dir_, file.string(), error.message());
    }
  }
  shard_offsets_.push_back(0);
}

std::string ShardWriter::path_of(const std::string& file) const {
  return (fs::path(dir_) / file).string();
}

void ShardWriter::add_document(std::span<const int32_t> tokens) {
  FRUGAL_CHECK(!finished_, "{}: add_document after finish()", dir_);
  const int64_t document = documents_;
  for (size_t i = 0; i < tokens.size(); ++i)
    FRUGAL_CHECK(tokens[i] >= 0 && tokens[i] < tokenizer_.vocab_size,
                 "{}: document {} has token {} at position {}, outside the vocabulary [0, {})",
                 dir_, document, tokens[i], i, tokenizer_.vocab_size);
  const int64_t docs_in_shard = static_cast<int64_t>(shard_offsets_.size()) - 1;
  const int64_t current_bytes = kShardHeaderBytes + static_cast<int64_t>(shard_tokens_.size()) + 8 +
                                8 * (docs_in_shard + 1);
  const int64_t added_bytes = static_cast<int64_t>(tokens.size()) * token_bytes_ + 8;
  if (docs_in_shard > 0 && current_bytes + added_bytes > options_.max_shard_bytes) flush_shard();

  const size_t at = shard_tokens_.size();
  shard_tokens_.resize(at + tokens.size() * token_bytes_);
  unsigned char* out = shard_tokens_.data() + at;
  if (token_bytes_ == 2) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const uint16_t id = static_cast<uint16_t>(tokens[i]);
      std::memcpy(out + 2 * i, &id, 2);
    }
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const uint32_t id = static_cast<uint32_t>(tokens[i]);
      std::memcpy(out + 4 * i, &id, 4);
    }
  }
  shard_offsets_.push_back(shard_offsets_.back() + tokens.size());
  documents_ += 1;
  tokens_ += static_cast<int64_t>(tokens.size());
}

void ShardWriter::flush_shard() {
  ShardHeader header;
  header.token_bytes = static_cast<uint32_t>(token_bytes_);
  header.num_tokens = shard_offsets_.back();
  header.num_documents = shard_offsets_.size() - 1;
  header.tokenizer_hash = tokenizer_.hash;
  layout_shard(header);
  const uint64_t token_end = kShardHeaderBytes + shard_tokens_.size();
  const std::vector<unsigned char> padding(header.offsets_offset - token_end, 0);

  XXH3_state_t* state = XXH3_createState();
  FRUGAL_CHECK(state != nullptr, "{}: out of memory for the checksum state", dir_);
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, shard_tokens_.data(), shard_tokens_.size());
  XXH3_64bits_update(state, padding.data(), padding.size());
  XXH3_64bits_update(state, shard_offsets_.data(), shard_offsets_.size() * sizeof(uint64_t));
  header.payload_checksum = XXH3_64bits_digest(state);
  XXH3_freeState(state);

  unsigned char header_bytes[kShardHeaderBytes];
  encode_shard_header(header, header_bytes);
  const std::string file = shard_file_name(shards_written());
  write_file_atomic(path_of(file), [&](AtomicFileWriter& writer) {
    writer.write(header_bytes, kShardHeaderBytes);
    writer.write(shard_tokens_.data(), shard_tokens_.size());
    writer.write(padding.data(), padding.size());
    writer.write(shard_offsets_.data(), shard_offsets_.size() * sizeof(uint64_t));
  });
  shard_entries_.push_back({{"file", file},
                            {"tokens", header.num_tokens},
                            {"documents", header.num_documents},
                            {"bytes", header.file_bytes},
                            {"checksum", checksum_hex(header.payload_checksum)}});
  bytes_ += static_cast<int64_t>(header.file_bytes);
  shard_tokens_.clear();
  shard_offsets_.assign(1, 0);
}

ShardWriterSummary ShardWriter::finish() {
  FRUGAL_CHECK(!finished_, "{}: finish() called twice", dir_);
  if (shard_offsets_.size() > 1) flush_shard();
  std::vector<unsigned char>().swap(shard_tokens_);
  finished_ = true;

  nlohmann::json special = nlohmann::json::object();
  for (const auto& [name, id] : tokenizer_.special_ids) special[name] = id;
  nlohmann::json creation = options_.creation;
  creation["max_shard_bytes"] = options_.max_shard_bytes;
  const nlohmann::json index = {{"format", kIndexFormatName},
                                {"format_version", kShardFormatVersion},
                                {"tokenizer_hash", tokenizer_.hash},
                                {"vocab_size", tokenizer_.vocab_size},
                                {"dtype", dtype_name(token_bytes_)},
                                {"eos_id", tokenizer_.eos_id},
                                {"bos_id", tokenizer_.bos_id},
                                {"special_ids", special},
                                {"shards", shard_entries_},
                                {"total_tokens", tokens_},
                                {"total_documents", documents_},
                                {"creation", creation}};
  write_file_atomic(path_of(kIndexFileName), index.dump(2) + "\n");
  return {dir_, shards_written(), documents_, tokens_, bytes_};
}

}  // namespace frugal
