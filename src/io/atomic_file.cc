// Atomic file writes through a temp file, fsync and rename (see atomic_file.h).
#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "core/error.h"

namespace frugal {
namespace {

constexpr size_t kBufferBytes = size_t{1} << 20;

std::string directory_of(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? std::string(".") : parent;
}

// Make the rename durable. Some file systems refuse fsync on a directory (EINVAL): that is not
// a failure of ours, the rename itself has happened.
void sync_directory(const std::string& path) {
  const std::string directory = directory_of(path);
  const int dir_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    fail("{}: cannot open directory '{}' to sync the rename: {}", path, directory,
         std::strerror(errno));
  }
  const int result = ::fsync(dir_fd);
  const int error_number = errno;
  ::close(dir_fd);
  if (result != 0 && error_number != EINVAL) {
    fail("{}: fsync of directory '{}' failed: {}", path, directory, std::strerror(error_number));
  }
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path)
    : path_(std::move(path)), temp_path_(path_ + ".tmp." + std::to_string(::getpid())) {
  FRUGAL_CHECK(!path_.empty(), "atomic write: empty file path");
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    const int error_number = errno;
    fail("{}: cannot create temporary file '{}': {}", path_, temp_path_,
         std::strerror(error_number));
  }
  buffer_.resize(kBufferBytes);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!committed_) discard();
}

void AtomicFileWriter::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(temp_path_.c_str());
  }
}

void AtomicFileWriter::fail_and_discard(const std::string& what, int error_number) {
  discard();
  fail("{}: {} (temporary file '{}'): {}", path_, what, temp_path_, std::strerror(error_number));
}

void AtomicFileWriter::write_all(const char* data, size_t size) {
  while (size > 0) {
    const ssize_t written = ::write(fd_, data, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      fail_and_discard("write failed", errno);
    }
    if (written == 0) fail_and_discard("write made no progress", EIO);
    data += written;
    size -= static_cast<size_t>(written);
  }
}

void AtomicFileWriter::flush_buffer() {
  write_all(buffer_.data(), buffered_);
  buffered_ = 0;
}

void AtomicFileWriter::write(const void* data, size_t size) {
  FRUGAL_CHECK(fd_ >= 0 && !committed_, "{}: write after the file was committed or discarded",
               path_);
  const char* bytes = static_cast<const char*>(data);
  bytes_written_ += size;
  if (buffered_ + size <= buffer_.size()) {
    if (size > 0) std::memcpy(buffer_.data() + buffered_, bytes, size);
    buffered_ += size;
    return;
  }
  flush_buffer();
  if (size >= buffer_.size()) {
    write_all(bytes, size);
  } else {
    std::memcpy(buffer_.data(), bytes, size);
    buffered_ = size;
  }
}

void AtomicFileWriter::commit() {
  FRUGAL_CHECK(fd_ >= 0 && !committed_, "{}: commit after the file was committed or discarded",
               path_);
  flush_buffer();
  if (::fsync(fd_) != 0) fail_and_discard("fsync failed", errno);
  const int close_result = ::close(fd_);
  fd_ = -1;
  if (close_result != 0) {
    const int error_number = errno;
    ::unlink(temp_path_.c_str());
    fail("{}: close of temporary file '{}' failed: {}", path_, temp_path_,
         std::strerror(error_number));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int error_number = errno;
    ::unlink(temp_path_.c_str());
    fail("{}: cannot rename temporary file '{}' over it: {}", path_, temp_path_,
         std::strerror(error_number));
  }
  committed_ = true;
  buffer_ = {};
  sync_directory(path_);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes);
  writer.commit();
}

void write_file_atomic(const std::string& path,
                       const std::function<void(AtomicFileWriter& writer)>& produce) {
  AtomicFileWriter writer(path);
  produce(writer);
  writer.commit();
}

}  // namespace frugal
