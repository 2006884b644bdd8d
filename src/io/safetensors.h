// safetensors files: a memory-mapped, fully validated reader and an atomic writer.
//
// Format: 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON (an object), then the data
// section. Each JSON entry is `"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}`
// with byte offsets relative to the start of the data section; the optional "__metadata__" entry
// maps strings to strings. Tensors are row-major, little-endian.
//
// The reader maps the file and checks the whole header before anything is used: a hostile or
// truncated file gives a frugal::Error naming the file (and the tensor) and the problem, never a
// crash. The writer orders tensors like the Hugging Face library (larger element size first, then
// by name) so that every tensor starts on a multiple of its element size, pads the header with
// spaces to a multiple of 8 bytes, and writes through AtomicFileWriter.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"

namespace frugal {

struct TensorInfo {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // empty for a scalar (numel 1)
  uint64_t data_begin = 0;     // byte offsets relative to the data section: [begin, end)
  uint64_t data_end = 0;

  uint64_t byte_size() const { return data_end - data_begin; }
  uint64_t numel() const { return byte_size() / dtype_size(dtype); }
};

class SafetensorsFile {
 public:
  // Map and validate the file; throws frugal::Error on any problem.
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // Tensor names in file order: by data offset (ties, i.e. empty tensors, in header order).
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws frugal::Error naming the file and tensor if absent.
  const TensorInfo& info(const std::string& name) const;
  // The tensor's raw bytes inside the mapping (valid while this object lives). Only as aligned
  // as the file makes it: files from SafetensorsWriter and the HF library align each tensor to
  // its element size; use memcpy (or read_as) for files of unknown origin.
  const void* data(const std::string& name) const;
  // "__metadata__" (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Size of the data section in bytes.
  uint64_t data_size() const { return data_size_; }

  // Convert the tensor from its stored dtype (any) to T = float or double; out is resized to
  // numel. Integers and BOOL convert by value.
  template <class T>
  void read_as(const std::string& name, std::vector<T>& out) const;
  template <class T>
  std::vector<T> read_as(const std::string& name) const {
    std::vector<T> out;
    read_as(name, out);
    return out;
  }

 private:
  SafetensorsFile() = default;
  void unmap() noexcept;

  std::string path_;
  const unsigned char* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const unsigned char* data_section_ = nullptr;
  uint64_t data_size_ = 0;
  std::vector<std::string> names_;
  std::unordered_map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsWriter {
 public:
  // Copy `bytes` (must be numel(shape) * dtype_size(dtype) long).
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape,
           std::string_view bytes);
  // Borrow `data`: nothing is copied, and the memory must stay valid until write() returns.
  // For large tensors (the file is then streamed from the caller's buffers).
  void add_view(const std::string& name, DType dtype, std::vector<int64_t> shape,
                const void* data, size_t byte_size);
  // Convert `values` (numel(shape) of them) to `dtype` now, rounding as core/dtype.h does, and
  // keep the converted bytes. T = float or double.
  template <class T>
  void add_converted(const std::string& name, DType dtype, std::vector<int64_t> shape,
                     const T* values);
  void set_metadata(const std::string& key, const std::string& value);

  // Write the file atomically (AtomicFileWriter). Throws frugal::Error naming the path.
  void write(const std::string& path) const;
  // The exact header bytes write() would put after the 8-byte length (padded JSON).
  std::string header_json() const;

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::shared_ptr<const std::string> owned;  // set when the writer holds the bytes
    const void* data = nullptr;
    size_t byte_size = 0;
  };
  void add_entry(Entry entry);
  std::vector<const Entry*> ordered() const;

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace frugal
