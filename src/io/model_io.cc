#include "io/model_io.h"

#include <unordered_set>

#include "io/safetensors.h"

namespace frugal {

template <class T>
void save_params(const ParamStore<T>& store, const std::string& path, DType dtype,
                 const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter writer;
  for (auto& p : store.all()) writer.add_converted(p->name, dtype, p->shape, p->data());
  for (auto& [key, value] : metadata) writer.set_metadata(key, value);
  writer.write(path);
}

template <class T>
void load_params(ParamStore<T>& store, const SafetensorsFile& file,
                 const ParamLoadOptions& options) {
  std::unordered_set<std::string> known;
  for (auto& p : store.all()) {
    known.insert(p->name);
    if (!file.contains(p->name)) {
      if (!p->trainable && options.allow_missing_buffers) continue;
      fail("{}: tensor {} is missing (the model needs shape [{}])", file.path(), p->name,
           fmt::join(p->shape, ", "));
    }
    const TensorInfo& info = file.info(p->name);
    FRUGAL_CHECK(info.shape == p->shape, "{}: tensor {} has shape [{}], the model needs [{}]",
                 file.path(), p->name, fmt::join(info.shape, ", "), fmt::join(p->shape, ", "));
    bool floating = info.dtype == DType::F64 || info.dtype == DType::F32 ||
                    info.dtype == DType::F16 || info.dtype == DType::BF16;
    FRUGAL_CHECK(floating, "{}: tensor {} has dtype {}, expected a floating type", file.path(),
                 p->name, dtype_name(info.dtype));
    file.read_as(p->name, p->value);
  }
  for (const std::string& name : file.names()) {
    if (known.count(name)) continue;
    bool ignored = false;
    for (const std::string& prefix : options.ignore_prefixes)
      ignored = ignored || name.rfind(prefix, 0) == 0;
    FRUGAL_CHECK(ignored, "{}: tensor {} does not belong to this model (check the config)",
                 file.path(), name);
  }
}

template <class T>
void load_params(ParamStore<T>& store, const std::string& path, const ParamLoadOptions& options) {
  SafetensorsFile file = SafetensorsFile::open(path);
  load_params(store, file, options);
}

#define INSTANTIATE(T)                                                                        \
  template void save_params<T>(const ParamStore<T>&, const std::string&, DType,               \
                               const std::map<std::string, std::string>&);                    \
  template void load_params<T>(ParamStore<T>&, const std::string&, const ParamLoadOptions&);  \
  template void load_params<T>(ParamStore<T>&, const SafetensorsFile&, const ParamLoadOptions&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace frugal
