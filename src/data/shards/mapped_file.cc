// Read-only memory mapping of a file (see mapped_file.h).
#include "data/shards/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace frugal {

MappedFile::MappedFile(std::string path) : path_(std::move(path)) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  FRUGAL_CHECK(fd >= 0, "{}: cannot open: {}", path_, std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int error_number = errno;
    ::close(fd);
    fail("{}: cannot stat: {}", path_, std::strerror(error_number));
  }
  size_ = static_cast<uint64_t>(info.st_size);
  if (size_ > 0) {
    void* address = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    const int error_number = errno;
    ::close(fd);
    FRUGAL_CHECK(address != MAP_FAILED, "{}: cannot map {} bytes: {}", path_, size_,
                 std::strerror(error_number));
    data_ = static_cast<const unsigned char*>(address);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
}

}  // namespace frugal
