// From sampled tokens to the text a client sees, one piece at a time.
//
// TokenTextDecoder: each token's raw bytes are appended to a buffer; push() returns the longest
// prefix that does not end inside a UTF-8 character (up to 3 bytes of a started character wait
// for the next token), with ill-formed sequences replaced by U+FFFD. finish() returns the rest
// the same way. So the pieces always concatenate to sanitize_utf8(all bytes) and each piece is
// valid UTF-8 on its own.
//
// StopStringFilter: push() appends text and returns what can no longer be part of a stop string:
// on the first stop string to complete (the one ending earliest in the text; of several ending
// at the same byte, the longest) it returns the text before it and reports stopped; otherwise
// it holds back the longest suffix that is a proper prefix of some stop string and returns the
// rest. finish() returns the held text (it was not a stop string after all). The returned pieces
// never contain a stop string, and a stop string straddling several pushes is still found.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace frugal {

// Bytes at the end of `bytes` that begin a UTF-8 character whose remaining bytes are missing
// (0 to 3). Ill-formed bytes never count: sanitizing them will not change when more arrive.
size_t incomplete_utf8_suffix(std::string_view bytes);

class TokenTextDecoder {
 public:
  // token_bytes: the raw bytes a token stands for.
  explicit TokenTextDecoder(std::function<std::string(int32_t)> token_bytes)
      : token_bytes_(std::move(token_bytes)) {}

  std::string push(int32_t token);
  std::string finish();

 private:
  std::function<std::string(int32_t)> token_bytes_;
  std::string pending_;  // raw bytes not returned yet: an incomplete character (<= 3 bytes)
};

class StopStringFilter {
 public:
  // Empty stop strings are ignored.
  explicit StopStringFilter(std::vector<std::string> stops);

  // Text to emit now; `stopped` is set when a stop string completed (later pushes return "").
  std::string push(std::string_view text, bool& stopped);
  std::string finish();

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace frugal
