// Streaming text I/O for files too large to hold in memory: a chunk reader and a line reader over
// plain files or ".zst" files (libzstd streaming decoder, any number of concatenated frames), and
// an atomic writer that compresses on the fly when the target name ends in ".zst".
//
// Reading holds one input chunk and one output chunk (about 128 KiB each) plus, for LineReader,
// the longest line seen. Every failure throws frugal::Error naming the file: missing/unreadable
// file, a directory, an empty .zst (0 bytes: not a zstd stream), a truncated .zst (the data ends
// inside a frame) or corrupt zstd data (the decoder's message is included). Bytes are returned
// unchanged: no UTF-8 validation, no newline conversion.
//
// TextStreamWriter writes through AtomicFileWriter (temp file, fsync, rename on commit()); without
// commit() the target is untouched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "io/atomic_file.h"

namespace frugal {

// True when `path` ends in ".zst".
bool is_zstd_path(const std::string& path);

class TextStreamReader {
 public:
  explicit TextStreamReader(std::string path);  // opens the file; ".zst" means compressed
  ~TextStreamReader();
  TextStreamReader(const TextStreamReader&) = delete;
  TextStreamReader& operator=(const TextStreamReader&) = delete;

  // Copies up to `capacity` decoded bytes into `buffer`; returns 0 only at the end of the data
  // (after checking that a .zst stream ended on a frame boundary).
  size_t read(char* buffer, size_t capacity);
  const std::string& path() const { return path_; }
  uint64_t file_bytes_read() const { return file_bytes_read_; }  // compressed bytes for .zst

 private:
  size_t read_plain(char* buffer, size_t capacity);
  size_t read_zstd(char* buffer, size_t capacity);

  struct State;
  std::string path_;
  std::unique_ptr<State> state_;
  uint64_t file_bytes_read_ = 0;
};

// Lines of a plain or .zst file, split on '\n' (the '\n' is not part of the line; a '\r' before
// it is kept). A last line without '\n' is returned too; an empty file has no lines.
class LineReader {
 public:
  explicit LineReader(std::string path);

  // Sets `line` to the next line (valid until the next call) and returns true; false at the end.
  bool next(std::string_view& line);
  uint64_t line_number() const { return line_number_; }  // 1-based number of the last line
  const std::string& path() const { return reader_.path(); }
  uint64_t file_bytes_read() const { return reader_.file_bytes_read(); }

 private:
  TextStreamReader reader_;
  std::string buffer_;
  size_t begin_ = 0;  // start of the unreturned bytes in buffer_
  bool end_of_data_ = false;
  uint64_t line_number_ = 0;
};

// Atomic streaming writer; compresses with zstd at `zstd_level` when `path` ends in ".zst".
class TextStreamWriter {
 public:
  explicit TextStreamWriter(std::string path, int zstd_level = 3);
  ~TextStreamWriter();
  TextStreamWriter(const TextStreamWriter&) = delete;
  TextStreamWriter& operator=(const TextStreamWriter&) = delete;

  void write(std::string_view bytes);
  // Ends the zstd frame (if any), then commits the atomic file. Call once.
  void commit();
  uint64_t bytes_written() const { return bytes_written_; }  // uncompressed bytes given to write()
  const std::string& path() const { return file_.path(); }

 private:
  void compress(std::string_view bytes, bool end_frame);

  AtomicFileWriter file_;
  struct Compressor;
  std::unique_ptr<Compressor> compressor_;
  uint64_t bytes_written_ = 0;
};

}  // namespace frugal
