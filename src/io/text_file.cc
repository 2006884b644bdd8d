// Whole-file text reading with streaming zstd decompression (see text_file.h).
#include "io/text_file.h"

#include <sys/stat.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

namespace frugal {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
struct DctxFreer {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Reserve room for the decompressed bytes when the first frame header states its size.
void reserve_from_frame_header(std::string& out, const char* data, size_t size) {
  unsigned long long content = ZSTD_getFrameContentSize(data, size);
  if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != ZSTD_CONTENTSIZE_ERROR &&
      content < (1ull << 36))
    out.reserve(static_cast<size_t>(content));
}

std::string decompress_stream(std::FILE* file, const std::string& path) {
  std::unique_ptr<ZSTD_DCtx, DctxFreer> dctx(ZSTD_createDCtx());
  FRUGAL_CHECK(dctx != nullptr, "{}: cannot create a zstd decoder", path);
  std::vector<char> in(ZSTD_DStreamInSize()), out(ZSTD_DStreamOutSize());
  std::string text;
  size_t last_result = 0;  // 0 once a frame is complete; > 0 while the decoder needs more input
  bool first = true;
  size_t read;
  while ((read = std::fread(in.data(), 1, in.size(), file)) > 0) {
    if (first) reserve_from_frame_header(text, in.data(), read);
    first = false;
    ZSTD_inBuffer input{in.data(), read, 0};
    for (;;) {
      ZSTD_outBuffer output{out.data(), out.size(), 0};
      const size_t input_before = input.pos;
      const size_t result = ZSTD_decompressStream(dctx.get(), &output, &input);
      FRUGAL_CHECK(!ZSTD_isError(result), "{}: corrupt zstd data ({})", path,
                   ZSTD_getErrorName(result));
      text.append(out.data(), output.pos);
      // A call that moved nothing (made only to drain a full output buffer after a frame ended)
      // returns the next frame's header hint: it must not turn a finished frame into an open one.
      if (input.pos != input_before || output.pos != 0) last_result = result;
      // Done with this chunk once all input is consumed and the decoder has nothing left to flush.
      if (input.pos == input.size && output.pos < output.size) break;
    }
  }
  FRUGAL_CHECK(!std::ferror(file), "error reading {}: {}", path, std::strerror(errno));
  FRUGAL_CHECK(!first, "{}: empty file, not a zstd stream", path);
  FRUGAL_CHECK(last_result == 0,
               "{}: truncated zstd stream (the data ends inside a frame; the file is incomplete)",
               path);
  return text;
}

}  // namespace

std::string read_text_file(const std::string& path) {
  errno = 0;
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  FRUGAL_CHECK(file != nullptr, "cannot open {}: {}", path, std::strerror(errno));
  struct stat info;
  FRUGAL_CHECK(fstat(fileno(file.get()), &info) == 0, "cannot stat {}: {}", path,
               std::strerror(errno));
  FRUGAL_CHECK(!S_ISDIR(info.st_mode), "cannot read {}: it is a directory", path);
  if (ends_with(path, ".zst")) return decompress_stream(file.get(), path);

  std::string text;
  if (S_ISREG(info.st_mode)) text.reserve(static_cast<size_t>(info.st_size));
  std::vector<char> buffer(1 << 20);
  size_t read;
  while ((read = std::fread(buffer.data(), 1, buffer.size(), file.get())) > 0)
    text.append(buffer.data(), read);
  FRUGAL_CHECK(!std::ferror(file.get()), "error reading {}: {}", path, std::strerror(errno));
  return text;
}

std::vector<std::string> split_corpus_documents(std::string_view text) {
  constexpr std::string_view separator = "\n<|endoftext|>\n";
  std::vector<std::string> docs;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(separator, start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) docs.emplace_back(text.substr(start, end - start));
    start = end + separator.size();
  }
  return docs;
}

}  // namespace frugal
