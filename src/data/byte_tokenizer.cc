// Byte tokenizer (see byte_tokenizer.h).
#include "data/byte_tokenizer.h"

#include <fmt/format.h>

namespace frugal {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  const size_t n = text.size(), marker = kDocumentSeparator.size();
  size_t pos = 0;
  while (pos < n) {
    const bool line_start = pos == 0 || text[pos - 1] == '\n';
    if (line_start && text.compare(pos, marker, kDocumentSeparator) == 0 &&
        (pos + marker == n || text[pos + marker] == '\n')) {
      ids.push_back(kEos);
      pos += marker + (pos + marker < n ? 1 : 0);
      continue;
    }
    ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(text[pos])));
    ++pos;
  }
  return ids;
}

std::string ByteTokenizer::decode(const int32_t* ids, int64_t count, bool render_specials) const {
  std::string text;
  text.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const int32_t id = ids[i];
    FRUGAL_CHECK(id >= 0, "byte tokenizer: cannot decode negative token id {} (position {})", id,
                 i);
    if (id < 256) {
      text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
      continue;
    }
    if (!render_specials) continue;
    switch (id) {
      case kBos: text += "<|bos|>"; break;
      case kEos: text += kDocumentSeparator; text += '\n'; break;
      case kPad: text += "<|pad|>"; break;
      default: text += fmt::format("<|id:{}|>", id); break;
    }
  }
  return text;
}

}  // namespace frugal
