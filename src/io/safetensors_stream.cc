// Streaming safetensors writer (see safetensors_stream.h).
#include "io/safetensors_stream.h"

#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/atomic_file.h"

namespace frugal {

SafetensorsStreamWriter::SafetensorsStreamWriter(const std::string& path,
                                                 std::vector<StreamTensor> tensors,
                                                 const std::map<std::string, std::string>& metadata)
    : path_(path), tensors_(std::move(tensors)) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const StreamTensor& t : tensors_) {
    FRUGAL_CHECK(t.name != "__metadata__" && !t.name.empty(),
                 "{}: '{}' cannot be a tensor name", path_, t.name);
    FRUGAL_CHECK(seen.insert(t.name).second, "{}: tensor {} listed twice", path_, t.name);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      FRUGAL_CHECK(d >= 0, "{}: tensor {} has a negative dimension", path_, t.name);
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t element = dtype_size(t.dtype);
    FRUGAL_CHECK(offset % element == 0,
                 "{}: tensor {} ({}) would start at byte {} of the data section, not a multiple "
                 "of its element size (order larger dtypes first)",
                 path_, t.name, dtype_name(t.dtype), offset);
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(dtype_name(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = {offset, offset + numel * element};
    header[t.name] = std::move(entry);
    offset += numel * element;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a tensor name is not valid UTF-8: {}", path_, e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  writer_ = std::make_unique<AtomicFileWriter>(path_);
  unsigned char length[8];
  const uint64_t header_bytes = text.size();
  std::memcpy(length, &header_bytes, 8);  // little-endian host (safetensors.cc asserts it)
  writer_->write(length, 8);
  writer_->write(text);
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() = default;

const std::string& SafetensorsStreamWriter::next_name() const {
  static const std::string kNone;
  return next_ < tensors_.size() ? tensors_[next_].name : kNone;
}

void SafetensorsStreamWriter::write_next(const std::string& name, const void* data,
                                         size_t byte_size) {
  FRUGAL_CHECK(next_ < tensors_.size(), "{}: tensor {} written after the last one", path_, name);
  const StreamTensor& t = tensors_[next_];
  FRUGAL_CHECK(t.name == name, "{}: tensor {} written where {} was expected", path_, name, t.name);
  uint64_t numel = 1;
  for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
  FRUGAL_CHECK(numel * dtype_size(t.dtype) == byte_size,
               "{}: tensor {} has {} bytes, its shape needs {}", path_, name, byte_size,
               numel * dtype_size(t.dtype));
  writer_->write(data, byte_size);
  ++next_;
}

void SafetensorsStreamWriter::commit() {
  FRUGAL_CHECK(next_ == tensors_.size(), "{}: only {} of {} tensors were written (next: {})",
               path_, next_, tensors_.size(), next_name());
  writer_->commit();
}

}  // namespace frugal
