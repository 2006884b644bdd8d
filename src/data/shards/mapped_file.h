// MappedFile: a whole file mapped read-only into memory (mmap), unmapped on destruction.
#pragma once

#include <cstdint>
#include <string>

namespace frugal {

class MappedFile {
 public:
  // Maps `path`; throws frugal::Error naming the path when it cannot be opened or mapped.
  explicit MappedFile(std::string path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace frugal
