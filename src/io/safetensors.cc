// safetensors reader (mmap + full header validation) and writer (atomic). See safetensors.h.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"

namespace frugal {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

using OrderedJson = nlohmann::ordered_json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the HF library's limit
constexpr const char* kMetadataKey = "__metadata__";
// Root object (0) > tensor entry (1) > shape/data_offsets array (2): nothing deeper is valid.
constexpr int kMaxContainerDepth = 2;

// Thrown from the parse callback to stop early on structure no valid header has.
struct HeaderStructureError {
  std::string message;
};

// Product of the dimensions, or false on uint64 overflow.
bool checked_numel(const std::vector<int64_t>& shape, uint64_t* numel) {
  uint64_t product = 1;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(product, static_cast<uint64_t>(dim), &product)) return false;
  }
  *numel = product;
  return true;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// Parse the header JSON; duplicate keys in any object and over-deep nesting are rejected.
OrderedJson parse_header(const std::string& path, std::string_view text) {
  std::vector<std::set<std::string>> keys_per_open_object;
  auto callback = [&](int depth, OrderedJson::parse_event_t event, OrderedJson& parsed) {
    using Event = OrderedJson::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) &&
        depth > kMaxContainerDepth) {
      throw HeaderStructureError{"header nests deeper than a safetensors header can"};
    }
    if (event == Event::object_start) keys_per_open_object.emplace_back();
    if (event == Event::object_end) keys_per_open_object.pop_back();
    if (event == Event::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys_per_open_object.back().insert(key).second) {
        throw HeaderStructureError{"header has the key '" + key + "' twice in one object"};
      }
    }
    return true;
  };
  try {
    return OrderedJson::parse(text.begin(), text.end(), callback);
  } catch (const HeaderStructureError& e) {
    fail("{}: invalid safetensors header: {}", path, e.message);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: safetensors header is not valid JSON: {}", path, e.what());
  }
}

// Validate one tensor entry of the header against a data section of `data_size` bytes.
TensorInfo parse_tensor_entry(const std::string& path, const std::string& name,
                              const OrderedJson& entry, uint64_t data_size) {
  auto bad = [&](const std::string& problem) -> Error {
    return Error(fmt::format("{}: tensor '{}': {}", path, name, problem));
  };
  if (!entry.is_object()) throw bad("header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) throw bad(fmt::format("header entry has no \"{}\"", key));
  }
  TensorInfo info;
  const OrderedJson& dtype = entry["dtype"];
  if (!dtype.is_string()) throw bad("\"dtype\" is not a string");
  if (!dtype_from_name(dtype.get_ref<const std::string&>(), &info.dtype)) {
    throw bad(fmt::format("unknown dtype '{}'", dtype.get_ref<const std::string&>()));
  }

  const OrderedJson& shape = entry["shape"];
  if (!shape.is_array()) throw bad("\"shape\" is not a list");
  for (const OrderedJson& dim : shape) {
    // Non-negative integers parse as unsigned; negative ones as signed, fractions as float.
    if (!dim.is_number_unsigned()) {
      throw bad(fmt::format("\"shape\" entry {} is not a non-negative integer", dim.dump()));
    }
    const uint64_t value = dim.get<uint64_t>();
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw bad(fmt::format("\"shape\" entry {} is too large", value));
    }
    info.shape.push_back(static_cast<int64_t>(value));
  }

  const OrderedJson& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    throw bad(fmt::format("\"data_offsets\" {} is not two non-negative integers", offsets.dump()));
  }
  info.data_begin = offsets[0].get<uint64_t>();
  info.data_end = offsets[1].get<uint64_t>();
  if (info.data_end < info.data_begin) {
    throw bad(fmt::format("\"data_offsets\" [{}, {}] end before they begin", info.data_begin,
                          info.data_end));
  }
  uint64_t numel = 0, expected_bytes = 0;
  if (!checked_numel(info.shape, &numel) ||
      __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(info.dtype)), &expected_bytes)) {
    throw bad(fmt::format("shape {} is too large to address", shape_string(info.shape)));
  }
  if (info.byte_size() != expected_bytes) {
    throw bad(fmt::format("\"data_offsets\" [{}, {}] span {} bytes but shape {} of {} needs {}",
                          info.data_begin, info.data_end, info.byte_size(),
                          shape_string(info.shape), dtype_name(info.dtype), expected_bytes));
  }
  if (info.data_end > data_size) {
    throw bad(fmt::format("\"data_offsets\" [{}, {}] run past the data section ({} bytes): "
                          "the file is truncated or the header is wrong",
                          info.data_begin, info.data_end, data_size));
  }
  return info;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Reader

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open safetensors file: {}", path, std::strerror(errno));
  struct stat status;
  if (::fstat(fd, &status) != 0) {
    const int error_number = errno;
    ::close(fd);
    fail("{}: cannot stat safetensors file: {}", path, std::strerror(error_number));
  }
  if (!S_ISREG(status.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  const uint64_t file_size = static_cast<uint64_t>(status.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail("{}: file is {} bytes, too short for the 8-byte safetensors header length", path,
         file_size);
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) fail("{}: mmap failed: {}", path, std::strerror(map_errno));
  file.mapping_ = static_cast<const unsigned char*>(mapping);
  file.mapping_size_ = file_size;
  // From here on `file` owns the mapping, and its destructor unmaps it if validation throws.

  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, file.mapping_, 8);
  if (header_bytes > kMaxHeaderBytes) {
    fail("{}: safetensors header length {} exceeds the {}-byte limit (not a safetensors file?)",
         path, header_bytes, kMaxHeaderBytes);
  }
  if (header_bytes > file_size - 8) {
    fail("{}: safetensors header length {} runs past the end of the {}-byte file", path,
         header_bytes, file_size);
  }
  file.data_section_ = file.mapping_ + 8 + header_bytes;
  file.data_size_ = file_size - 8 - header_bytes;

  const OrderedJson header = parse_header(
      path, std::string_view(reinterpret_cast<const char*>(file.mapping_ + 8), header_bytes));
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path);

  std::vector<std::string> header_order;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      if (!entry.is_object()) fail("{}: \"{}\" is not a JSON object", path, kMetadataKey);
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          fail("{}: \"{}\" value of key '{}' is not a string", path, kMetadataKey, key);
        }
        file.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    file.tensors_.emplace(name, parse_tensor_entry(path, name, entry, file.data_size_));
    header_order.push_back(name);
  }

  // File order: by data offset; empty tensors keep their header order among equal offsets.
  file.names_ = header_order;
  std::stable_sort(file.names_.begin(), file.names_.end(),
                   [&](const std::string& a, const std::string& b) {
                     return file.tensors_.at(a).data_begin < file.tensors_.at(b).data_begin;
                   });
  // Non-empty spans may not overlap.
  const std::string* previous = nullptr;
  uint64_t previous_end = 0;
  for (const std::string& name : file.names_) {
    const TensorInfo& info = file.tensors_.at(name);
    if (info.byte_size() == 0) continue;
    if (previous != nullptr && info.data_begin < previous_end) {
      fail("{}: tensors '{}' and '{}' overlap in the data section ([{}, {}) and [{}, {}))", path,
           *previous, name, file.tensors_.at(*previous).data_begin, previous_end, info.data_begin,
           info.data_end);
    }
    previous = &name;
    previous_end = info.data_end;
  }
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    data_section_ = std::exchange(other.data_section_, nullptr);
    data_size_ = std::exchange(other.data_size_, 0);
    names_ = std::move(other.names_);
    tensors_ = std::move(other.tensors_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { unmap(); }

void SafetensorsFile::unmap() noexcept {
  if (mapping_ != nullptr) ::munmap(const_cast<unsigned char*>(mapping_), mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto found = tensors_.find(name);
  if (found == tensors_.end()) fail("{}: no tensor named '{}'", path_, name);
  return found->second;
}

const void* SafetensorsFile::data(const std::string& name) const {
  return data_section_ + info(name).data_begin;
}

template <class T>
void SafetensorsFile::read_as(const std::string& name, std::vector<T>& out) const {
  const TensorInfo& tensor = info(name);
  const size_t count = static_cast<size_t>(tensor.numel());
  out.resize(count);
  const unsigned char* source = data_section_ + tensor.data_begin;
  if constexpr (std::is_same_v<T, double>) {
    convert_to_double(source, tensor.dtype, out.data(), count);
  } else {
    // Widen through a small double buffer (every stored value is exact in double except
    // 64-bit integers past 2^53), then round once to T.
    constexpr size_t kChunk = 4096;
    double chunk[kChunk];
    const size_t element_bytes = dtype_size(tensor.dtype);
    for (size_t start = 0; start < count; start += kChunk) {
      const size_t n = std::min(kChunk, count - start);
      convert_to_double(source + start * element_bytes, tensor.dtype, chunk, n);
      for (size_t i = 0; i < n; ++i) out[start + i] = static_cast<T>(chunk[i]);
    }
  }
}

template void SafetensorsFile::read_as<float>(const std::string&, std::vector<float>&) const;
template void SafetensorsFile::read_as<double>(const std::string&, std::vector<double>&) const;

// ------------------------------------------------------------------------------------------------
// Writer

void SafetensorsWriter::add_entry(Entry entry) {
  const std::string& name = entry.name;
  FRUGAL_CHECK(name != kMetadataKey, "safetensors writer: '{}' is reserved for metadata", name);
  try {
    (void)OrderedJson(name).dump();  // rejects names that are not valid UTF-8
  } catch (const nlohmann::json::exception&) {
    fail("safetensors writer: tensor name '{}' is not valid UTF-8", name);
  }
  for (const Entry& existing : entries_) {
    FRUGAL_CHECK(existing.name != name, "safetensors writer: tensor '{}' added twice", name);
  }
  for (int64_t dim : entry.shape) {
    FRUGAL_CHECK(dim >= 0, "safetensors writer: tensor '{}' has negative shape {}", name,
                 shape_string(entry.shape));
  }
  uint64_t numel = 0, expected_bytes = 0;
  FRUGAL_CHECK(checked_numel(entry.shape, &numel) &&
                   !__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(entry.dtype)),
                                           &expected_bytes),
               "safetensors writer: tensor '{}' shape {} is too large", name,
               shape_string(entry.shape));
  FRUGAL_CHECK(expected_bytes == entry.byte_size,
               "safetensors writer: tensor '{}' has {} bytes but shape {} of {} needs {}", name,
               entry.byte_size, shape_string(entry.shape), dtype_name(entry.dtype),
               expected_bytes);
  entries_.push_back(std::move(entry));
}

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                            std::string_view bytes) {
  auto owned = std::make_shared<const std::string>(bytes);
  Entry entry{name, dtype, std::move(shape), owned, owned->data(), owned->size()};
  add_entry(std::move(entry));
}

void SafetensorsWriter::add_view(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                 const void* data, size_t byte_size) {
  FRUGAL_CHECK(data != nullptr || byte_size == 0, "safetensors writer: tensor '{}' has no data",
               name);
  add_entry(Entry{name, dtype, std::move(shape), nullptr, data, byte_size});
}

template <class T>
void SafetensorsWriter::add_converted(const std::string& name, DType dtype,
                                      std::vector<int64_t> shape, const T* values) {
  for (int64_t dim : shape) {
    FRUGAL_CHECK(dim >= 0, "safetensors writer: tensor '{}' has negative shape {}", name,
                 shape_string(shape));
  }
  uint64_t numel = 0, byte_size = 0;
  FRUGAL_CHECK(checked_numel(shape, &numel) &&
                   !__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(dtype)),
                                           &byte_size),
               "safetensors writer: tensor '{}' shape {} is too large", name, shape_string(shape));
  auto bytes = std::make_shared<std::string>(byte_size, '\0');
  constexpr size_t kChunk = 4096;
  double chunk[kChunk];
  const size_t element_bytes = dtype_size(dtype);
  for (size_t start = 0; start < numel; start += kChunk) {
    const size_t n = std::min<size_t>(kChunk, numel - start);
    for (size_t i = 0; i < n; ++i) chunk[i] = static_cast<double>(values[start + i]);
    convert_from_double(chunk, dtype, bytes->data() + start * element_bytes, n);
  }
  std::shared_ptr<const std::string> owned = std::move(bytes);
  add_entry(Entry{name, dtype, std::move(shape), owned, owned->data(), owned->size()});
}

template void SafetensorsWriter::add_converted<float>(const std::string&, DType,
                                                      std::vector<int64_t>, const float*);
template void SafetensorsWriter::add_converted<double>(const std::string&, DType,
                                                       std::vector<int64_t>, const double*);

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  try {
    (void)OrderedJson{{key, value}}.dump();
  } catch (const nlohmann::json::exception&) {
    fail("safetensors writer: metadata '{}' is not valid UTF-8", key);
  }
  metadata_[key] = value;
}

// Larger elements first, then by name: the HF library's order, which keeps every tensor aligned
// to its element size when the header length is a multiple of 8.
std::vector<const SafetensorsWriter::Entry*> SafetensorsWriter::ordered() const {
  std::vector<const Entry*> order;
  for (const Entry& entry : entries_) order.push_back(&entry);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    const size_t size_a = dtype_size(a->dtype), size_b = dtype_size(b->dtype);
    if (size_a != size_b) return size_a > size_b;
    return a->name < b->name;
  });
  return order;
}

std::string SafetensorsWriter::header_json() const {
  OrderedJson header = OrderedJson::object();
  if (!metadata_.empty()) {
    OrderedJson metadata = OrderedJson::object();
    for (const auto& [key, value] : metadata_) metadata[key] = value;
    header[kMetadataKey] = std::move(metadata);
  }
  uint64_t offset = 0;
  for (const Entry* entry : ordered()) {
    OrderedJson tensor = OrderedJson::object();
    tensor["dtype"] = std::string(dtype_name(entry->dtype));
    tensor["shape"] = entry->shape;
    tensor["data_offsets"] = {offset, offset + entry->byte_size};
    offset += entry->byte_size;
    header[entry->name] = std::move(tensor);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void SafetensorsWriter::write(const std::string& path) const {
  const std::string header = header_json();
  write_file_atomic(path, [&](AtomicFileWriter& out) {
    unsigned char length[8];
    const uint64_t header_bytes = header.size();
    std::memcpy(length, &header_bytes, 8);  // little-endian host (asserted above)
    out.write(length, 8);
    out.write(header);
    for (const Entry* entry : ordered()) out.write(entry->data, entry->byte_size);
  });
}

}  // namespace frugal
