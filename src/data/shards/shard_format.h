// Binary token shards: the on-disk format of a tokenized dataset.
//
// A dataset is a directory:
//   index.json          written last (atomically) by ShardWriter::finish(); a directory without
//                       it is an unfinished dataset and does not open.
//   shard-00000.bin     shard files, numbered from 0, each written atomically.
//   shard-00001.bin ...
//
// index.json (one object):
//   "format": "frugal-token-shards", "format_version": 1,
//   "tokenizer_hash": string (1..128 printable ASCII chars), "vocab_size": int,
//   "dtype": "uint16" when vocab_size <= 65536, else "uint32",
//   "eos_id": int (required), "bos_id": int (-1 = none), "special_ids": {name: id, ...},
//   "shards": [{"file": "shard-00000.bin", "tokens": int, "documents": int, "bytes": int,
//               "checksum": 16 hex digits (XXH3-64 of the shard's payload)}, ...],
//   "total_tokens": int, "total_documents": int,
//   "creation": {"max_shard_bytes": int, ... free-form parameters of the producer}
//
// A shard file, all integers little-endian, three regions:
//   header   [0, 256)               fixed layout below
//   tokens   [256, 256 + T*width)   T token ids, width 2 (uint16) or 4 (uint32) bytes each
//   (zero padding up to a multiple of 8 bytes)
//   offsets  [offsets_offset, offsets_offset + 8*(D+1))   uint64: document d is the tokens
//            [offsets[d], offsets[d+1]); offsets[0] = 0, non-decreasing, offsets[D] = T.
// The offsets live in the shard file itself (not a side file), after the tokens, so a shard is one
// file written in one atomic step and can never pair with the offsets of another write.
//
// Header layout (byte offset: field):
//   0   char[8]   magic "FRGLSHRD"
//   8   uint32    format version (1)
//   12  uint32    token width in bytes (2 or 4)
//   16  uint64    T, number of tokens
//   24  uint64    D, number of documents
//   32  uint64    offsets_offset = align8(256 + T*width)
//   40  uint64    file size in bytes = offsets_offset + 8*(D+1)
//   48  uint64    payload checksum: XXH3-64 of bytes [256, file size)
//   56  char[128] tokenizer hash, NUL padded
//   184 char[64]  reserved, zero
//   248 uint64    header checksum: XXH3-64 of bytes [0, 248)
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace frugal {

// What a dataset records about the tokenizer that produced it. The tokenizer itself is not needed
// to write or read shards: its identity travels as plain values.
struct TokenizerIdentity {
  std::string hash;         // identifies the tokenizer (e.g. a digest of tokenizer.json)
  int64_t vocab_size = 0;   // every token id is in [0, vocab_size)
  int64_t eos_id = -1;      // end-of-document id, required
  int64_t bos_id = -1;      // begin-of-document id, -1 when the tokenizer has none
  std::map<std::string, int64_t> special_ids;  // any further named ids (e.g. FIM sentinels)
  bool operator==(const TokenizerIdentity&) const = default;
};

inline constexpr char kShardMagic[8] = {'F', 'R', 'G', 'L', 'S', 'H', 'R', 'D'};
inline constexpr uint32_t kShardFormatVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 256;
inline constexpr size_t kMaxTokenizerHashChars = 128;
inline constexpr const char* kIndexFileName = "index.json";
inline constexpr const char* kIndexFormatName = "frugal-token-shards";
// Vocabularies up to this size are stored as uint16.
inline constexpr int64_t kMaxUint16Vocab = 65536;

struct ShardHeader {
  uint32_t version = kShardFormatVersion;
  uint32_t token_bytes = 2;
  uint64_t num_tokens = 0;
  uint64_t num_documents = 0;
  uint64_t offsets_offset = 0;
  uint64_t file_bytes = 0;
  uint64_t payload_checksum = 0;
  std::string tokenizer_hash;
};

// Token width for a vocabulary: 2 when vocab_size <= 65536, else 4.
int token_bytes_for_vocab(int64_t vocab_size);
// "uint16" / "uint32" for a token width of 2 / 4.
const char* dtype_name(int token_bytes);
// Layout of a shard with these counts: fills offsets_offset and file_bytes.
void layout_shard(ShardHeader& header);
// `header` as the 256 header bytes (computes the header checksum).
void encode_shard_header(const ShardHeader& header, unsigned char out[kShardHeaderBytes]);
// Parses and checks a header (magic, header checksum, version, token width, layout): throws
// frugal::Error naming `file` on any mismatch. `file_size` is the actual size of the file.
ShardHeader decode_shard_header(const unsigned char* bytes, uint64_t file_size,
                                const std::string& file);
// Checks that a tokenizer hash fits the format (1..128 printable ASCII characters).
void check_tokenizer_hash_text(const std::string& hash, const std::string& where);
// Checks hash text, vocab_size in [1, 2^31], eos_id and special ids inside the vocabulary, bos_id
// -1 or inside; errors name `where`.
void check_tokenizer_identity(const TokenizerIdentity& tokenizer, const std::string& where);
// "shard-00042.bin"
std::string shard_file_name(int64_t index);
// 16 lowercase hex digits.
std::string checksum_hex(uint64_t checksum);

}  // namespace frugal
