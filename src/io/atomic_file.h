// Atomic file writes: a reader of `path` sees either the old file or the complete new one.
//
// Bytes go to `<path>.tmp.<pid>` in the same directory; commit() flushes and fsyncs that file,
// renames it over `path` and fsyncs the directory. Any failure (open, write, fsync, rename, or an
// exception from the caller's producer) removes the temp file and throws frugal::Error naming the
// path; the previous file at `path` is never touched until the rename, which is atomic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace frugal {

// Streaming writer: construct, write() any number of times (multi-GB is fine: at most a 1 MiB
// buffer is held), then commit(). Destroying it without commit() discards the temp file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);  // creates/truncates <path>.tmp.<pid>
  ~AtomicFileWriter();                          // not committed: closes and removes the temp file
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Flush, fsync, rename over the target, fsync the directory. Call once.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  void flush_buffer();
  void write_all(const char* data, size_t size);
  [[noreturn]] void fail_and_discard(const std::string& what, int error_number);
  void discard() noexcept;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t bytes_written_ = 0;
  std::vector<char> buffer_;
  size_t buffered_ = 0;
};

// Write `bytes` to `path` atomically.
void write_file_atomic(const std::string& path, std::string_view bytes);
// Stream the content from `produce` (which calls writer.write(...)); commits when it returns.
// If `produce` throws, the temp file is removed and the exception propagates unchanged.
void write_file_atomic(const std::string& path,
                       const std::function<void(AtomicFileWriter& writer)>& produce);

}  // namespace frugal
