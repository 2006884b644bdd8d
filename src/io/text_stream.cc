// Streaming text reading (plain and zstd) and atomic, optionally compressed, writing
// (see text_stream.h).
#include "io/text_stream.h"

#include <sys/stat.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

#include "core/error.h"

namespace frugal {
namespace {

constexpr size_t kLineChunkBytes = size_t{1} << 20;

}  // namespace

bool is_zstd_path(const std::string& path) {
  return path.size() >= 4 && path.compare(path.size() - 4, 4, ".zst") == 0;
}

struct TextStreamReader::State {
  std::FILE* file = nullptr;
  ZSTD_DCtx* dctx = nullptr;  // null for a plain file
  std::vector<char> in;
  ZSTD_inBuffer input{nullptr, 0, 0};
  bool file_eof = false;
  bool any_input = false;
  bool output_was_full = false;  // the decoder may hold more output: call it before reading more
  size_t last_result = 0;        // 0 once a frame is complete; > 0 while it needs more input

  ~State() {
    if (dctx != nullptr) ZSTD_freeDCtx(dctx);
    if (file != nullptr) std::fclose(file);
  }
};

TextStreamReader::TextStreamReader(std::string path)
    : path_(std::move(path)), state_(std::make_unique<State>()) {
  errno = 0;
  state_->file = std::fopen(path_.c_str(), "rb");
  FRUGAL_CHECK(state_->file != nullptr, "cannot open {}: {}", path_, std::strerror(errno));
  struct stat info;
  FRUGAL_CHECK(fstat(fileno(state_->file), &info) == 0, "cannot stat {}: {}", path_,
               std::strerror(errno));
  FRUGAL_CHECK(!S_ISDIR(info.st_mode), "cannot read {}: it is a directory", path_);
  if (is_zstd_path(path_)) {
    state_->dctx = ZSTD_createDCtx();
    FRUGAL_CHECK(state_->dctx != nullptr, "{}: cannot create a zstd decoder", path_);
    state_->in.resize(ZSTD_DStreamInSize());
  }
}

TextStreamReader::~TextStreamReader() = default;

size_t TextStreamReader::read(char* buffer, size_t capacity) {
  if (capacity == 0) return 0;
  return state_->dctx != nullptr ? read_zstd(buffer, capacity) : read_plain(buffer, capacity);
}

size_t TextStreamReader::read_plain(char* buffer, size_t capacity) {
  const size_t n = std::fread(buffer, 1, capacity, state_->file);
  FRUGAL_CHECK(!std::ferror(state_->file), "error reading {}: {}", path_, std::strerror(errno));
  file_bytes_read_ += n;
  return n;
}

size_t TextStreamReader::read_zstd(char* buffer, size_t capacity) {
  State& s = *state_;
  ZSTD_outBuffer output{buffer, capacity, 0};
  while (output.pos < output.size) {
    if (s.input.pos == s.input.size && !s.output_was_full) {
      if (s.file_eof) break;
      const size_t n = std::fread(s.in.data(), 1, s.in.size(), s.file);
      FRUGAL_CHECK(!std::ferror(s.file), "error reading {}: {}", path_, std::strerror(errno));
      if (n == 0) {
        s.file_eof = true;
        break;
      }
      s.any_input = true;
      file_bytes_read_ += n;
      s.input = ZSTD_inBuffer{s.in.data(), n, 0};
    }
    const size_t input_before = s.input.pos, output_before = output.pos;
    const size_t result = ZSTD_decompressStream(s.dctx, &output, &s.input);
    FRUGAL_CHECK(!ZSTD_isError(result), "{}: corrupt zstd data ({})", path_,
                 ZSTD_getErrorName(result));
    // A call that moved nothing (only draining after a frame ended) returns the next frame's
    // header hint: it must not turn a finished frame into an open one.
    if (s.input.pos != input_before || output.pos != output_before) s.last_result = result;
    s.output_was_full = output.pos == output.size;
  }
  if (output.pos == 0) {
    FRUGAL_CHECK(s.any_input, "{}: empty file, not a zstd stream", path_);
    FRUGAL_CHECK(s.last_result == 0,
                 "{}: truncated zstd stream (the data ends inside a frame; the file is "
                 "incomplete)",
                 path_);
  }
  return output.pos;
}

LineReader::LineReader(std::string path) : reader_(std::move(path)) {}

bool LineReader::next(std::string_view& line) {
  size_t scan_from = begin_;
  for (;;) {
    const char* found = nullptr;
    if (scan_from < buffer_.size()) {
      found = static_cast<const char*>(
          std::memchr(buffer_.data() + scan_from, '\n', buffer_.size() - scan_from));
    }
    if (found != nullptr) {
      const size_t end = static_cast<size_t>(found - buffer_.data());
      line = std::string_view(buffer_.data() + begin_, end - begin_);
      begin_ = end + 1;
      ++line_number_;
      return true;
    }
    if (end_of_data_) {
      if (begin_ >= buffer_.size()) return false;
      line = std::string_view(buffer_.data() + begin_, buffer_.size() - begin_);
      begin_ = buffer_.size();
      ++line_number_;
      return true;
    }
    // Keep only the unreturned bytes, then append the next chunk.
    if (begin_ > 0) {
      buffer_.erase(0, begin_);
      begin_ = 0;
    }
    scan_from = buffer_.size();
    buffer_.resize(scan_from + kLineChunkBytes);
    const size_t n = reader_.read(buffer_.data() + scan_from, kLineChunkBytes);
    buffer_.resize(scan_from + n);
    if (n == 0) end_of_data_ = true;
  }
}

struct TextStreamWriter::Compressor {
  ZSTD_CCtx* cctx = nullptr;
  std::vector<char> out;
  ~Compressor() {
    if (cctx != nullptr) ZSTD_freeCCtx(cctx);
  }
};

TextStreamWriter::TextStreamWriter(std::string path, int zstd_level) : file_(std::move(path)) {
  if (!is_zstd_path(file_.path())) return;
  compressor_ = std::make_unique<Compressor>();
  compressor_->cctx = ZSTD_createCCtx();
  FRUGAL_CHECK(compressor_->cctx != nullptr, "{}: cannot create a zstd encoder", file_.path());
  const size_t set = ZSTD_CCtx_setParameter(compressor_->cctx, ZSTD_c_compressionLevel, zstd_level);
  FRUGAL_CHECK(!ZSTD_isError(set), "{}: bad zstd level {} ({})", file_.path(), zstd_level,
               ZSTD_getErrorName(set));
  compressor_->out.resize(ZSTD_CStreamOutSize());
}

TextStreamWriter::~TextStreamWriter() = default;

void TextStreamWriter::write(std::string_view bytes) {
  bytes_written_ += bytes.size();
  if (compressor_ == nullptr) {
    file_.write(bytes);
  } else if (!bytes.empty()) {
    compress(bytes, false);
  }
}

void TextStreamWriter::compress(std::string_view bytes, bool end_frame) {
  ZSTD_inBuffer input{bytes.data(), bytes.size(), 0};
  for (;;) {
    ZSTD_outBuffer output{compressor_->out.data(), compressor_->out.size(), 0};
    const size_t remaining = ZSTD_compressStream2(compressor_->cctx, &output, &input,
                                                  end_frame ? ZSTD_e_end : ZSTD_e_continue);
    FRUGAL_CHECK(!ZSTD_isError(remaining), "{}: zstd compression failed ({})", file_.path(),
                 ZSTD_getErrorName(remaining));
    file_.write(compressor_->out.data(), output.pos);
    if (end_frame ? remaining == 0 : input.pos == input.size) break;
  }
}

void TextStreamWriter::commit() {
  if (compressor_ != nullptr) compress({}, true);
  file_.commit();
}

}  // namespace frugal
