// Opening, validating and reading a token-shard dataset (see dataset.h).
#include "data/shards/dataset.h"

#include <xxhash.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "data/shards/mapped_file.h"

namespace frugal {

namespace fs = std::filesystem;

void DocumentView::copy_to(int64_t begin, int64_t count, int32_t* out) const {
  if (token_bytes_ == 2) {
    const uint16_t* in = reinterpret_cast<const uint16_t*>(data_) + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(in[i]);
  } else {
    const uint32_t* in = reinterpret_cast<const uint32_t*>(data_) + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(in[i]);
  }
}

std::vector<int32_t> DocumentView::to_vector() const {
  std::vector<int32_t> out(static_cast<size_t>(size_));
  copy_to(0, size_, out.data());
  return out;
}

namespace {

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FRUGAL_CHECK(in.good(), "{}: cannot open for reading", path);
  std::ostringstream text;
  text << in.rdbuf();
  FRUGAL_CHECK(!in.bad(), "{}: read error", path);
  return text.str();
}

// index[key] as T, or an error naming the index file and the key.
template <class T>
T index_field(const nlohmann::json& index, const char* key, const std::string& path) {
  FRUGAL_CHECK(index.contains(key), "{}: missing key '{}'", path, key);
  try {
    return index.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("{}: key '{}' has the wrong type ({})", path, key, index.at(key).dump());
  }
}

uint64_t parse_checksum(const std::string& hex, const std::string& where) {
  FRUGAL_CHECK(hex.size() == 16 && hex.find_first_not_of("0123456789abcdef") == std::string::npos,
               "{}: checksum '{}' is not 16 lowercase hex digits", where, hex);
  return std::stoull(hex, nullptr, 16);
}

}  // namespace

Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;
Dataset::~Dataset() = default;

Dataset Dataset::open(const std::string& dir) {
  FRUGAL_CHECK(fs::is_directory(dir), "{}: no such dataset directory", dir);
  const std::string index_path = (fs::path(dir) / kIndexFileName).string();
  FRUGAL_CHECK(fs::exists(index_path),
               "{}: missing (not a token dataset, or its writer did not finish)", index_path);
  Dataset dataset;
  dataset.dir_ = dir;
  try {
    dataset.index_ = nlohmann::json::parse(read_whole_file(index_path));
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: not valid JSON: {}", index_path, e.what());
  }
  const nlohmann::json& index = dataset.index_;
  FRUGAL_CHECK(index.is_object(), "{}: must hold a JSON object", index_path);
  const auto format = index_field<std::string>(index, "format", index_path);
  FRUGAL_CHECK(format == kIndexFormatName, "{}: format '{}' is not '{}'", index_path, format,
               kIndexFormatName);
  const auto version = index_field<int64_t>(index, "format_version", index_path);
  FRUGAL_CHECK(version == kShardFormatVersion, "{}: format_version {}, this build reads {}",
               index_path, version, kShardFormatVersion);

  TokenizerIdentity& tokenizer = dataset.tokenizer_;
  tokenizer.hash = index_field<std::string>(index, "tokenizer_hash", index_path);
  tokenizer.vocab_size = index_field<int64_t>(index, "vocab_size", index_path);
  tokenizer.eos_id = index_field<int64_t>(index, "eos_id", index_path);
  tokenizer.bos_id = index_field<int64_t>(index, "bos_id", index_path);
  tokenizer.special_ids =
      index_field<std::map<std::string, int64_t>>(index, "special_ids", index_path);
  check_tokenizer_identity(tokenizer, index_path);

  dataset.token_bytes_ = token_bytes_for_vocab(tokenizer.vocab_size);
  const auto dtype = index_field<std::string>(index, "dtype", index_path);
  FRUGAL_CHECK(dtype == dtype_name(dataset.token_bytes_),
               "{}: dtype '{}' does not match vocab_size {} (which is stored as '{}')", index_path,
               dtype, tokenizer.vocab_size, dtype_name(dataset.token_bytes_));

  const auto entries = index_field<nlohmann::json>(index, "shards", index_path);
  FRUGAL_CHECK(entries.is_array(), "{}: 'shards' must be an array", index_path);
  std::string identity = tokenizer.hash;
  for (size_t s = 0; s < entries.size(); ++s) {
    const std::string where = fmt::format("{} (shards[{}])", index_path, s);
    const nlohmann::json& entry = entries[s];
    FRUGAL_CHECK(entry.is_object(), "{}: must be an object", where);
    ShardInfo info;
    info.file = index_field<std::string>(entry, "file", where);
    FRUGAL_CHECK(info.file == shard_file_name(static_cast<int64_t>(s)),
                 "{}: file '{}' should be '{}'", where, info.file,
                 shard_file_name(static_cast<int64_t>(s)));
    info.tokens = index_field<int64_t>(entry, "tokens", where);
    info.documents = index_field<int64_t>(entry, "documents", where);
    info.bytes = index_field<int64_t>(entry, "bytes", where);
    info.checksum = parse_checksum(index_field<std::string>(entry, "checksum", where), where);
    info.first_document = dataset.total_documents_;

    const std::string path = (fs::path(dir) / info.file).string();
    FRUGAL_CHECK(fs::exists(path), "{}: missing shard (listed in {})", path, index_path);
    auto file = std::make_unique<MappedFile>(path);
    const ShardHeader header = decode_shard_header(file->data(), file->size(), path);
    FRUGAL_CHECK(header.tokenizer_hash == tokenizer.hash,
                 "{}: wrong tokenizer: the shard was written by tokenizer '{}' but {} names "
                 "tokenizer '{}'",
                 path, header.tokenizer_hash, index_path, tokenizer.hash);
    FRUGAL_CHECK(static_cast<int>(header.token_bytes) == dataset.token_bytes_,
                 "{}: stores {} tokens but {} says dtype '{}'", path,
                 dtype_name(static_cast<int>(header.token_bytes)), index_path, dtype);
    FRUGAL_CHECK(static_cast<int64_t>(header.num_tokens) == info.tokens &&
                     static_cast<int64_t>(header.num_documents) == info.documents &&
                     static_cast<int64_t>(header.file_bytes) == info.bytes,
                 "{}: the header holds {} tokens, {} documents, {} bytes but {} lists {} tokens, "
                 "{} documents, {} bytes",
                 path, header.num_tokens, header.num_documents, header.file_bytes, index_path,
                 info.tokens, info.documents, info.bytes);
    FRUGAL_CHECK(header.payload_checksum == info.checksum,
                 "{}: payload checksum {} differs from {} in {} (the shard was replaced)", path,
                 checksum_hex(header.payload_checksum), checksum_hex(info.checksum), index_path);

    const uint64_t* offsets = reinterpret_cast<const uint64_t*>(file->data() + header.offsets_offset);
    FRUGAL_CHECK(offsets[0] == 0, "{}: corrupted document offsets: the first offset is {}, not 0",
                 path, offsets[0]);
    for (uint64_t d = 1; d <= header.num_documents; ++d)
      FRUGAL_CHECK(offsets[d] >= offsets[d - 1] && offsets[d] <= header.num_tokens,
                   "{}: corrupted document offsets: document {} spans [{}, {}) in a shard of {} "
                   "tokens",
                   path, d - 1, offsets[d - 1], offsets[d], header.num_tokens);
    FRUGAL_CHECK(offsets[header.num_documents] == header.num_tokens,
                 "{}: corrupted document offsets: the documents end at token {}, the shard holds {}",
                 path, offsets[header.num_documents], header.num_tokens);

    identity += fmt::format("|{},{},{}", info.tokens, info.documents, checksum_hex(info.checksum));
    dataset.first_documents_.push_back(dataset.total_documents_);
    dataset.total_tokens_ += info.tokens;
    dataset.total_documents_ += info.documents;
    dataset.shards_.push_back(info);
    dataset.files_.push_back(std::move(file));
  }
  dataset.first_documents_.push_back(dataset.total_documents_);
  const auto total_tokens = index_field<int64_t>(index, "total_tokens", index_path);
  const auto total_documents = index_field<int64_t>(index, "total_documents", index_path);
  FRUGAL_CHECK(total_tokens == dataset.total_tokens_ && total_documents == dataset.total_documents_,
               "{}: totals ({} tokens, {} documents) differ from the sum over its shards ({} "
               "tokens, {} documents)",
               index_path, total_tokens, total_documents, dataset.total_tokens_,
               dataset.total_documents_);
  dataset.content_id_ = checksum_hex(XXH3_64bits(identity.data(), identity.size()));
  return dataset;
}

void Dataset::check_tokenizer(const std::string& tokenizer_hash) const {
  FRUGAL_CHECK(tokenizer_hash == tokenizer_.hash,
               "{}: wrong tokenizer: the dataset was tokenized with tokenizer '{}', the current "
               "tokenizer is '{}'",
               dir_, tokenizer_.hash, tokenizer_hash);
}

const uint64_t* Dataset::offsets_of(int64_t shard) const {
  const MappedFile& file = *files_[static_cast<size_t>(shard)];
  ShardHeader header;
  header.token_bytes = static_cast<uint32_t>(token_bytes_);
  header.num_tokens = static_cast<uint64_t>(shards_[static_cast<size_t>(shard)].tokens);
  header.num_documents = static_cast<uint64_t>(shards_[static_cast<size_t>(shard)].documents);
  layout_shard(header);
  return reinterpret_cast<const uint64_t*>(file.data() + header.offsets_offset);
}

const unsigned char* Dataset::tokens_of(int64_t shard) const {
  return files_[static_cast<size_t>(shard)]->data() + kShardHeaderBytes;
}

int64_t Dataset::shard_of(int64_t i) const {
  FRUGAL_CHECK(i >= 0 && i < total_documents_, "{}: document {} is out of range [0, {})", dir_, i,
               total_documents_);
  auto it = std::upper_bound(first_documents_.begin(), first_documents_.end(), i);
  return static_cast<int64_t>(it - first_documents_.begin()) - 1;
}

int64_t Dataset::doc_length(int64_t i) const {
  const int64_t shard = shard_of(i);
  const uint64_t* offsets = offsets_of(shard);
  const int64_t local = i - first_documents_[static_cast<size_t>(shard)];
  return static_cast<int64_t>(offsets[local + 1] - offsets[local]);
}

DocumentView Dataset::doc(int64_t i) const {
  const int64_t shard = shard_of(i);
  const uint64_t* offsets = offsets_of(shard);
  const int64_t local = i - first_documents_[static_cast<size_t>(shard)];
  return DocumentView(tokens_of(shard) + offsets[local] * static_cast<uint64_t>(token_bytes_),
                      token_bytes_, static_cast<int64_t>(offsets[local + 1] - offsets[local]));
}

void Dataset::verify() const {
  for (size_t s = 0; s < shards_.size(); ++s) {
    const MappedFile& file = *files_[s];
    const uint64_t sum =
        XXH3_64bits(file.data() + kShardHeaderBytes, file.size() - kShardHeaderBytes);
    FRUGAL_CHECK(sum == shards_[s].checksum,
                 "{}: corrupted shard: payload checksum {} does not match the recorded {}",
                 file.path(), checksum_hex(sum), checksum_hex(shards_[s].checksum));
    const int64_t first = shards_[s].first_document;
    for (int64_t d = 0; d < shards_[s].documents; ++d) {
      const DocumentView view = doc(first + d);
      for (int64_t t = 0; t < view.size(); ++t)
        FRUGAL_CHECK(view[t] >= 0 && view[t] < tokenizer_.vocab_size,
                     "{}: document {} holds token {} at position {}, outside the vocabulary "
                     "[0, {})",
                     file.path(), first + d, view[t], t, tokenizer_.vocab_size);
    }
  }
}

}  // namespace frugal
