// Incremental detokenization and stop strings (see text_stream.h).
#include "infer/text_stream.h"

#include <algorithm>

#include "data/tokenizer/utf8.h"

namespace frugal {

size_t incomplete_utf8_suffix(std::string_view bytes) {
  // Walk back over at most 3 continuation bytes to the byte that starts the last character.
  size_t continuation = 0;
  while (continuation < 3 && continuation < bytes.size() &&
         (static_cast<uint8_t>(bytes[bytes.size() - 1 - continuation]) & 0xC0) == 0x80)
    ++continuation;
  if (continuation == bytes.size()) return 0;  // only continuation bytes: ill-formed
  const auto lead = static_cast<uint8_t>(bytes[bytes.size() - 1 - continuation]);
  size_t length = 0;
  if (lead >= 0xC2 && lead <= 0xDF) length = 2;
  else if (lead >= 0xE0 && lead <= 0xEF) length = 3;
  else if (lead >= 0xF0 && lead <= 0xF4) length = 4;
  else return 0;  // ASCII, or a byte that never starts a character
  if (continuation + 1 >= length) return 0;  // complete (or too long: ill-formed anyway)
  // The second byte's narrower ranges: E0 A0..BF, ED 80..9F, F0 90..BF, F4 80..8F.
  if (continuation >= 1) {
    const auto second = static_cast<uint8_t>(bytes[bytes.size() - continuation]);
    if ((lead == 0xE0 && second < 0xA0) || (lead == 0xED && second > 0x9F) ||
        (lead == 0xF0 && second < 0x90) || (lead == 0xF4 && second > 0x8F))
      return 0;
  }
  return continuation + 1;
}

std::string TokenTextDecoder::push(int32_t token) {
  pending_ += token_bytes_(token);
  const size_t keep = incomplete_utf8_suffix(pending_);
  std::string_view ready(pending_.data(), pending_.size() - keep);
  std::string out = tok::is_valid_utf8(ready) ? std::string(ready) : tok::sanitize_utf8(ready);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string TokenTextDecoder::finish() {
  std::string out = tok::sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

StopStringFilter::StopStringFilter(std::vector<std::string> stops) {
  for (std::string& s : stops)
    if (!s.empty()) stops_.push_back(std::move(s));
}

std::string StopStringFilter::push(std::string_view text, bool& stopped) {
  stopped = stopped_;
  if (stopped_) return "";
  held_.append(text);
  // The stop string that completes first ends the text (of two ending together, the longer):
  // the same answer whatever pieces the text arrives in.
  size_t first = std::string::npos, first_end = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t at = held_.find(stop);
    if (at == std::string::npos) continue;
    const size_t end = at + stop.size();
    if (end < first_end || (end == first_end && at < first)) {
      first = at;
      first_end = end;
    }
  }
  if (first != std::string::npos) {
    stopped = stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that could still grow into a stop string.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    for (size_t k = std::min(stop.size() - 1, held_.size()); k > hold; --k) {
      if (held_.compare(held_.size() - k, k, stop, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopStringFilter::finish() {
  std::string out;
  if (!stopped_) out.swap(held_);
  held_.clear();
  return out;
}

}  // namespace frugal
