// Shard header encoding and validation (see shard_format.h).
#include "data/shards/shard_format.h"

#include <xxhash.h>

#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"

namespace frugal {

static_assert(std::endian::native == std::endian::little,
              "token shards are little-endian and read in place");

namespace {

constexpr size_t kVersionAt = 8, kWidthAt = 12, kTokensAt = 16, kDocumentsAt = 24,
                 kOffsetsAt = 32, kFileBytesAt = 40, kPayloadSumAt = 48, kHashAt = 56,
                 kReservedAt = 184, kHeaderSumAt = 248;

template <class T>
void put(unsigned char* out, size_t at, T value) {
  std::memcpy(out + at, &value, sizeof(T));
}
template <class T>
T get(const unsigned char* in, size_t at) {
  T value;
  std::memcpy(&value, in + at, sizeof(T));
  return value;
}

}  // namespace

int token_bytes_for_vocab(int64_t vocab_size) { return vocab_size <= kMaxUint16Vocab ? 2 : 4; }

const char* dtype_name(int token_bytes) { return token_bytes == 2 ? "uint16" : "uint32"; }

void layout_shard(ShardHeader& header) {
  const uint64_t token_end =
      static_cast<uint64_t>(kShardHeaderBytes) + header.num_tokens * header.token_bytes;
  header.offsets_offset = (token_end + 7) / 8 * 8;
  header.file_bytes = header.offsets_offset + 8 * (header.num_documents + 1);
}

void check_tokenizer_hash_text(const std::string& hash, const std::string& where) {
  FRUGAL_CHECK(!hash.empty() && hash.size() <= kMaxTokenizerHashChars,
               "{}: tokenizer hash '{}' must have 1 to {} characters", where, hash,
               kMaxTokenizerHashChars);
  for (unsigned char c : hash)
    FRUGAL_CHECK(c >= 0x21 && c <= 0x7e,
                 "{}: tokenizer hash '{}' must be printable ASCII without spaces", where, hash);
}

void check_tokenizer_identity(const TokenizerIdentity& tokenizer, const std::string& where) {
  check_tokenizer_hash_text(tokenizer.hash, where);
  FRUGAL_CHECK(tokenizer.vocab_size >= 1 && tokenizer.vocab_size <= (int64_t{1} << 31),
               "{}: tokenizer vocab_size {} must be in [1, 2^31]", where, tokenizer.vocab_size);
  FRUGAL_CHECK(tokenizer.eos_id >= 0 && tokenizer.eos_id < tokenizer.vocab_size,
               "{}: eos_id {} is outside the vocabulary [0, {})", where, tokenizer.eos_id,
               tokenizer.vocab_size);
  FRUGAL_CHECK(tokenizer.bos_id >= -1 && tokenizer.bos_id < tokenizer.vocab_size,
               "{}: bos_id {} must be -1 (none) or inside the vocabulary [0, {})", where,
               tokenizer.bos_id, tokenizer.vocab_size);
  for (const auto& [name, id] : tokenizer.special_ids)
    FRUGAL_CHECK(id >= 0 && id < tokenizer.vocab_size,
                 "{}: special id '{}' = {} is outside the vocabulary [0, {})", where, name, id,
                 tokenizer.vocab_size);
}

void encode_shard_header(const ShardHeader& header, unsigned char out[kShardHeaderBytes]) {
  std::memset(out, 0, kShardHeaderBytes);
  std::memcpy(out, kShardMagic, sizeof(kShardMagic));
  put<uint32_t>(out, kVersionAt, header.version);
  put<uint32_t>(out, kWidthAt, header.token_bytes);
  put<uint64_t>(out, kTokensAt, header.num_tokens);
  put<uint64_t>(out, kDocumentsAt, header.num_documents);
  put<uint64_t>(out, kOffsetsAt, header.offsets_offset);
  put<uint64_t>(out, kFileBytesAt, header.file_bytes);
  put<uint64_t>(out, kPayloadSumAt, header.payload_checksum);
  std::memcpy(out + kHashAt, header.tokenizer_hash.data(), header.tokenizer_hash.size());
  put<uint64_t>(out, kHeaderSumAt, XXH3_64bits(out, kHeaderSumAt));
}

ShardHeader decode_shard_header(const unsigned char* bytes, uint64_t file_size,
                                const std::string& file) {
  FRUGAL_CHECK(file_size >= static_cast<uint64_t>(kShardHeaderBytes),
               "{}: truncated shard: {} bytes, shorter than the {}-byte header", file, file_size,
               kShardHeaderBytes);
  FRUGAL_CHECK(std::memcmp(bytes, kShardMagic, sizeof(kShardMagic)) == 0,
               "{}: not a frugal token shard (bad magic bytes)", file);
  const uint64_t stored_sum = get<uint64_t>(bytes, kHeaderSumAt);
  const uint64_t actual_sum = XXH3_64bits(bytes, kHeaderSumAt);
  FRUGAL_CHECK(stored_sum == actual_sum,
               "{}: corrupted header (header checksum {} does not match its content {})", file,
               checksum_hex(stored_sum), checksum_hex(actual_sum));
  ShardHeader header;
  header.version = get<uint32_t>(bytes, kVersionAt);
  FRUGAL_CHECK(header.version == kShardFormatVersion,
               "{}: shard format version {}, this build reads version {}", file, header.version,
               kShardFormatVersion);
  header.token_bytes = get<uint32_t>(bytes, kWidthAt);
  FRUGAL_CHECK(header.token_bytes == 2 || header.token_bytes == 4,
               "{}: corrupted header: token width {} bytes (must be 2 or 4)", file,
               header.token_bytes);
  header.num_tokens = get<uint64_t>(bytes, kTokensAt);
  header.num_documents = get<uint64_t>(bytes, kDocumentsAt);
  header.offsets_offset = get<uint64_t>(bytes, kOffsetsAt);
  header.file_bytes = get<uint64_t>(bytes, kFileBytesAt);
  header.payload_checksum = get<uint64_t>(bytes, kPayloadSumAt);
  const char* hash = reinterpret_cast<const char*>(bytes + kHashAt);
  header.tokenizer_hash.assign(hash, strnlen(hash, kMaxTokenizerHashChars));
  for (size_t i = kReservedAt; i < kHeaderSumAt; ++i)
    FRUGAL_CHECK(bytes[i] == 0, "{}: corrupted header: reserved byte {} is not zero", file, i);
  check_tokenizer_hash_text(header.tokenizer_hash, file);

  constexpr uint64_t kMaxCount = uint64_t{1} << 56;
  FRUGAL_CHECK(header.num_tokens < kMaxCount && header.num_documents < kMaxCount,
               "{}: corrupted header: {} tokens, {} documents", file, header.num_tokens,
               header.num_documents);
  ShardHeader expected = header;
  layout_shard(expected);
  FRUGAL_CHECK(expected.offsets_offset == header.offsets_offset &&
                   expected.file_bytes == header.file_bytes,
               "{}: corrupted header: offsets at byte {} and size {} do not match {} tokens of "
               "{} bytes and {} documents",
               file, header.offsets_offset, header.file_bytes, header.num_tokens,
               header.token_bytes, header.num_documents);
  FRUGAL_CHECK(file_size >= header.file_bytes,
               "{}: truncated shard: the header describes {} bytes ({} tokens, {} documents) but "
               "the file has {}",
               file, header.file_bytes, header.num_tokens, header.num_documents, file_size);
  FRUGAL_CHECK(file_size == header.file_bytes,
               "{}: {} unexpected bytes after the end of the shard ({} bytes described, {} present)",
               file, file_size - header.file_bytes, header.file_bytes, file_size);
  return header;
}

std::string shard_file_name(int64_t index) { return fmt::format("shard-{:05d}.bin", index); }

std::string checksum_hex(uint64_t checksum) { return fmt::format("{:016x}", checksum); }

}  // namespace frugal
