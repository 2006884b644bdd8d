// A safetensors writer for files larger than memory: the tensor list (names, dtypes, shapes) is
// given up front, the header is written first, then each tensor's bytes are streamed in that
// order, one tensor at a time, through AtomicFileWriter (the file appears complete or not at all).
//
// The data section holds the tensors in the given order; every tensor must start on a multiple of
// its element size (true when larger element sizes come first, or for a single dtype), which the
// constructor checks. The header is the same JSON form SafetensorsWriter writes: "__metadata__"
// first when present, then the entries, padded with spaces to a multiple of 8 bytes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace frugal {

class AtomicFileWriter;

struct StreamTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

class SafetensorsStreamWriter {
 public:
  // Opens `<path>.tmp.<pid>` and writes the header. Throws frugal::Error naming the path or tensor
  // (duplicate names, misaligned order, unwritable file).
  SafetensorsStreamWriter(const std::string& path, std::vector<StreamTensor> tensors,
                          const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsStreamWriter();  // without commit(): the temporary file is removed
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;

  // The name of the tensor write_next expects ("" when all are written).
  const std::string& next_name() const;
  // Bytes of the next tensor; `name` and `byte_size` must match it.
  void write_next(const std::string& name, const void* data, size_t byte_size);
  // All tensors must have been written; flushes, fsyncs and renames into place.
  void commit();

 private:
  std::string path_;
  std::vector<StreamTensor> tensors_;
  size_t next_ = 0;
  std::unique_ptr<AtomicFileWriter> writer_;
};

}  // namespace frugal
