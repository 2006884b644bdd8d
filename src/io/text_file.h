// Whole-file text reading: plain files as they are, files whose name ends in ".zst" decompressed
// with libzstd's streaming decoder (any number of concatenated frames).
//
// Every failure throws frugal::Error naming the file: missing or unreadable file, a directory, an
// empty or truncated .zst (the last frame does not end), or corrupt zstd data (the decoder's
// message is included). The bytes are returned unchanged: no UTF-8 validation, no newline changes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace frugal {

std::string read_text_file(const std::string& path);

// The documents of a corpus text, separated by lines holding only "<|endoftext|>" (the bytes
// "\n<|endoftext|>\n"); empty pieces are dropped.
std::vector<std::string> split_corpus_documents(std::string_view text);

}  // namespace frugal
