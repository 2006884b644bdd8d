// The byte tokenizer used until the byte-level BPE lands: ids 0..255 are the bytes themselves,
// followed by three special tokens.
//
//   256 kBos  "<|bos|>"        begin of sequence (not produced by encode)
//   257 kEos  "<|endoftext|>"  end of a document
//   258 kPad  "<|pad|>"        padding (not produced by encode)
// vocab_size() is 259; a model may have a larger vocabulary (ids >= 259 are then never trained).
//
// encode: every byte becomes its id, except that a line holding exactly "<|endoftext|>" (the
// corpus document separator, see shared/data/README.md) becomes one kEos; the separator's own
// line end goes with it, the '\n' before it stays with the preceding document. The marker inside
// a longer line is ordinary text. Invalid UTF-8 is fine: bytes are bytes.
// decode: ids 0..255 back to bytes; special ids and ids >= 259 are dropped, or, with
// render_specials, written as "<|bos|>", "<|endoftext|>\n", "<|pad|>" and "<|id:N|>". With
// rendering, decode(encode(text)) == text for any text that does not end in a separator line
// lacking its final '\n'. Negative ids are an error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace frugal {

class ByteTokenizer {
 public:
  static constexpr int32_t kBos = 256, kEos = 257, kPad = 258;
  static constexpr int64_t kVocabSize = 259;
  static constexpr std::string_view kDocumentSeparator = "<|endoftext|>";

  int64_t vocab_size() const { return kVocabSize; }
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const int32_t* ids, int64_t count, bool render_specials = false) const;
  std::string decode(const std::vector<int32_t>& ids, bool render_specials = false) const {
    return decode(ids.data(), static_cast<int64_t>(ids.size()), render_specials);
  }
};

}  // namespace frugal
